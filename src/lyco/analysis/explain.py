"""SHAP analysis (docs/ANALYSIS.md §5): which factors move each category score.

Per category and target, a CatBoost regressor with the paper's settings (300 iterations, learning rate 0.1,
random_seed 123, nan_mode Min; ``algo`` and ``preset`` categorical) on the coded factors, one row per checkpoint
(seeds are not averaged), explained with CatBoost's own TreeSHAP (``get_feature_importance(type="ShapValues")``,
identical to ``shap.TreeExplainer``).  Next to the paper's in-sample R² comes a held-out R²: each config is
predicted by a model fitted without it (leave one config out), pooled over the configs.

Features: ``algo``, ``preset``, ``epoch``, ``capacity``, ``lr_level`` (the learning rate's level within its
algorithm), then any other factor (``scale``, captions, …); features constant over the rows are left out.  The
paper's subset (``subset="paper"``, applied after ranking over the whole pool): configs whose scale differs from
their algorithm's default (the α = 1 variants) and configs below their algorithm's default capacity (LoKr
factor 12) are dropped; algorithms without a capacity (native fine-tuning) get the highest capacity for the fit and
their capacity SHAP value is moved into ``algo``.  ``subset="all"`` keeps every config (missing capacity is NaN,
which nan_mode Min treats as the smallest).

Needs catboost (``pip install 'lyco[analysis]'``); :func:`available` says whether it is installed.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .factors import Factors
from .table import Checkpoint, natural_key
from .targets import Column

NAN = float("nan")
SUBSETS = ("paper", "all")
FEATURE_ORDER = ("algo", "preset", "epoch", "capacity", "lr_level")
SUMMARY_COLUMNS = ("category", "target", "metric", "encoder", "resize", "prompt_type", "feature", "mean_abs_shap",
                   "spread", "n_seeds", "n_rows", "n_configs", "r2_train", "r2_holdout", "expected_value")
VALUE_COLUMNS = ("category", "target", "checkpoint", "config", "seed", "epoch", "feature", "value", "shap")
ENABLE = "pip install 'lyco[analysis]'  (installs catboost)"


def available() -> bool:
    try:
        import catboost  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class ShapSettings:
    iterations: int = 300
    learning_rate: float = 0.1
    random_seed: int = 123
    nan_mode: str = "Min"
    #: "paper" (drop α = 1 and below-default-capacity variants, fold native capacity into algo) or "all"
    subset: str = "paper"
    #: leave-one-config-out held-out R² (one extra fit per config)
    holdout: bool = True
    #: only these epochs (the paper's appendix uses epoch 10 for scenes and toys); None: all
    epochs: tuple[str, ...] | None = None
    #: CatBoost threads (None: all cores)
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.subset not in SUBSETS:
            raise ConfigError(f"SHAP subset {self.subset!r}: choose one of {', '.join(SUBSETS)}")


@dataclass
class Design:
    """The feature matrix: one row per checkpoint."""

    features: list[str]
    categorical: list[str]
    checkpoints: list[Checkpoint]
    X: list[list[Any]]
    #: rows whose capacity SHAP value goes into algo
    folded: list[bool]


@dataclass
class ShapModel:
    category: str
    target: str
    column: Column
    design: Design
    y: np.ndarray
    prediction: np.ndarray
    shap: np.ndarray
    expected_value: float
    r2_train: float
    r2_holdout: float = NAN
    summary: list[dict[str, object]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- design
def _config_subset(factors: Factors, configs: Sequence[str], subset: str) -> tuple[list[str], set[str]]:
    """(configs kept, algorithms whose capacity is folded into algo)."""
    no_capacity = {factors.algo(c) for c in configs} - {factors.algo(c) for c in configs
                                                        if factors.get(c, "capacity") != ""}
    if subset == "all" or "capacity" not in factors.columns:
        return list(configs), set()
    kept = []
    for c in configs:
        default = factors.defaults.get(factors.algo(c), c)
        if "scale" in factors.columns and factors.get(c, "scale") != factors.get(default, "scale"):
            continue
        cap = factors.get(c, "capacity")
        if cap != "" and float(cap) < 0:
            continue
        kept.append(c)
    return kept, no_capacity


def _feature_columns(factors: Factors | None) -> list[str]:
    if factors is None:
        return []
    cols = ["lr_level" if c == "lr" and "lr_level" in factors.columns else c for c in factors.compared]
    if len({factors.algo(c) for c in factors.configs}) > 1:
        cols.insert(0, "algo")
    return cols


def build_design(checkpoints: Sequence[Checkpoint], factors: Factors | None, settings: ShapSettings) -> Design:
    cks = [c for c in checkpoints if settings.epochs is None or c.epoch in settings.epochs]
    folded_algos: set[str] = set()
    if factors is not None:
        cks = [c for c in cks if c.config in factors.values]       # a ranked base model has no factors
        keep, folded_algos = _config_subset(factors, sorted({c.config for c in cks}, key=natural_key), settings.subset)
        cks = [c for c in cks if c.config in set(keep)]
    cks.sort(key=lambda c: (natural_key(c.config), natural_key(c.seed), natural_key(c.epoch)))
    cols = _feature_columns(factors) + (["epoch"] if any(c.epoch for c in cks) else [])
    table = {col: [factors.get(c.config, col) if col != "epoch" else c.epoch for c in cks]  # type: ignore[union-attr]
             for col in cols}
    folded = [factors is not None and factors.algo(c.config) in folded_algos for c in cks]
    features: list[str] = []
    categorical: list[str] = []
    columns: list[list[float] | list[str]] = []
    algo_of = [factors.algo(c.config) if factors is not None else "" for c in cks]
    for col in sorted(cols, key=lambda c: (FEATURE_ORDER.index(c) if c in FEATURE_ORDER else 99, cols.index(c))):
        vals = table[col]
        if len(set(vals)) < 2:
            continue                      # constant over the rows: says nothing
        if col != "algo" and "algo" in cols and _function_of(vals, algo_of):
            continue                      # constant within each algorithm (scale in the paper subset): = algo
        numeric = col not in ("algo", "preset") and all(_is_number(v) for v in vals if v != "")
        if numeric:
            nums = [float(v) if v != "" else NAN for v in vals]
            if col == "capacity" and any(folded):
                top = max((x for x in nums if not math.isnan(x)), default=0.0) + 1
                nums = [top if f else x for x, f in zip(nums, folded)]
            columns.append(nums)
        else:
            columns.append([v if v != "" else "none" for v in vals])
            categorical.append(col)
        features.append(col)
    X = [list(row) for row in zip(*columns)] if columns else [[] for _ in cks]
    return Design(features, categorical, cks, X, folded)


def _function_of(values: Sequence[str], groups: Sequence[str]) -> bool:
    seen: dict[str, str] = {}
    return all(seen.setdefault(g, v) == v for v, g in zip(values, groups))


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------- models
def _regressor(settings: ShapSettings) -> Any:
    from catboost import CatBoostRegressor
    kw: dict[str, Any] = dict(iterations=settings.iterations, learning_rate=settings.learning_rate,
                              random_seed=settings.random_seed, nan_mode=settings.nan_mode, verbose=False,
                              allow_writing_files=False)
    if settings.threads is not None:
        kw["thread_count"] = settings.threads
    return CatBoostRegressor(**kw)


def _pool(design: Design, rows: Sequence[int], y: np.ndarray | None = None) -> Any:
    from catboost import Pool
    return Pool([design.X[i] for i in rows], None if y is None else y,
                cat_features=[design.features.index(c) for c in design.categorical], feature_names=design.features)


def _fit_predict(design: Design, train: Sequence[int], y: np.ndarray, test: Sequence[int],
                 settings: ShapSettings) -> np.ndarray:
    if np.ptp(y) == 0:                   # CatBoost refuses a constant target; the best model is the constant
        return np.full(len(test), float(y[0]))
    model = _regressor(settings)
    model.fit(_pool(design, train, y))
    return np.asarray(model.predict(_pool(design, test)), dtype=np.float64)


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return NAN if ss_tot == 0 else 1.0 - float(((y - pred) ** 2).sum()) / ss_tot


def holdout_r2(design: Design, rows: Sequence[int], y: np.ndarray, settings: ShapSettings) -> float:
    """Leave one config out: every config's rows predicted by a model fitted on the other configs."""
    by_config: dict[str, list[int]] = defaultdict(list)
    for j, i in enumerate(rows):
        by_config[design.checkpoints[i].config].append(j)
    if len(by_config) < 2:
        return NAN
    pred = np.empty(len(rows))
    for idx in by_config.values():
        skip = set(idx)
        train = [j for j in range(len(rows)) if j not in skip]
        pred[idx] = _fit_predict(design, [rows[j] for j in train], y[train], [rows[j] for j in idx], settings)
    return r2(y, pred)


def fit_target(design: Design, scores: Mapping[str, float], category: str, target: str, column: Column,
               settings: ShapSettings) -> ShapModel | None:
    """Fit and explain one (category, target); None when fewer than 3 rows have a score or it never varies."""
    rows = [i for i, c in enumerate(design.checkpoints) if not math.isnan(scores.get(c.name, NAN))]
    if len(rows) < 3 or not design.features:
        return None
    y = np.asarray([scores[design.checkpoints[i].name] for i in rows], dtype=np.float64)
    got = _shap_values(design, rows, y, settings)
    if got is None:
        return None
    shap, expected, pred = got
    per_seed = seed_importance(design, rows, y, settings)
    sub = Design(design.features, design.categorical, [design.checkpoints[i] for i in rows],
                 [design.X[i] for i in rows], [design.folded[i] for i in rows])
    out = ShapModel(category, target, column, sub, y, pred, shap, expected, r2(y, pred))
    if settings.holdout:
        out.r2_holdout = holdout_r2(design, rows, y, settings)
    out.summary = summarise(out, per_seed)
    return out


def _shap_values(design: Design, rows: Sequence[int], y: np.ndarray, settings: ShapSettings
                 ) -> tuple[np.ndarray, float, np.ndarray] | None:
    """(SHAP values with native capacity folded into algo, expected value, in-sample prediction); None when the
    target is constant."""
    if np.ptp(y) == 0:
        return None
    model = _regressor(settings)
    pool = _pool(design, rows, y)
    model.fit(pool)
    values = np.asarray(model.get_feature_importance(pool, type="ShapValues"), dtype=np.float64)
    shap = values[:, :-1].copy()
    if "capacity" in design.features and "algo" in design.features:
        ic, ia = design.features.index("capacity"), design.features.index("algo")
        for j, i in enumerate(rows):
            if design.folded[i]:
                shap[j, ia] += shap[j, ic]
                shap[j, ic] = 0.0
    return shap, float(values[0, -1]), np.asarray(model.predict(pool), dtype=np.float64)


def seed_importance(design: Design, rows: Sequence[int], y: np.ndarray, settings: ShapSettings) -> list[np.ndarray]:
    """Mean |SHAP| per feature of a model fitted on each seed's rows alone (how stable the importances are)."""
    by_seed: dict[str, list[int]] = defaultdict(list)
    for j, i in enumerate(rows):
        by_seed[design.checkpoints[i].seed].append(j)
    if len(by_seed) < 2:
        return []
    out = []
    for seed in sorted(by_seed, key=natural_key):
        idx = by_seed[seed]
        got = _shap_values(design, [rows[j] for j in idx], y[idx], settings) if len(idx) >= 3 else None
        out.append(np.abs(got[0]).mean(axis=0) if got is not None else np.zeros(len(design.features)))
    return out


def summarise(m: ShapModel, per_seed: Sequence[np.ndarray] = ()) -> list[dict[str, object]]:
    """Mean |SHAP| per feature, and its spread: the standard deviation (ddof 1) of the mean |SHAP| of models fitted
    on each seed's checkpoints alone (NaN with one seed)."""
    seeds = sorted({c.seed for c in m.design.checkpoints}, key=natural_key)
    out = []
    for f, name in enumerate(m.design.features):
        spread = float(np.std([p[f] for p in per_seed], ddof=1)) if len(per_seed) > 1 else NAN
        out.append({"category": m.category, "target": m.target, "metric": m.column[0], "encoder": m.column[1],
                    "resize": m.column[2], "prompt_type": m.column[3], "feature": name,
                    "mean_abs_shap": float(np.abs(m.shap[:, f]).mean()), "spread": spread, "n_seeds": len(seeds),
                    "n_rows": len(m.y), "n_configs": len({c.config for c in m.design.checkpoints}),
                    "r2_train": m.r2_train, "r2_holdout": m.r2_holdout, "expected_value": m.expected_value})
    return out


def value_rows(m: ShapModel) -> list[dict[str, object]]:
    """Every SHAP value with its feature value (the beeswarm's points)."""
    out = []
    for j, ck in enumerate(m.design.checkpoints):
        for f, name in enumerate(m.design.features):
            v = m.design.X[j][f]
            if name == "capacity" and m.design.folded[j]:
                v = NAN                      # folded into algo: shown without a capacity
            out.append({"category": m.category, "target": m.target, "checkpoint": ck.name, "config": ck.config,
                        "seed": ck.seed, "epoch": ck.epoch, "feature": name, "value": v, "shap": float(m.shap[j, f])})
    return out
