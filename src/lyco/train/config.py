"""The training run file (TOML), as strict pydantic models.

Unknown keys are errors naming their full path with a did-you-mean; booleans must be real booleans; every error
is reported in one pass before any model is loaded.  ``--set a.b=c`` overrides single values (TOML literals).
"""
from __future__ import annotations

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

from ..config import AdapterConfig
from ..errors import ConfigError
from ..validation import format_validation_error
from .kohya_names import kohya_hint

CONFIG_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelConfig(Strict):
    base: str = Field(..., description="builtin:tiny, a diffusers folder or a single-file checkpoint")
    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    tokenizer: str | None = None
    tokenizer_2: str | None = None
    vae_fp32: StrictBool = True
    clip_skip: StrictInt = Field(1, ge=1)


class NetworkConfig(AdapterConfig):
    """AdapterConfig plus which parts are trained."""

    train_unet: StrictBool = True
    train_text_encoder: StrictBool = True

    def __init__(self, **data: Any) -> None:
        kohya = {k: h for k, v in data.items() if k not in type(self).model_fields and (h := kohya_hint(k, v))}
        if not kohya:
            super().__init__(**data)
            return
        problems = [f"unknown key {k!r} ({h})" for k, h in kohya.items()]
        try:  # the section's other problems, reported in the same message
            type(self)(**{k: v for k, v in data.items() if k not in kohya})
        except ConfigError as exc:
            problems.append(str(exc).removeprefix("invalid AdapterConfig: "))
        raise ConfigError("; ".join(problems))


class OptimizerConfig(Strict):
    name: Literal["adamw", "adamw8bit", "prodigy", "sgd", "lion"] = "adamw"
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = 0.0


class SchedulerConfig(Strict):
    name: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                  "polynomial"] = "constant"
    warmup_steps: StrictInt = Field(0, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    num_cycles: StrictInt = Field(1, ge=1)
    power: float = 1.0


class TrainSection(Strict):
    steps: StrictInt | None = Field(None, ge=1)
    epochs: StrictInt | None = Field(None, ge=1)
    seed: StrictInt = 0
    lr: float = Field(1e-4, gt=0)
    unet_lr: float | None = Field(None, ge=0)
    text_encoder_lr: float | None = Field(None, ge=0)
    loraplus_lr_ratio: float | None = Field(None, gt=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    gradient_accumulation_steps: StrictInt = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, ge=0)
    noise_offset: float = Field(0.0, ge=0)
    min_snr_gamma: float | None = Field(None, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: StrictBool = False
    cache_latents: Literal["no", "memory", "disk"] = "memory"
    cache_text: StrictBool = True
    max_norm: float | None = Field(None, gt=0, description="kohya scale_weight_norms")

    @model_validator(mode="after")
    def _length(self) -> TrainSection:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of train.steps and train.epochs")
        return self


class BucketConfig(Strict):
    enabled: StrictBool = True
    step: StrictInt = Field(64, ge=8)
    min_side: StrictInt | None = Field(None, ge=8)
    max_side: StrictInt | None = Field(None, ge=8)
    no_upscale: StrictBool = False
    crop: Literal["center", "random"] = "center"
    leftovers: Literal["small_batch", "merge"] = "small_batch"


class SubsetConfig(Strict):
    path: str
    repeats: StrictInt | None = Field(None, ge=1)
    caption_extension: str = ".txt"
    trigger: str | None = None
    missing_captions: Literal["error", "empty", "trigger", "warn"] = "warn"
    shuffle_tags: StrictBool = False
    keep_tokens: StrictInt = Field(0, ge=0)
    tag_dropout: float = Field(0.0, ge=0, lt=1)
    caption_dropout: float | None = Field(None, ge=0, le=1)
    flip: StrictBool = False
    background: tuple[int, int, int] = (255, 255, 255)

    @field_validator("caption_extension")
    @classmethod
    def _ext(cls, v: str) -> str:
        return v if v.startswith(".") else "." + v


class DatasetConfig(Strict):
    resolution: StrictInt = Field(512, ge=8)
    batch_size: StrictInt = Field(1, ge=1)
    bucket: BucketConfig = Field(default_factory=BucketConfig)
    subsets: list[SubsetConfig] = Field(default_factory=list)
    folders: list[str] = Field(default_factory=list, description="kohya folders whose N_name children are subsets")
    balance_classes: StrictBool = False
    exposures_per_epoch: StrictInt | None = Field(None, ge=1)
    caption_dropout: float = Field(0.0, ge=0, le=1)
    min_image_side: StrictInt = Field(8, ge=1)

    @model_validator(mode="after")
    def _has_data(self) -> DatasetConfig:
        if not self.subsets and not self.folders:
            raise ValueError("a dataset needs subsets or folders")
        return self


class SampleConfig(Strict):
    prompts: list[str] = Field(default_factory=list)
    every_n_steps: StrictInt | None = Field(None, ge=1)
    every_n_epochs: StrictInt | None = Field(None, ge=1)
    at_start: StrictBool = False
    steps: StrictInt = Field(20, ge=1)
    cfg: float = 5.0
    seed: StrictInt = 1000
    width: StrictInt | None = None
    height: StrictInt | None = None
    negative: str = ""
    sampler: Literal["ddim", "euler", "dpm++", "pndm"] = "ddim"
    strict_sampling: StrictBool = False


class SaveConfig(Strict):
    every_n_steps: StrictInt | None = Field(None, ge=1)
    every_n_epochs: StrictInt | None = Field(None, ge=1)
    keep_last_n: StrictInt | None = Field(None, ge=1)
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    state_every_n_steps: StrictInt | None = Field(None, ge=1)
    state_every_n_epochs: StrictInt | None = Field(None, ge=1)
    keep_last_n_states: StrictInt = Field(2, ge=1)


class LogConfig(Strict):
    tensorboard: StrictBool = True
    wandb: StrictBool = False
    every_n_steps: StrictInt = Field(1, ge=1, description="TensorBoard scalars every N steps")
    print_every_n_steps: StrictInt | None = Field(None, ge=1, description="read the loss back and show it every N "
                                                  "steps (a line when stderr is not a terminal); default: about 20 "
                                                  "times a run, at least every 100 steps")


class TrainConfig(Strict):
    version: StrictInt = CONFIG_VERSION
    name: str = "lyco"
    output_dir: str = "runs/lyco"
    overwrite: StrictBool = False
    model: ModelConfig
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    train: TrainSection
    datasets: list[DatasetConfig]
    sample: SampleConfig = Field(default_factory=SampleConfig)
    save: SaveConfig = Field(default_factory=SaveConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _cross(self) -> TrainConfig:
        n = self.network
        if not (n.train_unet or n.train_text_encoder):
            raise ValueError("network.train_unet and network.train_text_encoder are both false: nothing to train")
        t = self.train
        if n.train_unet and t.unet_lr == 0:
            raise ValueError("train.unet_lr is 0 while network.train_unet is true; set network.train_unet = false "
                             "to freeze the UNet")
        if n.train_text_encoder and t.text_encoder_lr == 0:
            raise ValueError("train.text_encoder_lr is 0 while network.train_text_encoder is true; set "
                             "network.train_text_encoder = false to freeze the text encoder")
        for i, d in enumerate(self.datasets):
            if d.bucket.enabled and d.resolution % d.bucket.step:
                raise ValueError(f"datasets[{i}].resolution ({d.resolution}) is not a multiple of "
                                 f"datasets[{i}].bucket.step ({d.bucket.step}); change one of them")
        if not self.datasets:
            raise ValueError("at least one [[datasets]] table is needed")
        return self

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ------------------------------------------------------------------------------------------------ loading
def _set(data: dict, dotted: str, raw: str) -> None:
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        if k.isdigit() and isinstance(cur, list):
            cur = cur[int(k)]
        else:
            cur = cur.setdefault(k, {})
    last = keys[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      data: dict | None = None) -> TrainConfig:
    """Read, override (``a.b=c``) and validate a training run file (``data``: the parsed TOML instead of a file)."""
    source = str(path) if path else "<config>"
    if data is None:
        p = Path(path)  # type: ignore[arg-type]
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML ({exc})") from None
    data = dict(data)
    for o in overrides or []:
        if "=" not in o:
            raise ConfigError(f"--set {o!r}: expected key=value (e.g. train.lr=1e-4)")
        k, v = o.split("=", 1)
        _set(data, k.strip(), v.strip())
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"{source}: config version {version} is not supported (this lyco reads version "
                          f"{CONFIG_VERSION})")
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, TrainConfig, source, hint=kohya_hint)) from None
    except ConfigError as exc:  # raised by AdapterConfig inside network
        raise ConfigError(f"{source}: [network] {exc}") from None
