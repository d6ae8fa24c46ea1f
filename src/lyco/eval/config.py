"""``EvalConfig``: what ``lyco eval CONFIG.toml`` evaluates and how.  Unknown keys are errors with a did-you-mean.

    base = "builtin:tiny"
    out = "eval_out"

    [[checkpoints]]
    name = "olis-lora"
    adapter = "runs/olis/olis.safetensors"

    [[concepts]]
    category = "character"
    class = "olis"
    world = "olis"                      # prompt sets made by the micro-world
    dataset = "data/olis"

Relative paths are resolved against the config file's folder.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .. import builtin
from ..errors import ConfigError, did_you_mean
from ..validation import format_validation_error
from .metrics import DEFAULT_METRICS, PROMPT_TYPES, REGISTRY

PromptSource = str | list[str] | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Checkpoint(_Model):
    """A model to compare with the base: an adapter on the base model, or a full fine-tuned ``model``."""

    name: str = Field(min_length=1)
    adapter: str | None = None
    model: str | None = None
    multiplier: float | list[float] = 1.0
    #: grouping labels for rank pools and scatter plots (config = a training configuration, seed, epoch)
    config: str | None = None
    seed: str | int | None = None
    epoch: int | None = None
    #: evaluate only these concepts (leaf ids ``class`` or ``class/subclass``); default all
    concepts: list[str] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Checkpoint:
        if self.adapter is None and self.model is None:
            raise ValueError(f"checkpoint {self.name!r}: give 'adapter' (a file) or 'model' (a full model)")
        if isinstance(self.multiplier, list) and not self.multiplier:
            raise ValueError(f"checkpoint {self.name!r}: 'multiplier' is an empty list")
        return self


class Generation(_Model):
    sampler: Literal["ddim", "euler", "euler_a", "dpm++2m", "pndm", "model"] = "ddim"
    steps: StrictInt = Field(25, ge=1)
    guidance_scale: float = Field(7.0, ge=0)
    #: None: the model's native resolution
    width: StrictInt | None = Field(None, ge=8)
    height: StrictInt | None = Field(None, ge=8)
    negative_prompt: str = ""
    #: image k of every prompt set has seed seed_start + k (the paper: 1000)
    seed_start: StrictInt = 1000
    #: images per prompt set (the paper: 100); per-type overrides in images_per_type
    images: StrictInt = Field(100, ge=1)
    images_per_type: dict[str, int] = Field(default_factory=dict)
    batch_size: StrictInt = Field(4, ge=1)
    #: prompts longer than the text encoder's window are split into up to this many chunks (2 = 150 tokens)
    max_chunks: StrictInt = Field(2, ge=1)
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"

    @field_validator("images_per_type")
    @classmethod
    def _types(cls, v: dict[str, int]) -> dict[str, int]:
        for k, n in v.items():
            if k not in PROMPT_TYPES:
                raise ValueError(f"unknown prompt type {k!r}{did_you_mean(k, PROMPT_TYPES)}; "
                                 f"types: {', '.join(PROMPT_TYPES)}")
            if n < 1:
                raise ValueError(f"images_per_type.{k} must be >= 1")
        return v


class Backbones(_Model):
    """Local weights: a transformers folder (DINOv2 / CLIP), an open_clip folder (CLIP), a torchvision-format
    VGG-19 state dict (file or folder); ``builtin`` = the micro-world's tiny backbones."""

    dino: str = "builtin"
    clip: str = "builtin"
    vgg: str = "builtin"
    #: square input side; None: each backbone's own (DINOv2/CLIP: the folder's image processor / config; VGG:
    #: config.json's image_size, else 224 — the paper's 224 for real weights)
    image_size: StrictInt | None = Field(None, ge=8)
    batch_size: StrictInt = Field(16, ge=1)
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"


_DEFAULT_ENCODERS: tuple[Literal["dino", "clip"], ...] = ("dino",)
_DEFAULT_RESIZE: tuple[Literal["letterbox", "resize", "center_crop"], ...] = ("letterbox",)


class Metrics(_Model):
    names: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    #: encoders for image similarity / SCD / diversity / preservation similarity
    image_encoders: list[Literal["dino", "clip"]] = Field(default_factory=lambda: list(_DEFAULT_ENCODERS))
    #: how dataset images are brought to the encoder's square input (generated images are plainly resized)
    dataset_resize: list[Literal["letterbox", "resize", "center_crop"]] = Field(
        default_factory=lambda: list(_DEFAULT_RESIZE))
    #: style-loss taps: "relu" (relu1_1…relu5_1, what the paper's numbers are) or "conv" (true pre-activation)
    vgg_taps: Literal["relu", "conv"] = "relu"
    #: replacement table for text similarity: the concepts' own rows, the paper's table (+ concepts'), or none
    text_table: Literal["concepts", "paper", "none"] = "concepts"
    #: reproduce the reference code's substring replacement and trailing-comma quirk
    legacy_text_processing: StrictBool = False
    #: categories whose leaves are styles (no <style> prompts; style similarity is computed)
    style_categories: list[str] = Field(default_factory=lambda: ["style", "styles"])
    #: keep VGG Gram vectors in the feature cache (610,304 floats per image for real VGG-19)
    cache_gram: StrictBool = True

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for n in v:
            if n not in REGISTRY:
                raise ValueError(f"unknown metric {n!r}{did_you_mean(n, REGISTRY)}; available: {', '.join(REGISTRY)}")
        return v


class Rank(_Model):
    #: put the base model in the rank pool (the paper's pool is the fine-tuned checkpoints only)
    include_base: StrictBool = False


class Report(_Model):
    title: str = "lyco evaluation"
    #: images per prompt set shown in the grids (base and each checkpoint side by side)
    grid_images: StrictInt = Field(6, ge=0)
    #: checkpoints shown in the grids besides the base model (None: all; large pools make large reports)
    grid_checkpoints: StrictInt | None = Field(8, ge=0)
    thumb_size: StrictInt = Field(96, ge=16)
    plots: StrictBool = True


class Prompts(_Model):
    """Prompt sources per type: a file (``.txt``: one per line; ``.json``: a list), a built-in template group
    (``person``, ``plushie``, ``style``, ``castle``, ``canal``, ``garden``, ``sculpture``, ``waterfall``; for
    ``style``: ``paper``), or an inline list.  ``{}`` in a line is replaced by the descriptor.  ``"none"``
    disables a type."""

    train: PromptSource = None
    trigger: PromptSource = None
    alter: PromptSource = None
    style: PromptSource = None
    agnostic: PromptSource = None
    agnostic_class: PromptSource = None


class Concept(_Model):
    """One leaf (category, class, subclass) with its descriptor, dataset and prompt sets."""

    category: str | None = None
    class_: str | None = Field(None, alias="class")
    subclass: str = ""
    #: trigger token + class words, e.g. "whoo anime girl, toid outfit"
    descriptor: str | None = None
    #: default: the descriptor's first word
    trigger: str | None = None
    #: words that stay when the trigger is dropped (agnostic-with-class prompts); default: descriptor − trigger
    class_words: str | None = None
    #: the training images (and same-stem .txt captions), searched recursively
    dataset: str | None = None
    #: a micro-world concept: its dataset (written into the cache unless 'dataset' is given) supplies descriptor,
    #: category and prompt sets
    world: str | None = None
    prompts: Prompts = Field(default_factory=Prompts)
    #: rows of the text-similarity replacement table; default: remove the trigger word
    text_replace: list[tuple[str, str]] | None = None
    #: a style leaf (default: category in metrics.style_categories)
    style_concept: StrictBool | None = None
    #: derive concept-agnostic prompt sets (leak) from the <alter> prompts when no files are given
    leak: StrictBool = True

    @model_validator(mode="after")
    def _named(self) -> Concept:
        if self.world is None and self.dataset is None and not self.descriptor:
            raise ValueError(f"concept {self.class_ or '?'}: give 'descriptor' (or a micro-world 'world' / 'dataset')")
        return self


class EvalConfig(_Model):
    version: Literal[1] = 1
    #: the base model: a diffusers folder, a single-file checkpoint or builtin:tiny
    base: str = "builtin:tiny"
    out: str = "eval_out"
    #: image and feature cache (default: <out>/cache); share it between runs to skip finished work
    cache: str | None = None
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    concepts: list[Concept] = Field(min_length=1)
    generation: Generation = Field(default_factory=Generation)
    backbones: Backbones = Field(default_factory=Backbones)
    metrics: Metrics = Field(default_factory=Metrics)
    rank: Rank = Field(default_factory=Rank)
    report: Report = Field(default_factory=Report)
    #: folder relative paths are resolved against (the config file's folder)
    root: str = "."

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, EvalConfig, "invalid eval config")) from None

    @model_validator(mode="after")
    def _unique(self) -> EvalConfig:
        names = [c.name for c in self.checkpoints]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"checkpoint names must be unique; repeated: {', '.join(dup)}")
        if "base" in names:
            raise ValueError("'base' is reserved for the base model; rename that checkpoint")
        return self

    def path(self, p: str | os.PathLike) -> Path:
        """A config path resolved against :attr:`root` (``builtin:*`` and absolute paths unchanged)."""
        s = os.fspath(p)
        if builtin.is_builtin(s):
            return Path(s)
        q = Path(s).expanduser()
        return q if q.is_absolute() else Path(self.root) / q

    def backbone_path(self, kind: str) -> str:
        """``backbones.<kind>``: ``builtin`` and ``builtin:`` ids unchanged, else resolved against :attr:`root`."""
        p = getattr(self.backbones, kind)
        return p if p == "builtin" else str(self.path(p))

    @property
    def out_dir(self) -> Path:
        return self.path(self.out)

    @property
    def cache_dir(self) -> Path:
        return self.path(self.cache) if self.cache else self.out_dir / "cache"


def load_eval_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """Read and validate an evaluation config (TOML); relative paths in it are relative to its folder."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    data.update(overrides or {})
    data.setdefault("root", str(p.resolve().parent))
    try:
        return EvalConfig(**data)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
