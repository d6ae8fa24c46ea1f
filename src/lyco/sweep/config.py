"""The sweep file (TOML), as strict pydantic models.

    version = 1
    name = "paper"
    out = "sweeps/paper"                   # every run, the evaluation and the analysis go here
    base = "../train/sd15-lokr.toml"       # a `lyco train` config, or an inline [base] table
    seeds = [23, 24, 25]
    save_epochs = [10, 30, 50]             # or save_steps = [...]
    eval = "../eval/sd15-paper.toml"       # a `lyco eval` config (its [[checkpoints]] are filled in), or [eval]
    grid = "paper"                         # the paper's 26 configurations (ids 1001-1035)
    analyze = { shap_subset = "paper" }    # lyco.analysis options (true: the defaults; false: no analysis)

    [[configs]]                            # more configurations (or the only ones, without `grid`)
    id = "2001"
    label = "LoRA dim 64"
    set = { network.dim = 64, network.alpha = 32 }    # any key of the base run
    factors = { note = "extra" }           # extra factor labels (derived ones can be overridden too)

Relative paths in the sweep file are relative to its folder.  Unknown keys are errors with a did-you-mean.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from ..errors import ConfigError
from ..validation import format_validation_error

Label = StrictBool | StrictInt | float | StrictStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfigEntry(_Strict):
    """One configuration: what it changes on the base run, and its labels."""

    if TYPE_CHECKING:
        id: str  # what the validator below makes of the input
    else:
        id: StrictStr | StrictInt
    label: str = ""
    #: nested tables deep-merged into the base run (TOML dotted keys: ``{ network.dim = 32, train.lr = 1e-4 }``)
    set: dict[str, Any] = Field(default_factory=dict)
    #: factor labels added to (or overriding) the derived ones
    factors: dict[str, Label] = Field(default_factory=dict)
    #: this configuration is its algorithm's default (default: the centre of the one-factor-at-a-time star)
    default: StrictBool | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | int) -> str:
        s = str(v).strip()
        if not s or any(c in s for c in "/\\ \t"):
            raise ValueError(f"config id {v!r} must be non-empty, without spaces or slashes (it names run folders)")
        return s


class ExecutorConfig(_Strict):
    """Where and how the runs execute (command-line flags override these)."""

    kind: Literal["local", "ray"] = "local"
    #: local executor: runs at a time (each a subprocess with its share of the threads and its own GPUs)
    jobs: StrictInt = Field(1, ge=1)
    #: local executor: CPU threads shared by the jobs (default: the cores this process may use)
    threads: StrictInt | None = Field(None, ge=1)
    #: GPUs per run (default: 1 when the machine or Ray cluster has GPUs, else 0)
    gpus_per_run: StrictInt | None = Field(None, ge=0)
    #: Ray: CPUs per run (also the run's thread count)
    cpus_per_run: StrictInt = Field(1, ge=1)
    #: a failed run is retried this many times (resuming from its last state); the other runs go on
    max_retries: StrictInt = Field(2, ge=0)
    #: Ray: cluster address ("auto" = a running cluster; default: start a local instance)
    address: str | None = None
    #: the evaluation's image generation split over this many parallel jobs (default: as many as run at once)
    eval_shards: StrictInt | None = Field(None, ge=1)


class AnalyzeConfig(_Strict):
    """How the analysis stage runs :func:`lyco.analysis.analyze` (``analyze = false`` skips it)."""

    #: configurations left out before ranking (they are still trained and evaluated)
    exclude: list[StrictStr | StrictInt] = Field(default_factory=list)
    #: image encoder and dataset resize mode of the ImSim / Vendi targets (default: dino, letterbox)
    encoder: str | None = None
    resize: str | None = None
    #: SHAP with CatBoost (skipped with a note when catboost is not installed: pip install 'lyco[analysis]')
    shap: StrictBool = True
    #: "paper": drop the α = 1 and below-default-capacity variants and fold native capacity into algo; "all"
    shap_subset: Literal["paper", "all"] = "paper"
    #: only these save points in the SHAP models (default: all)
    shap_epochs: list[StrictInt] | None = None
    #: leave-one-config-out held-out R² (one more CatBoost fit per configuration)
    holdout: StrictBool = True
    #: write report.html (the CSVs are always written)
    report: StrictBool = True


class Estimate(_Strict):
    """Cost figures for ``plan`` (measured on your machine; ``status`` prints the measured ones after runs)."""

    #: seconds per optimizer step of one run (one job's share of the machine)
    train_step_s: float | None = Field(None, gt=0)
    #: seconds per run for start-up (imports, model loading, caches)
    run_overhead_s: float = Field(0.0, ge=0)
    #: seconds per evaluation image (generation + features) on one job
    image_s: float | None = Field(None, gt=0)
    #: seconds for the metrics, ranks and report of the whole pool
    eval_overhead_s: float = Field(0.0, ge=0)
    #: seconds for the analysis
    analyze_s: float = Field(0.0, ge=0)


class SweepConfig(_Strict):
    version: Literal[1] = 1
    name: str = "sweep"
    out: str = Field(..., description="the sweep's folder: runs, evaluation, analysis, manifest")
    #: a `lyco train` config file (its relative paths are read as `lyco train` does: from the working folder),
    #: or its tables inline (relative paths from the sweep file's folder)
    base: str | dict[str, Any]
    seeds: list[StrictInt] = Field(..., min_length=1)
    save_epochs: list[StrictInt] | None = None
    save_steps: list[StrictInt] | None = None
    grid: Literal["paper"] | None = None
    #: only these grid configurations (default: all)
    include: list[StrictStr | StrictInt] | None = None
    exclude: list[StrictStr | StrictInt] = Field(default_factory=list)
    configs: list[ConfigEntry] = Field(default_factory=list)
    #: a `lyco eval` config file (its [[checkpoints]] are replaced by the sweep's), or its tables inline
    eval: str | dict[str, Any]
    #: analyse after the evaluation (true: with the defaults; a table: with these options; false: not)
    analyze: AnalyzeConfig | None = Field(default_factory=AnalyzeConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    estimate: Estimate = Field(default_factory=Estimate)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"seeds repeated: {dup}")
        return v

    @field_validator("analyze", mode="before")
    @classmethod
    def _analyze(cls, v: Any) -> Any:
        """``analyze = true`` (the defaults) / ``false`` (no analysis stage) / a table of options."""
        return {} if v is True else None if v is False else v

    @field_validator("save_epochs", "save_steps")
    @classmethod
    def _points(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v or any(p < 1 for p in v) or len(set(v)) != len(v):
            raise ValueError(f"needs distinct positive numbers, got {v}")
        return sorted(v)

    @property
    def unit(self) -> str:
        return "epoch" if self.save_epochs else "step"

    @property
    def points(self) -> list[int]:
        return list(self.save_epochs or self.save_steps or [])


def read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None


def parse_sweep(data: dict[str, Any], source: str) -> SweepConfig:
    """Validate the sweep file's own keys (every problem in one message)."""
    try:
        cfg = SweepConfig(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, SweepConfig, source)) from None
    if (cfg.save_epochs is None) == (cfg.save_steps is None):
        raise ConfigError(f"{source}: set exactly one of save_epochs (e.g. [10, 30, 50]) and save_steps")
    if not cfg.grid and not cfg.configs:
        raise ConfigError(f"{source}: no configurations: add grid = \"paper\" or [[configs]] tables")
    if (cfg.include is not None or cfg.exclude) and not cfg.grid:
        raise ConfigError(f"{source}: include/exclude select configurations of a grid; set grid = \"paper\" "
                          "or list the [[configs]] you want")
    return cfg
