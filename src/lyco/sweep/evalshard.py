"""One shard of a sweep's evaluation: generate the images of some checkpoints and extract their features into the
shared cache, nothing else.  The sweep then runs ``lyco eval`` on the whole pool, which finds everything cached
and only computes the metrics, ranks and report (so nothing is computed twice).

Shards split the pool by checkpoint; every shard batches a checkpoint's images exactly as one ``lyco eval``
process does (batches are windows of one checkpoint's jobs), so a sharded evaluation gives the same images.
Only the shard given ``with_base`` generates the base model's images and the dataset features.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from ..eval.backbones import resolve_device
from ..eval.config import load_eval_config
from ..eval.generate import run_generation, windows
from ..eval.runner import Backbones, build_plan, check_backbones, extract_needs, feature_needs

log = logging.getLogger("lyco")


def prepare_shard(config: str | Path, with_base: bool = False) -> int:
    cfg = load_eval_config(config)
    plan = build_plan(cfg)
    check_backbones(cfg, plan)
    cache = cfg.cache_dir
    own = {v.name for v in plan.variants if with_base or not v.is_base}
    pending = [j for j in plan.unique_jobs() if j.variant in own and not j.path(cache).is_file()]
    mine: dict[str, list] = defaultdict(list)
    for window in windows(pending, cfg.generation.batch_size):
        mine[window[0].variant] += window
    made = run_generation(plan.variants, mine, cfg.generation, cache, device=resolve_device(cfg.generation.device),
                          size=plan.size, progress=False)
    needs = feature_needs(cfg, plan)
    if not with_base:
        own_paths = {j.path(cache) for key, jobs in plan.sets.items() if key[0] in own for j in jobs}
        needs = [n for n in needs if n.path in own_paths]
    if not cfg.metrics.cache_gram:         # not kept on disk: the final pass computes them
        needs = [n for n in needs if n.kind != "vgg"]
    backbones = Backbones(cfg, resolve_device(cfg.backbones.device))
    extract_needs(needs, backbones, cfg, {}, False)
    log.info("eval shard %s: generated %d images, %d features checked", Path(config).name, made, len(needs))
    return 0
