"""``lyco sweep plan``: what a sweep will do and roughly what it costs, without running anything.

Counts come from the configs (runs, checkpoints), the training data (steps per epoch, when the dataset folders
exist) and the evaluation config (images per model, when its concepts resolve); times come from the sweep's
``[estimate]`` figures, which ``lyco sweep status`` measures once runs have finished.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from ..eval.config import EvalConfig
from ..eval.prompts import build_leaves
from ..train.config import TrainConfig
from ..train.data import scan_dataset
from .spec import RunSpec, Sweep

log = logging.getLogger("lyco")


@dataclass
class Cost:
    runs: int
    checkpoints: int
    steps_per_run: dict[str, int | None]          # run name -> optimizer steps (None: data not found)
    images_per_model: int | None
    images_exact: bool
    image_size: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def train_steps(self) -> int | None:
        vals = list(self.steps_per_run.values())
        return None if any(v is None for v in vals) else sum(v for v in vals if v is not None)

    @property
    def images(self) -> int | None:
        return None if self.images_per_model is None else self.images_per_model * (self.checkpoints + 1)


def _steps_per_epoch(train: dict[str, Any]) -> int:
    """Optimizer steps of one epoch, as the trainer counts them (datasets scanned, repeats and balancing
    applied; bucket leftovers make a few more batches on multi-bucket data)."""
    cfg = TrainConfig(**train)
    batches = 0
    lyco_log = logging.getLogger("lyco")
    level = lyco_log.level
    lyco_log.setLevel(logging.WARNING)          # the scan's per-folder lines are the trainer's business
    try:
        for d in cfg.datasets:
            n = len(scan_dataset(d).epoch_indices())
            batches += math.ceil(n / d.batch_size)
    finally:
        lyco_log.setLevel(level)
    return math.ceil(batches / cfg.train.gradient_accumulation_steps)


def run_steps(run: RunSpec, memo: dict[str, int | None]) -> int | None:
    t = run.train["train"]
    if t.get("steps"):
        return int(t["steps"])
    key = json.dumps(run.train["datasets"], sort_keys=True) + str(t.get("gradient_accumulation_steps"))
    if key not in memo:
        try:
            memo[key] = _steps_per_epoch(run.train)
        except Exception as exc:  # noqa: BLE001 - missing data: the plan says so instead of failing
            log.debug("plan: cannot scan the training data (%s)", exc)
            memo[key] = None
    per = memo[key]
    return None if per is None else per * int(t["epochs"])


def _images_per_model(sw: Sweep) -> tuple[int | None, bool, str, list[str]]:
    """Images generated per model (base or checkpoint) by the evaluation config, and whether exact."""
    cfg = EvalConfig(**sw.eval_data)
    g = cfg.generation
    size = f"{g.width}x{g.height}" if g.width and g.height else "the model's resolution"
    try:
        leaves = build_leaves(cfg)
        return sum(ps.n_images for leaf in leaves for ps in leaf.prompt_sets.values()), True, size, []
    except Exception as exc:  # noqa: BLE001 - datasets not there yet: estimate from the prompt types
        n = 0
        for c in cfg.concepts:
            style = (c.style_concept if c.style_concept is not None else c.category in cfg.metrics.style_categories)
            types = ["train", "trigger", "alter", "agnostic", "agnostic_class"] + ([] if style else ["style"])
            for t in types:
                if getattr(c.prompts, t) != "none":
                    n += g.images_per_type.get(t, g.images)
        return n, False, size, [f"images per model estimated (the concepts do not resolve yet: {exc})"]


def estimate(sw: Sweep) -> Cost:
    memo: dict[str, int | None] = {}
    steps = {r.name: run_steps(r, memo) for r in sw.runs}
    per_model, exact, size, notes = _images_per_model(sw)
    cost = Cost(len(sw.runs), len(sw.runs) * len(sw.cfg.points), steps, per_model, exact, size, notes)
    if cost.train_steps is None:
        cost.notes.append("training steps unknown: the dataset folders of the base run are not there yet")
    return cost


def _fmt_s(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def cost_lines(sw: Sweep, cost: Cost, slots: int, rates: dict[str, float] | None = None) -> list[str]:
    """Time lines from the ``[estimate]`` figures (or measured ``rates``) spread over ``slots`` parallel jobs."""
    e = sw.cfg.estimate
    step_s = (rates or {}).get("train_step_s", e.train_step_s)
    image_s = (rates or {}).get("image_s", e.image_s)
    lines, total = [], 0.0
    if step_s and cost.train_steps is not None:
        t = (cost.train_steps * step_s + cost.runs * e.run_overhead_s) / slots
        total += t
        lines.append(f"  training   ≈ {_fmt_s(t)}  ({cost.train_steps} steps × {step_s:g} s + {cost.runs} × "
                     f"{e.run_overhead_s:g} s start-up, {slots} at a time)")
    if image_s and cost.images is not None:
        t = cost.images * image_s / slots + e.eval_overhead_s
        total += t
        lines.append(f"  evaluation ≈ {_fmt_s(t)}  ({cost.images} images × {image_s:g} s, {slots} at a time, "
                     f"+ {e.eval_overhead_s:g} s metrics)")
    if lines:
        total += e.analyze_s
        lines.append(f"  analysis   ≈ {_fmt_s(e.analyze_s)}")
        lines.append(f"  total      ≈ {_fmt_s(total)}")
    else:
        lines.append("  (no time estimate: set [estimate] train_step_s and image_s, measured on this machine)")
    return lines


def _g(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def config_table(sw: Sweep) -> list[str]:
    cols = ["id", "algo", "preset", "lr", "lr_level", "dim", "alpha", "factor", "capacity", "alpha1", "varies", "label"]
    rows = [[c.id, *(_g(c.factors.get(k)) for k in cols[1:10]), c.varies or "(default)", c.label] for c in sw.configs]
    widths = [max(len(cols[i]), *(len(r[i]) for r in rows)) for i in range(len(cols))]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(cols, widths)).rstrip()]
    out += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return out


def plan_text(sw: Sweep, cost: Cost, slots: int, executor: str, states: dict[str, str] | None = None) -> str:
    unit = sw.cfg.unit
    pts = ", ".join(str(p) for p in sw.cfg.points)
    n_cfg, n_seed = len(sw.configs), len(sw.cfg.seeds)
    lines = [f"lyco sweep {sw.cfg.name!r}: {sw.file}", f"  folder: {sw.out}",
             f"  {n_cfg} configurations × {n_seed} seeds ({', '.join(map(str, sw.cfg.seeds))}) = {cost.runs} runs; "
             f"checkpoints at {unit}s {pts} = {cost.checkpoints} checkpoints"]
    if cost.train_steps is not None:
        per = sorted({v for v in cost.steps_per_run.values() if v is not None})  # none is None here
        lines.append(f"  training: {cost.train_steps} optimizer steps in all ({'/'.join(map(str, per))} per run)")
    if cost.images is not None:
        approx = "" if cost.images_exact else "≈ "
        lines.append(f"  evaluation: {approx}{cost.images_per_model} images per model × {cost.checkpoints + 1} models "
                     f"(base + checkpoints) = {approx}{cost.images} images at {cost.image_size}")
    lines.append(f"  {executor}")
    lines += [f"  note: {n}" for n in sw.notes + cost.notes]
    lines.append("cost:")
    lines += cost_lines(sw, cost, slots)
    lines.append("configurations:")
    lines += config_table(sw)
    if states is not None:
        lines.append("runs:")
        for r in sw.runs:
            lines.append(f"  {r.name:<16} {states.get(r.name, '?'):<12} {r.dir}")
    return "\n".join(lines)
