"""The paper's trade-off scatter plots (docs/EVALUATION.md §6.3), as PNG bytes (matplotlib, Agg backend).

One plot per (category, axis pair): each point is a configuration (and epoch) averaged over seeds × classes, with
standard-error bars.  Rank-normalised scores are plotted when the pool has at least two checkpoints, raw values
otherwise (then the base model is a point too).
"""
from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from .metrics import get_metric
from .rank import Point, Row, seed_summary

log = logging.getLogger("lyco")


@dataclass(frozen=True)
class Axis:
    metric: str
    encoder: str
    resize: str
    prompt_type: str

    @property
    def column(self) -> tuple[str, str, str, str]:
        return (self.metric, self.encoder, self.resize, self.prompt_type)

    def label(self) -> str:
        enc = f"{self.encoder}-{self.resize}" if self.resize else self.encoder
        return f"{get_metric(self.metric).display} ({self.prompt_type}, {enc})"


def paper_axes(image_encoder: str = "dino", resize: str = "letterbox") -> list[tuple[Axis, Axis]]:
    """(x, y) pairs of the paper: TextSim(alter) vs ImSim(alter); Vendi(trigger) vs SCD(trigger);
    preservation (style) vs ImSim(train)."""
    return [
        (Axis("text_similarity", "clip", "", "alter"), Axis("image_similarity", image_encoder, resize, "alter")),
        (Axis("vendi", image_encoder, "", "trigger"), Axis("scd", image_encoder, resize, "trigger")),
        (Axis("style_loss", "vgg", "", "style"), Axis("image_similarity", image_encoder, resize, "train")),
    ]


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def scatter_png(rows: Sequence[Row], category: str, x: Axis, y: Axis, field: str) -> bytes | None:
    """One scatter plot as PNG bytes; None when matplotlib is missing or there is nothing to plot."""
    plt = _matplotlib()
    if plt is None:
        log.warning("matplotlib is not installed: the report has no plots (pip install matplotlib)")
        return None
    summary = seed_summary([r for r in rows if r.category == category], field=field)
    points: dict[tuple[str, str], dict[str, Point]] = {}
    for (_cat, config, epoch, column), p in summary.items():
        if column in (x.column, y.column):
            points.setdefault((config, epoch), {})["x" if column == x.column else "y"] = p
    pairs = [(k, v["x"], v["y"]) for k, v in sorted(points.items()) if "x" in v and "y" in v]
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 3.8), dpi=96)
    try:
        for (config, epoch), px, py in pairs:
            label = f"{config} e{epoch}" if epoch else config
            ax.errorbar(px.mean, py.mean, xerr=px.sem, yerr=py.sem, fmt="o", capsize=3, label=label)
            ax.annotate(label, (px.mean, py.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
        kind = "score" if field == "score" else "raw"
        ax.set_xlabel(f"{x.label()} [{kind}]", fontsize=8)
        ax.set_ylabel(f"{y.label()} [{kind}]", fontsize=8)
        ax.set_title(category, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()
    finally:
        plt.close(fig)
