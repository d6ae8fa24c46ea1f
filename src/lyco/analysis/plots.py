"""The analysis' figures as PNG bytes (matplotlib, Agg backend): the paper's trade-off scatter plots per factor
and SHAP beeswarm plots.  Every function returns None when matplotlib is missing or there is nothing to draw."""
from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..eval.plots import Axis
from ..eval.rank import Row, seed_summary
from .table import natural_key

log = logging.getLogger("lyco")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: the analysis report has no plots (pip install matplotlib)")
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def factor_scatter_png(class_rows: Sequence[Row], category: str, algos: Mapping[str, str],
                       levels: Mapping[str, str], x: Axis, y: Axis, title: str) -> bytes | None:
    """Seed-averaged scores of ``algos``' configs (config -> algorithm; colour) at every epoch (a line joins a
    config's epochs, the last epoch is labelled), with standard-error bars; ``levels`` (config -> the factor's value,
    '' for the defaults) chooses the marker."""
    summary = seed_summary([r for r in class_rows if r.category == category and r.config in algos])
    series: dict[str, list[tuple[str, Any, Any]]] = {}
    for config in sorted(algos, key=natural_key):
        epochs = sorted({k[2] for k in summary if k[1] == config}, key=natural_key)
        found = [(e, summary.get((category, config, e, x.column)), summary.get((category, config, e, y.column)))
                 for e in epochs]
        found = [p for p in found if p[1] is not None and p[2] is not None]
        if found:
            series[config] = found
    plt = _pyplot()
    if plt is None or not series:
        return None
    algo_names = sorted(set(algos.values()), key=natural_key)
    level_names = sorted({levels.get(c, "") for c in algos}, key=natural_key)
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(4.8, 4.0), dpi=96)
    try:
        for config, pts in series.items():
            colour = cmap(algo_names.index(algos[config]) % 10)
            marker = MARKERS[level_names.index(levels.get(config, "")) % len(MARKERS)]
            xs, ys = [p[1].mean for p in pts], [p[2].mean for p in pts]
            ax.plot(xs, ys, "-", color=colour, alpha=0.35, linewidth=1)
            ax.errorbar(xs, ys, xerr=[p[1].sem for p in pts], yerr=[p[2].sem for p in pts], fmt=marker, color=colour,
                        capsize=2, markersize=5, elinewidth=0.8)
            tag = f"{config} e{pts[-1][0]}" if pts[-1][0] else config
            ax.annotate(tag, (xs[-1], ys[-1]), textcoords="offset points", xytext=(3, 3), fontsize=6)
        handles = [plt.Line2D([], [], color=cmap(i % 10), marker="o", linestyle="", label=a or "configs")
                   for i, a in enumerate(algo_names)]
        handles += [plt.Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], linestyle="",
                               label=lv or "default") for i, lv in enumerate(level_names) if len(level_names) > 1]
        ax.legend(handles=handles, fontsize=6, loc="best")
        ax.set_xlabel(f"{x.label()} [score]", fontsize=7)
        ax.set_ylabel(f"{y.label()} [score]", fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def _colour_values(values: Sequence[Any]) -> np.ndarray:
    """Feature values → [0, 1] for the colour map (categories by sorted order); NaN where missing."""
    nums: list[str | float] = []
    for v in values:
        if isinstance(v, str):
            nums.append(v)
        else:
            nums.append(float(v))
    if any(isinstance(v, str) for v in nums):
        cats = sorted({str(v) for v in nums})
        arr = np.asarray([cats.index(str(v)) for v in nums], dtype=np.float64)
    else:
        arr = np.asarray(nums, dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    if finite.size == 0:
        return arr
    lo, hi = float(finite.min()), float(finite.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.where(np.isnan(arr), np.nan, 0.5)


def _swarm_offsets(values: np.ndarray, bins: int = 40, width: float = 0.38) -> np.ndarray:
    """Vertical offsets that spread points with similar values (a simple beeswarm)."""
    if values.size == 0:
        return values
    lo, hi = float(values.min()), float(values.max())
    idx = np.zeros(values.size, dtype=int) if hi == lo else np.minimum(((values - lo) / (hi - lo) * bins).astype(int),
                                                                       bins - 1)
    out = np.zeros(values.size)
    biggest = max(np.bincount(idx).max(), 1)
    for b in np.unique(idx):
        members = np.flatnonzero(idx == b)
        for k, m in enumerate(members):
            step = (k + 1) // 2 * (1 if k % 2 else -1)
            out[m] = step * width / max(biggest / 2, 1)
    return out


def beeswarm_png(features: Sequence[str], values: Sequence[Sequence[Any]], shap: np.ndarray, title: str
                 ) -> bytes | None:
    """SHAP beeswarm: one row per feature (in the given order, as the paper's ``sort=False``), one point per
    checkpoint at its SHAP value, coloured by the feature's value (grey: none, e.g. native's folded capacity)."""
    plt = _pyplot()
    if plt is None or shap.size == 0:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 0.55 * len(features) + 1.3), dpi=96)
    try:
        cmap = plt.get_cmap("coolwarm")
        for f, _name in enumerate(features):
            yrow = len(features) - 1 - f
            s = shap[:, f]
            c = _colour_values([row[f] for row in values])
            ys = yrow + _swarm_offsets(s)
            missing = np.isnan(c)
            ax.scatter(s[~missing], ys[~missing], c=c[~missing], cmap=cmap, vmin=0, vmax=1, s=9, linewidths=0)
            if missing.any():
                ax.scatter(s[missing], ys[missing], color="#999999", s=9, linewidths=0)
        ax.axvline(0, color="#888888", linewidth=0.8)
        ax.set_yticks(range(len(features)))
        ax.set_yticklabels(list(reversed(features)), fontsize=8)
        ax.set_xlabel("SHAP value (effect on the category score)", fontsize=8)
        ax.set_title(title, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        sm = plt.cm.ScalarMappable(cmap=cmap)
        sm.set_array([])
        bar = fig.colorbar(sm, ax=ax, ticks=[0, 1], fraction=0.05, pad=0.02)
        bar.ax.set_yticklabels(["low", "high"], fontsize=7)
        bar.set_label("feature value", fontsize=7)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def finite(x: float) -> bool:
    return not (x is None or math.isnan(x))
