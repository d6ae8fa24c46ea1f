"""``lyco eval CONFIG.toml``: evaluate the base model and checkpoints as the paper does; write an HTML report.

Several processes (one per GPU, or CPU processes)::

    torchrun --nproc_per_node 2 -m lyco eval CONFIG.toml
    accelerate launch --num_processes 2 -m lyco eval CONFIG.toml
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from .config import load_eval_config
from .metrics import PROMPT_TYPES, get_metric
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they are shown on a terminal only)")
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
    outcome = evaluate(cfg, progress=not args.no_progress and sys.stderr.isatty(), report=not args.no_report)
    if outcome is not None:
        print(terminal_summary(outcome))
        for kind, path in outcome.files.items():
            print(f"{kind}: {path}")
    return 0


def _cell(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.3e}"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt_row = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt_row(header)] + [fmt_row(r) for r in rows]


def terminal_summary(outcome: Any, field: str = "auto") -> str:
    """Per category: the rank-normalised scores per metric (checkpoints × metrics, 1 = best) when two or more
    checkpoints are compared (``field="score"``), else the raw values per metric and prompt set (checkpoints as
    columns; ``field="value"``)."""
    names = [v.name for v in outcome.plan.variants]
    aggs = [r for r in outcome.aggregates if r.level == "category"]
    pooled = [n for n in names if any(not math.isnan(r.score) for r in aggs if r.checkpoint == n)]
    lines: list[str] = []
    for cat in sorted({r.category for r in aggs}):
        rows = [r for r in aggs if r.category == cat]
        metrics = sorted({r.metric for r in rows}, key=lambda m: [r.metric for r in rows].index(m))
        label = lambda m: f"{get_metric(m).display} {'↑' if get_metric(m).higher_is_better else '↓'}"  # noqa: E731
        if field == "score" or (field == "auto" and len(pooled) >= 2):
            lines.append(f"{cat}: scores (rank over {len(pooled)} checkpoints, mean over prompt sets and encoders; "
                         "1 = best)")
            table = [[ck] + [_cell(_mean(r.score for r in rows if r.checkpoint == ck and r.metric == m))
                             for m in metrics] + [_cell(_mean(r.score for r in rows if r.checkpoint == ck))]
                     for ck in pooled]
            lines += ["  " + ln for ln in _grid(["checkpoint"] + [get_metric(m).display for m in metrics] + ["mean"],
                                                table)]
        else:
            lines.append(f"{cat}: raw values (mean over encoders and resize modes)")
            keys = sorted({(r.metric, r.prompt_type) for r in rows},
                          key=lambda k: (metrics.index(k[0]), PROMPT_TYPES.index(k[1])))
            table = [[label(m), p] + [_cell(_mean(r.value for r in rows if (r.metric, r.prompt_type) == (m, p)
                                                  and r.checkpoint == ck)) for ck in names] for m, p in keys]
            lines += ["  " + ln for ln in _grid(["metric", "prompts"] + names, table)]
    return "\n".join(lines)


def _mean(xs: Any) -> float:
    vals = [x for x in xs if not math.isnan(x)]
    return sum(vals) / len(vals) if vals else math.nan
