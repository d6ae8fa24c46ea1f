"""Aspect-ratio bucketing and the deterministic batch plan.

Buckets have area ≤ resolution², sides multiples of ``step`` within [min_side, max_side].  Each image goes to the
bucket with the nearest aspect ratio (or, with ``no_upscale``, to its own size rounded down to the step).  An
epoch's batch plan depends only on (seed, epoch): shuffled samples, grouped by bucket, cut into global batches.
Leftovers form smaller final batches (or merge into the nearest bucket); nothing is ever dropped silently.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from .config import BucketConfig


@dataclass(frozen=True)
class Batch:
    dataset: int
    bucket: tuple[int, int]  # (width, height)
    items: tuple[int, ...]  # global item indices (into the run's item list)
    padded: int = 0  # items repeated so every process gets the same count


def make_buckets(resolution: int, cfg: BucketConfig) -> list[tuple[int, int]]:
    step = cfg.step
    lo = cfg.min_side or max(step, int(resolution * 0.625) // step * step)
    hi = cfg.max_side or max(resolution, int(resolution * 1.875) // step * step)
    area = resolution * resolution
    out = set()
    w = lo
    while w <= hi:
        h = min(hi, (area // w) // step * step)
        if h >= lo:
            out.add((w, h))
        w += step
    out.add((resolution, resolution))
    return sorted(out)


def assign(size: tuple[int, int], buckets: list[tuple[int, int]], cfg: BucketConfig,
           resolution: int) -> tuple[int, int]:
    w, h = size
    if cfg.no_upscale and w * h <= resolution * resolution:
        bw, bh = max(cfg.step, w // cfg.step * cfg.step), max(cfg.step, h // cfg.step * cfg.step)
        return (bw, bh)
    ar = math.log(w / h)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ar), -b[0] * b[1]))


def crop_box(size: tuple[int, int], bucket: tuple[int, int], mode: str,
             rng: random.Random) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(resized size, crop box) so the image covers the bucket, then is cropped to it."""
    w, h = size
    bw, bh = bucket
    scale = max(bw / w, bh / h)
    rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
    if mode == "random":
        left, top = rng.randint(0, rw - bw), rng.randint(0, rh - bh)
    else:
        left, top = (rw - bw) // 2, (rh - bh) // 2
    return (rw, rh), (left, top, left + bw, top + bh)


def plan_epoch(groups: list[tuple[int, list[int], dict[int, tuple[int, int]], int, str]], seed: int, epoch: int,
               world: int) -> list[Batch]:
    """Global batches of one epoch.

    ``groups``: per dataset (dataset index, epoch sample list (item indices with repeats), item -> bucket,
    global batch size, leftover policy).
    """
    rng = random.Random(f"plan/{seed}/{epoch}")
    batches: list[Batch] = []
    for ds_idx, samples, bucket_of, gbs, leftovers in groups:
        order = list(samples)
        rng.shuffle(order)
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for i in order:
            by_bucket.setdefault(bucket_of[i], []).append(i)
        rest: list[tuple[tuple[int, int], list[int]]] = []
        for b in sorted(by_bucket):
            items = by_bucket[b]
            full = len(items) // gbs * gbs
            for k in range(0, full, gbs):
                batches.append(Batch(ds_idx, b, tuple(items[k:k + gbs])))
            if full < len(items):
                rest.append((b, items[full:]))
        if leftovers == "merge" and len(rest) > 1:
            merged: dict[tuple[int, int], list[int]] = {}
            biggest = max(rest, key=lambda r: len(r[1]))[0]
            for _b, items in rest:
                merged.setdefault(biggest, []).extend(items)
            rest = list(merged.items())
        for b, items in rest:
            for k in range(0, len(items), gbs):
                chunk = items[k:k + gbs]
                pad = (-len(chunk)) % world
                chunk = (chunk + chunk[:pad] if pad <= len(chunk)
                         else (chunk * (pad // len(chunk) + 2))[: len(chunk) + pad])
                batches.append(Batch(ds_idx, b, tuple(chunk), pad))
    rng.shuffle(batches)
    return batches


def bucket_table(bucket_of: dict[int, tuple[int, int]], samples: list[int]) -> str:
    c = Counter(bucket_of[i] for i in samples)
    return "\n".join(f"  {w}x{h}: {n} samples" for (w, h), n in sorted(c.items()))
