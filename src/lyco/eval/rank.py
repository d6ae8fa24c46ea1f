"""Rank normalisation and aggregation (docs/EVALUATION.md §6): pure functions of the result table.

* :func:`rank_normalize`: for each leaf and metric column (metric, encoder, resize, prompt type), rank the raw
  values over the pool of compared checkpoints with average ties; score = (rank − 1)/(N − 1), so 1 is best and 0
  worst (distances are ranked descending).  N counts the pool rows with a value; missing values stay missing, and a
  group with a single value gets no score.
* :func:`aggregate`: unweighted means over the subclasses of a class, then over the classes of a category.  There
  is no cross-category aggregate.
* :func:`seed_summary`: mean and standard error over seeds × classes, for the scatter plots' error bars.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace

import numpy as np

NAN = float("nan")

#: the columns of the result table, in CSV order
COLUMNS = ("level", "category", "class", "subclass", "checkpoint", "config", "seed", "epoch", "metric", "encoder",
           "resize", "prompt_type", "value", "score")


@dataclass(frozen=True)
class Row:
    """One number of the result table.  ``level``: ``leaf``, ``class`` or ``category`` (aggregates)."""

    category: str
    class_: str
    subclass: str
    checkpoint: str
    metric: str
    encoder: str
    resize: str
    prompt_type: str
    value: float
    config: str = ""
    seed: str = ""
    epoch: str = ""
    score: float = NAN
    level: str = "leaf"

    @property
    def column(self) -> tuple[str, str, str, str]:
        """(metric, encoder, resize, prompt type): what is ranked."""
        return (self.metric, self.encoder, self.resize, self.prompt_type)

    @property
    def leaf(self) -> tuple[str, str, str]:
        return (self.category, self.class_, self.subclass)

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, "class_" if k == "class" else k) for k in COLUMNS}     # (asdict deep-copies: slow)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Row:
        kw = {("class_" if k == "class" else k): v for k, v in d.items() if k in COLUMNS}
        kw["value"] = float(kw.get("value", NAN))  # type: ignore[arg-type]
        kw["score"] = float(kw.get("score", NAN))  # type: ignore[arg-type]
        for k in ("category", "class_", "subclass", "checkpoint", "config", "seed", "epoch", "metric", "encoder",
                  "resize", "prompt_type", "level"):
            kw[k] = "" if kw.get(k) is None else str(kw[k])
        return cls(**kw)  # type: ignore[arg-type]


def average_ranks(values: list[float]) -> list[float]:
    """1-based ranks, ascending, ties get the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    return ranks


def normalized_scores(values: list[float], higher_is_better: bool) -> list[float]:
    """(rank − 1)/(N − 1) over the non-missing values; missing values and single-value groups give NaN."""
    idx = [i for i, v in enumerate(values) if not math.isnan(v)]
    out = [NAN] * len(values)
    n = len(idx)
    if n < 2:
        return out
    vals = [values[i] if higher_is_better else -values[i] for i in idx]
    for i, r in zip(idx, average_ranks(vals)):
        out[i] = (r - 1) / (n - 1)
    return out


def rank_normalize(rows: Iterable[Row], higher_is_better: Callable[[str], bool],
                   pool: Collection[str] | None = None) -> list[Row]:
    """Scores for the rows whose checkpoint is in ``pool`` (all rows if None); other rows keep NaN scores."""
    rows = list(rows)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if pool is None or r.checkpoint in pool:
            groups[(r.leaf, r.column)].append(i)
    out = [replace(r, score=NAN) for r in rows]
    for (_, column), idx in groups.items():
        scores = normalized_scores([rows[i].value for i in idx], higher_is_better(column[0]))
        for i, s in zip(idx, scores):
            out[i] = replace(out[i], score=s)
    return out


def nanmean(xs: Iterable[float]) -> float:
    vals = [x for x in xs if not math.isnan(x)]
    return float(np.mean(vals)) if vals else NAN


def _mean_up(rows: list[Row], level: str) -> list[Row]:
    """One aggregation step: subclasses → class (level 'class') or classes → category (level 'category')."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        key_class = r.class_ if level == "class" else ""
        groups[(r.category, key_class, r.checkpoint, r.column)].append(r)
    out = []
    for (category, class_, _, _), members in groups.items():
        first = members[0]
        out.append(replace(first, category=category, class_=class_, subclass="", level=level,
                           value=nanmean(m.value for m in members), score=nanmean(m.score for m in members)))
    return out


def aggregate(rows: Iterable[Row]) -> list[Row]:
    """Class- and category-level rows (unweighted means of value and score) from leaf rows."""
    leaf = [r for r in rows if r.level == "leaf"]
    classes = _mean_up(leaf, "class")
    return classes + _mean_up(classes, "category")


@dataclass(frozen=True)
class Point:
    """A seed-averaged value with its standard error (std/√n over seeds × classes)."""

    mean: float
    sem: float
    n: int


def seed_summary(rows: Iterable[Row], field: str = "score") -> dict[tuple, Point]:
    """Class-level rows → {(category, config, epoch, column): Point} averaged over seeds × classes."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r.level != "class":
            continue
        v = getattr(r, field)
        if not math.isnan(v):
            groups[(r.category, r.config or r.checkpoint, r.epoch, r.column)].append(v)
    out = {}
    for key, vals in groups.items():
        a = np.asarray(vals, dtype=np.float64)
        sem = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0
        out[key] = Point(float(a.mean()), sem, len(a))
    return out
