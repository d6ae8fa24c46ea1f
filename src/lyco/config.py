"""``AdapterConfig``: what to adapt and how.  Field names follow LyCORIS's ``network_args``."""
from __future__ import annotations

from collections.abc import Mapping
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

from .algos import registry
from .algos.options import AlgoOptions
from .errors import ConfigError, did_you_mean
from .validation import format_validation_error

#: option names that may appear in ``module_algo_map`` / ``name_algo_map`` overrides: every algorithm option
#: (the fields of :class:`~lyco.algos.options.AlgoOptions`, the one list of them) plus the conv-layer rank and alpha
_ALGO_FIELDS = AlgoOptions.field_names()
OVERRIDE_KEYS: tuple[str, ...] = (*_ALGO_FIELDS[:3], "conv_dim", "conv_alpha", *_ALGO_FIELDS[3:])


class AdapterConfig(BaseModel):
    """Which modules to adapt and with which algorithm.

    Targets: ``preset`` (a named preset or a TOML file), or ``target_modules`` (class names of blocks whose
    Linear/Conv layers are adapted, or of layers themselves) and ``target_names`` (module paths; regex matched
    from the start, or globs with ``use_fnmatch``), minus ``exclude_names``.  With none of these, every
    Linear and Conv layer of the model is adapted.  ``module_algo_map`` (by class name) and ``name_algo_map``
    (by path pattern) override options per block or layer, as in LyCORIS presets.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    algo: str = "lora"
    dim: StrictInt = Field(4, ge=1,
                           description="rank for Linear layers and 1x1 convs (LoKr: rank of the low-rank factor)")
    alpha: float | None = Field(1.0, ge=0, description="scale = alpha/dim; None or 0 means alpha = dim")
    conv_dim: StrictInt | None = Field(None, ge=0,
                                       description="rank for convs with a kernel > 1; None = dim, 0 = skip them")
    conv_alpha: float | None = Field(None, ge=0, description="alpha for convs with a kernel > 1; None = alpha")
    use_tucker: StrictBool = False
    use_scalar: StrictBool = False
    rs_lora: StrictBool = False
    dropout: float = Field(0.0, ge=0, lt=1)
    rank_dropout: float = Field(0.0, ge=0, lt=1)
    rank_dropout_scale: StrictBool = True
    module_dropout: float = Field(0.0, ge=0, lt=1)
    dora_wd: StrictBool = False
    wd_on_output: StrictBool = Field(False, description="DoRA on the output axis (PEFT layout); default input axis")
    dora_detach_norm: StrictBool = False
    factor: StrictInt = -1
    decompose_both: StrictBool = False
    full_matrix: StrictBool = False
    unbalanced_factorization: StrictBool = False
    block_size: StrictInt = Field(4, ge=1)
    constraint: float = Field(0.0, ge=0)
    rescaled: StrictBool = False
    train_on_input: StrictBool = False
    train_norm: StrictBool = False
    init: Literal["kaiming", "gaussian", "orthogonal"] = "kaiming"
    path: Literal["auto", "bypass", "rebuild"] = "auto"
    preset: str | None = None
    target_modules: list[str] | None = None
    target_names: list[str] | None = None
    exclude_names: list[str] = Field(default_factory=list)
    use_fnmatch: StrictBool = False
    module_algo_map: dict[str, dict[str, Any]] = Field(default_factory=dict)
    name_algo_map: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seed: StrictInt | None = Field(None, description="seed for the adapter's initialisation (None: torch's global RNG)")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, type(self), "invalid AdapterConfig")) from None

    @field_validator("algo")
    @classmethod
    def _algo(cls, v: str) -> str:
        return registry.canonical(v)

    @field_validator("factor")
    @classmethod
    def _factor(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("factor must be -1 (balanced) or a positive integer")
        return v

    @model_validator(mode="after")
    def _overrides(self) -> AdapterConfig:
        for map_name in ("module_algo_map", "name_algo_map"):
            for key, over in getattr(self, map_name).items():
                if not isinstance(over, dict):
                    raise ValueError(f"{map_name}[{key!r}] must be a table of options, got {over!r}")
                for k in over:
                    if k not in OVERRIDE_KEYS:
                        raise ValueError(f"{map_name}[{key!r}]: unknown option {k!r}{did_you_mean(k, OVERRIDE_KEYS)}; "
                                         f"valid: {', '.join(OVERRIDE_KEYS)}")
                try:
                    AdapterConfig(**{**self.option_dict(), **over})
                except ConfigError as exc:
                    raise ValueError(f"{map_name}[{key!r}]: {exc}") from None
        return self

    # ------------------------------------------------------------------ helpers
    def option_dict(self) -> dict[str, Any]:
        """The algorithm options (the keys an override may change)."""
        return {k: getattr(self, k) for k in OVERRIDE_KEYS}

    def with_overrides(self, *overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Option dict after applying overrides in order (a ``dim`` override also sets ``conv_dim``, etc.)."""
        opts = self.option_dict()
        for over in overrides:
            over = dict(over)
            if "dim" in over and "conv_dim" not in over:
                over["conv_dim"] = over["dim"]
            if "alpha" in over and "conv_alpha" not in over:
                over["conv_alpha"] = over["alpha"]
            opts.update(over)
        opts["algo"] = registry.canonical(opts["algo"])
        return opts

    @staticmethod
    def module_options(opts: dict[str, Any], spatial_kernel: bool) -> AlgoOptions | None:
        """Per-layer options: k×k convs use conv_dim/conv_alpha (skipped when conv_dim is 0)."""
        fields = {k: v for k, v in opts.items() if k in AlgoOptions.field_names()}
        if spatial_kernel:
            conv_dim = opts.get("conv_dim")
            if conv_dim == 0:
                return None
            if conv_dim is not None:
                fields["dim"] = conv_dim
            if opts.get("conv_alpha") is not None:
                fields["alpha"] = opts["conv_alpha"]
        return AlgoOptions(**fields)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> AdapterConfig:
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
