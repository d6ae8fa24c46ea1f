"""``lyco eval CONFIG.toml``: evaluate the base model and checkpoints as the paper does; write an HTML report.

Several processes (one per GPU, or CPU processes)::

    torchrun --nproc_per_node 2 -m lyco eval CONFIG.toml
    accelerate launch --num_processes 2 -m lyco eval CONFIG.toml
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .config import load_eval_config
from .runner import build_plan, evaluate

log = logging.getLogger("lyco")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lyco eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Re-runs reuse the cached images and features and compute only what is new.")
    p.add_argument("config", help="evaluation config (TOML); see examples/eval/")
    p.add_argument("--out", help="report folder (overrides 'out')")
    p.add_argument("--cache", help="image/feature cache folder (overrides 'cache'; default <out>/cache)")
    p.add_argument("--dry-run", action="store_true", help="show the plan (images to generate) and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="write results.csv/json but no HTML")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # command-line paths are relative to the working directory, config paths to the config file
    overrides = {k: str(Path(v).resolve()) for k, v in (("out", args.out), ("cache", args.cache)) if v is not None}
    cfg = load_eval_config(args.config, overrides)
    if args.dry_run:
        plan = build_plan(cfg)
        jobs = plan.unique_jobs()
        todo = sum(1 for j in jobs if not j.path(cfg.cache_dir).is_file())
        print(f"{len(plan.leaves)} leaves, {len(plan.variants)} models (base + {len(plan.variants) - 1}), "
              f"{len(jobs)} images ({todo} to generate) at {plan.size[0]}x{plan.size[1]}")
        for leaf in plan.leaves:
            sets = ", ".join(f"{k}: {len(ps.prompts)} prompts × {ps.n_images} images"
                             for k, ps in leaf.prompt_sets.items())
            print(f"  {leaf.id} ({leaf.descriptor!r}; {len(leaf.images)} dataset images): {sets}")
        return 0
    outcome = evaluate(cfg, progress=not args.no_progress, report=not args.no_report)
    if outcome is not None:
        for kind, path in outcome.files.items():
            print(f"{kind}: {path}")
    return 0
