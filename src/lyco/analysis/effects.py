"""Effects: how a category score changes when one thing changes (docs/ANALYSIS.md §3).

* Configs of the same algorithm that differ in exactly one coded factor (``lr``, ``capacity``, ``scale``,
  ``preset``, …): ``delta`` = mean over matched (seed, epoch) of score(to) − score(from).
* Consecutive epochs of every config (factor ``epoch``): matched over seeds.
* The algorithms' default configs against each other (factor ``algo``, ``algo`` column empty): matched over
  (seed, epoch).

``from`` < ``to`` by value (numbers by value, presets by trained layers, algorithms by name); ``stderr`` is the
standard error of the matched differences (std with ddof 1 / √n; empty when n = 1).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ..eval.rank import Row
from .factors import Factors, order_key
from .table import Checkpoint, natural_key
from .targets import Column

NAN = float("nan")
COLUMNS = ("category", "algo", "factor", "from", "to", "config_from", "config_to", "metric", "encoder", "resize",
           "prompt_type", "delta", "stderr", "n")


@dataclass(frozen=True)
class Comparison:
    """Two groups of checkpoints: config_from at epoch_from vs config_to at epoch_to (None: any epoch, matched)."""

    algo: str
    factor: str
    from_: str
    to: str
    config_from: str
    config_to: str
    epoch_from: str | None = None
    epoch_to: str | None = None


@dataclass(frozen=True)
class Effect:
    category: str
    comparison: Comparison
    column: Column
    delta: float
    stderr: float
    n: int
    #: the matched differences: ((seed, epoch of the 'from' checkpoint), score(to) − score(from))
    diffs: tuple[tuple[tuple[str, str], float], ...] = ()

    @property
    def factor(self) -> str:
        return self.comparison.factor

    @property
    def significant(self) -> bool:
        """|delta| > 2 stderr (never with a single matched pair)."""
        return self.n >= 2 and not math.isnan(self.stderr) and abs(self.delta) > 2 * self.stderr

    @property
    def label(self) -> str:
        c = self.comparison
        what = f"{self.column[0]}({self.column[3]})"
        if c.factor == "epoch":
            return f"{c.config_from} epoch {c.from_}→{c.to} {what}"
        return f"{c.config_from}→{c.config_to} ({c.factor} {c.from_}→{c.to}) {what}"

    def as_dict(self) -> dict[str, object]:
        c = self.comparison
        return {"category": self.category, "algo": c.algo, "factor": c.factor, "from": c.from_, "to": c.to,
                "config_from": c.config_from, "config_to": c.config_to, "metric": self.column[0],
                "encoder": self.column[1], "resize": self.column[2], "prompt_type": self.column[3],
                "delta": self.delta, "stderr": self.stderr, "n": self.n}


def comparisons(factors: Factors | None, checkpoints: Iterable[Checkpoint]) -> list[Comparison]:
    """Every comparison the grid allows (see the module doc), in a fixed order."""
    cks = list(checkpoints)
    present = {c.config for c in cks}
    out: list[Comparison] = []
    if factors is not None:
        by_algo: dict[str, list[str]] = defaultdict(list)
        for config in factors.configs:
            if config in present:
                by_algo[factors.algo(config)].append(config)
        for algo in sorted(by_algo, key=natural_key):
            for a, b in combinations(by_algo[algo], 2):
                diff = factors.differing(a, b)
                if len(diff) == 1:
                    out.append(_ordered(algo, diff[0], factors.get(a, diff[0]), factors.get(b, diff[0]), a, b))
        defaults = [(algo, d) for algo, d in sorted(factors.defaults.items()) if d in present]
        for (algo_a, a), (algo_b, b) in combinations(defaults, 2):
            out.append(Comparison("", "algo", algo_a, algo_b, a, b))
    epochs: dict[str, set[str]] = defaultdict(set)
    for c in cks:
        if c.epoch:
            epochs[c.config].add(c.epoch)
    for config in sorted(epochs, key=natural_key):
        algo = factors.algo(config) if factors is not None and config in factors.values else ""
        ordered = sorted(epochs[config], key=natural_key)
        for e1, e2 in zip(ordered, ordered[1:]):
            out.append(Comparison(algo, "epoch", e1, e2, config, config, e1, e2))
    return out


def _ordered(algo: str, column: str, va: str, vb: str, a: str, b: str) -> Comparison:
    if order_key(column, va) > order_key(column, vb):
        va, vb, a, b = vb, va, b, a
    return Comparison(algo, column, va, vb, a, b)


def matched_keys(comp: Comparison, checkpoints: Iterable[Checkpoint]) -> list[tuple[tuple[str, str], str, str]]:
    """((seed, epoch), checkpoint from, checkpoint to): same seed and epoch, or same seed at the two epochs."""
    index = {(c.config, c.seed, c.epoch): c.name for c in checkpoints}
    pairs = []
    for (config, seed, epoch), name in sorted(index.items()):
        if config != comp.config_from:
            continue
        if comp.epoch_from is None:
            other = index.get((comp.config_to, seed, epoch))
        elif epoch == comp.epoch_from and comp.epoch_to is not None:
            other = index.get((comp.config_to, seed, comp.epoch_to))
        else:
            continue
        if other is not None:
            pairs.append(((seed, epoch), name, other))
    return pairs


def compute_effects(category_rows: Sequence[Row], checkpoints: Sequence[Checkpoint], factors: Factors | None
                    ) -> list[Effect]:
    """Effects of every comparison on every category and metric column (category-level scores)."""
    score: dict[tuple[str, str, Column], float] = {}
    cats: set[str] = set()
    cols: set[Column] = set()
    for r in category_rows:
        if r.level == "category" and not math.isnan(r.score):
            score[(r.category, r.checkpoint, r.column)] = r.score
            cats.add(r.category)
            cols.add(r.column)
    out = []
    for comp in comparisons(factors, checkpoints):
        pairs = matched_keys(comp, checkpoints)
        if not pairs:
            continue
        for cat in sorted(cats):
            for col in sorted(cols):
                diffs = [(key, score[(cat, b, col)] - score[(cat, a, col)]) for key, a, b in pairs
                         if (cat, a, col) in score and (cat, b, col) in score]
                if diffs:
                    out.append(_effect(cat, comp, col, diffs))
    return out


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (std with ddof 1 / √n; NaN for one value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else NAN


def _effect(category: str, comp: Comparison, column: Column, diffs: list[tuple[tuple[str, str], float]]) -> Effect:
    mean, stderr = mean_stderr([d for _, d in diffs])
    return Effect(category, comp, column, mean, stderr, len(diffs), tuple(diffs))
