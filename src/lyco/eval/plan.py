"""What an evaluation plans (:class:`Plan`) and what it produced (:class:`Outcome`).

The runner builds a :class:`Plan` from the config (leaves, variants, the image jobs of every prompt set), runs it, and
returns an :class:`Outcome`; the report (:mod:`lyco.eval.report`) and later analyses read only these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .generate import ImageJob, Variant
from .prompts import Leaf
from .rank import Row


@dataclass
class Plan:
    """Every image to generate, grouped by (variant, leaf, prompt type), and the generation settings."""

    leaves: list[Leaf]
    variants: list[Variant]
    #: (variant, leaf id, prompt type) -> jobs in k order
    sets: dict[tuple[str, str, str], list[ImageJob]]
    size: tuple[int, int]
    settings: dict[str, Any]

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def leaves_of(self, v: Variant) -> list[Leaf]:
        if v.is_base or v.concepts is None:
            return list(self.leaves)
        return [leaf for leaf in self.leaves if any(leaf.matches(s) for s in v.concepts)]

    def unique_jobs(self) -> list[ImageJob]:
        seen: dict[str, ImageJob] = {}
        for jobs in self.sets.values():
            for j in jobs:
                seen.setdefault(j.key, j)
        return list(seen.values())


@dataclass
class Outcome:
    """What a run produced (on the main process)."""

    rows: list[Row]
    aggregates: list[Row]
    plan: Plan
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
