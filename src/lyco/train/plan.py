"""The data plan of a run: scanned datasets, every image in one list, buckets, and the step counts.

Built before any model loads, so a bad dataset fails in seconds.  An epoch's batches are then a pure function
of (seed, epoch, number of processes) (:func:`lyco.train.buckets.plan_epoch`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from .buckets import Batch, assign, bucket_table, make_buckets, plan_epoch
from .config import DatasetConfig, SubsetConfig, TrainConfig
from .data import DatasetScan, ImageItem, scan_dataset

log = logging.getLogger("lyco")

#: per dataset: (dataset index, epoch samples (item indices with repeats), item -> bucket, global batch, leftovers)
Group = tuple[int, list[int], dict[int, tuple[int, int]], int, str]


@dataclass
class DataPlan:
    scans: list[DatasetScan]
    items: list[ImageItem]            # every image of every dataset; batches hold indices into this list
    subset_of: list[SubsetConfig]     # item index -> its subset's settings
    groups: list[Group]
    world: int
    seed: int
    accum: int
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int

    def epoch(self, epoch: int) -> list[Batch]:
        return plan_epoch(self.groups, self.seed, epoch, self.world)

    def dataset(self, batch: Batch) -> DatasetConfig:
        return self.scans[batch.dataset].config


def _buckets_of(scan: DatasetScan, base: int) -> dict[int, tuple[int, int]]:
    d = scan.config
    if not d.bucket.enabled:
        return {base + i: (d.resolution, d.resolution) for i in range(len(scan.items))}
    buckets = make_buckets(d.resolution, d.bucket)
    return {base + i: assign(it.size, buckets, d.bucket, d.resolution) for i, it in enumerate(scan.items)}


def plan_data(cfg: TrainConfig, world: int, main: bool) -> DataPlan:
    """Scan every dataset (skipped images listed), assign buckets, count steps; logs the tables on ``main``."""
    scans = [scan_dataset(d) for d in cfg.datasets]
    items: list[ImageItem] = []
    subset_of: list[SubsetConfig] = []
    groups: list[Group] = []
    for di, scan in enumerate(scans):
        base, d = len(items), scan.config
        items.extend(scan.items)
        subset_of.extend(s.config for s in scan.subsets for _ in s.items)
        samples = [base + i for i in scan.epoch_indices()]
        bucket_of = _buckets_of(scan, base)
        groups.append((di, samples, bucket_of, d.batch_size * world, d.bucket.leftovers))
        if main:
            log.info("lyco: dataset %d (%d px, batch %d x %d processes):\n%s\n buckets:\n%s", di, d.resolution,
                     d.batch_size, world, scan.summary(), bucket_table(bucket_of, samples))
    t = cfg.train
    plan0 = plan_epoch(groups, t.seed, 0, world)
    steps_per_epoch = math.ceil(len(plan0) / t.gradient_accumulation_steps)
    total = t.steps or steps_per_epoch * int(t.epochs or 0)
    plan = DataPlan(scans, items, subset_of, groups, world, t.seed, t.gradient_accumulation_steps, len(plan0),
                    steps_per_epoch, total)
    if main:
        log.info("lyco: %d images (%d skipped), %d batches per epoch (%d padded items for %d processes), "
                 "effective batch %s x accum %d, %d optimizer steps per epoch, %d steps in all",
                 len(items), sum(len(s.skipped) for s in scans), len(plan0), sum(b.padded for b in plan0), world,
                 "/".join(str(d.batch_size * world) for d in cfg.datasets), t.gradient_accumulation_steps,
                 steps_per_epoch, total)
    return plan
