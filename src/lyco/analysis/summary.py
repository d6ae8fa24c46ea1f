"""Summary tables: the paper's Table 1 (the algorithms' defaults ranked per criterion) and the best epoch of each
config (highest harmonic mean of the criterion scores, as the paper's scripts chose checkpoints);
docs/ANALYSIS.md §6."""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from ..eval.rank import Row, average_ranks
from .factors import Factors
from .table import Checkpoint, natural_key
from .targets import CRITERIA, TARGETS, Column

NAN = float("nan")
TABLE1_COLUMNS = ("category", "algo", "config", "criterion", "score", "rank", "n_algos")
BEST_COLUMNS = ("category", "config", "algo", "epoch", "checkpoint", *CRITERIA, "harmonic_mean", "n_seeds")


def criterion_scores(category_rows: Sequence[Row], columns: Mapping[str, Column]
                     ) -> dict[tuple[str, str, str], float]:
    """(category, checkpoint, criterion) -> mean category score over the criterion's target columns."""
    wanted = defaultdict(set)
    for t in TARGETS:
        if t.key in columns:
            wanted[columns[t.key]].add(t.criterion)
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in category_rows:
        if r.level != "category" or math.isnan(r.score):
            continue
        for crit in wanted.get(r.column, ()):
            acc[(r.category, r.checkpoint, crit)].append(r.score)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else NAN


def table1(crit: Mapping[tuple[str, str, str], float], checkpoints: Sequence[Checkpoint], factors: Factors,
           categories: Sequence[str]) -> list[dict[str, object]]:
    """Per category (and 'all': the mean over categories), each algorithm's default config: mean score over its
    checkpoints per criterion and its rank among the algorithms (k = best, 1 = worst, as the paper's Table 1)."""
    defaults = {algo: cfg for algo, cfg in factors.defaults.items() if any(c.config == cfg for c in checkpoints)}
    names = {cfg: [c.name for c in checkpoints if c.config == cfg] for cfg in defaults.values()}
    out = []
    per_cat: dict[tuple[str, str], list[float]] = defaultdict(list)
    for cat in list(categories) + ["all"]:
        for criterion in CRITERIA:
            scores = {}
            for algo, cfg in defaults.items():
                if cat == "all":
                    s = _mean(per_cat[(algo, criterion)])
                else:
                    s = _mean([crit.get((cat, n, criterion), NAN) for n in names[cfg]])
                    per_cat[(algo, criterion)].append(s)
                if not math.isnan(s):
                    scores[algo] = s
            algos = sorted(scores, key=natural_key)
            ranks = average_ranks([scores[a] for a in algos])
            for a, rk in zip(algos, ranks):
                out.append({"category": cat, "algo": a, "config": defaults[a], "criterion": criterion,
                            "score": scores[a], "rank": rk, "n_algos": len(algos)})
    return out


def harmonic_mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return NAN
    if min(xs) <= 0:
        return 0.0
    return len(xs) / sum(1.0 / x for x in xs)


def best_epochs(crit: Mapping[tuple[str, str, str], float], checkpoints: Sequence[Checkpoint],
                factors: Factors | None, categories: Sequence[str]) -> list[dict[str, object]]:
    """Per category and config: the epoch with the highest harmonic mean of the seed-averaged criterion scores,
    and the checkpoint (seed) at that epoch with the highest harmonic mean of its own scores."""
    by_config: dict[str, dict[str, list[Checkpoint]]] = defaultdict(lambda: defaultdict(list))
    for c in checkpoints:
        by_config[c.config][c.epoch].append(c)
    out = []
    for cat in categories:
        for config in sorted(by_config, key=natural_key):
            best: dict[str, object] | None = None
            for epoch in sorted(by_config[config], key=natural_key):
                cks = by_config[config][epoch]
                means = {k: _mean([crit.get((cat, c.name, k), NAN) for c in cks]) for k in CRITERIA}
                hm = harmonic_mean(list(means.values()))
                if math.isnan(hm) or (best is not None and hm <= best["harmonic_mean"]):  # type: ignore[operator]
                    continue
                own = {c.name: harmonic_mean([crit.get((cat, c.name, k), NAN) for k in CRITERIA]) for c in cks}
                top = max(sorted(own, key=natural_key), key=lambda n: -1.0 if math.isnan(own[n]) else own[n])
                best = {"category": cat, "config": config,
                        "algo": factors.algo(config) if factors is not None and config in factors.values else "",
                        "epoch": epoch, "checkpoint": top, **means, "harmonic_mean": hm, "n_seeds": len(cks)}
            if best is not None:
                out.append(best)
    return out
