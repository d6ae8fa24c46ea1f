"""The paper's six analysis targets and four criteria, resolved against the metric columns of a table
(docs/ANALYSIS.md §1.4)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Column = tuple[str, str, str, str]          # (metric, encoder, resize, prompt type)

CRITERIA = ("fidelity", "controllability", "diversity", "preservation")


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    metric: str
    prompt_type: str
    criterion: str


#: the paper's SHAP targets (docs/ANALYSIS.md §1.4); also what the findings and Table 1 read
TARGETS = (
    Target("imsim_alter", "ImSim (alter)", "image_similarity", "alter", "fidelity"),
    Target("imsim_trigger", "ImSim (trigger)", "image_similarity", "trigger", "fidelity"),
    Target("imsim_train", "ImSim (train)", "image_similarity", "train", "fidelity"),
    Target("textsim_alter", "TextSim (alter)", "text_similarity", "alter", "controllability"),
    Target("vendi_trigger", "Vendi (trigger)", "vendi", "trigger", "diversity"),
    Target("preservation_style", "Preservation (style)", "style_loss", "style", "preservation"),
)


def resolve_targets(columns: Iterable[Column], encoder: str | None = None, resize: str | None = None
                    ) -> dict[str, Column]:
    """target key -> the table's column for it: the given image encoder / resize mode if present, else DINOv2
    ('dino') with letterboxed dataset images as in the paper, else the first in sorted order."""
    cols = sorted(set(columns))
    out = {}
    for t in TARGETS:
        cands = [c for c in cols if c[0] == t.metric and c[3] == t.prompt_type]
        cands = _prefer(cands, 1, encoder or "dino")
        cands = _prefer(cands, 2, resize or "letterbox")
        if cands:
            out[t.key] = cands[0]
    return out


def _prefer(cands: Sequence[Column], index: int, wanted: str) -> list[Column]:
    hit = [c for c in cands if c[index] == wanted]
    return hit or list(cands)


def target(key: str) -> Target:
    return next(t for t in TARGETS if t.key == key)


def label(column: Column) -> str:
    metric, enc, resize, ptype = column
    enc = f"{enc}-{resize}" if resize else enc
    return f"{metric} ({ptype}, {enc})" if enc else f"{metric} ({ptype})"
