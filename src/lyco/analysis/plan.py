"""What an analysis is asked to do (:class:`AnalysisOptions`), what it analyses (:class:`Study`) and what came out
(:class:`AnalysisOutcome`).

The runner (:mod:`lyco.analysis.runner`) builds a :class:`Study` from the inputs, runs the phases on it and returns
an :class:`AnalysisOutcome`; the files (:mod:`lyco.analysis.outputs`) and the report (:mod:`lyco.analysis.report`)
read only these.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..eval.rank import Row
from .effects import Effect
from .explain import ShapModel, ShapSettings
from .factors import Factors
from .findings import Verdict
from .images import Image
from .table import Checkpoint, Results
from .targets import Column


@dataclass(frozen=True)
class AnalysisOptions:
    """How to analyse (all optional)."""

    #: configs left out before ranking (the paper drops 1007, 1017, 1027)
    exclude: tuple[str, ...] = ()
    #: rank the base model with the checkpoints (default: it is not part of the pool, as in the paper)
    include_base: bool = False
    #: image encoder and dataset resize mode of the image-similarity / Vendi targets (default dino, letterbox)
    encoder: str | None = None
    resize: str | None = None
    #: directions of metrics lyco does not know (results from other evaluators)
    higher_is_better: tuple[str, ...] = ()
    lower_is_better: tuple[str, ...] = ()
    #: SHAP: run it (needs catboost) and how
    shap: bool = True
    shap_settings: ShapSettings = field(default_factory=ShapSettings)
    #: images table for the contact sheets (default: images.csv next to the result table, when there is one)
    images: str | Path | None = None
    contact_prompt_type: str | None = None
    contact_image: int = 0
    thumb_size: int = 96
    #: write report.html (the CSVs are always written)
    report: bool = True
    title: str = "lyco analysis"
    #: replace the outputs of an earlier analysis in the same folder
    overwrite: bool = False


@dataclass
class Study:
    """What is analysed: the table, the rank pool, the coded factors, the resolved targets."""

    results: Results
    pool: list[Checkpoint]
    factors: Factors | None
    targets: dict[str, Column]
    higher_is_better: Callable[[str], bool]
    images: list[Image]
    inputs: list[Path]
    notes: list[str] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return self.results.categories


@dataclass
class AnalysisOutcome:
    """What came out (the files are written when an output folder is given)."""

    study: Study
    scores: list[Row]
    effects: list[Effect]
    findings: list[Verdict]
    table1: list[dict[str, object]]
    best: list[dict[str, object]]
    shap: list[ShapModel] = field(default_factory=list)
    shap_skipped: str | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def notes(self) -> list[str]:
        return self.study.notes

    @property
    def category_rows(self) -> list[Row]:
        return [r for r in self.scores if r.level == "category"]
