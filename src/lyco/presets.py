"""Named target presets (immutable data) and preset files.

A preset says which blocks to adapt, per side (UNet / any generic model vs text encoders), like LyCORIS's
preset TOML files: ``unet_target_module``, ``unet_target_name``, ``text_encoder_target_module``,
``text_encoder_target_name``, ``exclude_name``, ``enable_conv``, ``module_algo_map``, ``name_algo_map``.
"""
from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .config import AdapterConfig
from .errors import ConfigError, did_you_mean

_PRESET_KEYS = ("unet_target_module", "unet_target_name", "text_encoder_target_module", "text_encoder_target_name",
                "exclude_name", "enable_conv", "module_algo_map", "name_algo_map", "use_fnmatch")


@dataclass(frozen=True)
class Preset:
    name: str
    unet_target_module: tuple[str, ...] = ()
    unet_target_name: tuple[str, ...] = ()
    text_encoder_target_module: tuple[str, ...] = ()
    text_encoder_target_name: tuple[str, ...] = ()
    exclude_name: tuple[str, ...] = ()
    enable_conv: bool = True
    module_algo_map: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    name_algo_map: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    use_fnmatch: bool = False
    #: adapt every Linear/Conv layer (generic models)
    everything: bool = False
    #: SDXL UNet target names when they differ (sd-scripts leaves conv_in/conv_out/time/label embeddings out)
    unet_target_name_sdxl: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Selection:
    target_modules: tuple[str, ...]
    target_names: tuple[str, ...]
    exclude_names: tuple[str, ...]
    enable_conv: bool
    everything: bool
    module_algo_map: Mapping[str, Mapping[str, Any]]
    name_algo_map: Mapping[str, Mapping[str, Any]]
    use_fnmatch: bool


TRANSFORMER = ("Transformer2DModel",)
CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
ATTN_UNET_NAMES = (r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)$",)
ATTN_TE_NAMES = (r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)$",)
FULL_EXTRA_NAMES = ("conv_in$", "conv_out$", r"time_embedding\.linear_1$", r"time_embedding\.linear_2$")


def _p(name: str, **kw: Any) -> Preset:
    return Preset(name, **kw)


PRESETS: Mapping[str, Preset] = MappingProxyType({
    "all": _p("all", everything=True),
    "kohya": _p("kohya", unet_target_module=TRANSFORMER, text_encoder_target_module=TE_BLOCKS, enable_conv=False),
    "kohya-conv": _p("kohya-conv", unet_target_module=TRANSFORMER + CONV_BLOCKS, text_encoder_target_module=TE_BLOCKS),
    "full": _p("full", unet_target_module=TRANSFORMER + CONV_BLOCKS, unet_target_name=FULL_EXTRA_NAMES,
               text_encoder_target_module=TE_BLOCKS, unet_target_name_sdxl=()),
    "full-lin": _p("full-lin", unet_target_module=TRANSFORMER + ("ResnetBlock2D",),
                   unet_target_name=FULL_EXTRA_NAMES[2:], text_encoder_target_module=TE_BLOCKS, enable_conv=False,
                   unet_target_name_sdxl=()),
    "attn-mlp": _p("attn-mlp", unet_target_module=TRANSFORMER, unet_target_name=FULL_EXTRA_NAMES[2:],
                   text_encoder_target_module=TE_BLOCKS, enable_conv=False, unet_target_name_sdxl=()),
    "attn-only": _p("attn-only", unet_target_name=ATTN_UNET_NAMES, text_encoder_target_name=ATTN_TE_NAMES,
                    enable_conv=False),
    "unet-transformer-only": _p("unet-transformer-only", unet_target_module=TRANSFORMER,
                                unet_target_name=FULL_EXTRA_NAMES[2:], enable_conv=False, unet_target_name_sdxl=()),
    "unet-convblock-only": _p("unet-convblock-only", unet_target_module=CONV_BLOCKS,
                              unet_target_name=FULL_EXTRA_NAMES[:2], unet_target_name_sdxl=()),
    "ia3": _p("ia3", unet_target_name=(r".*attn[12]\.(to_k|to_v)$", r".*ff\.net\.2$"),
              text_encoder_target_name=(r".*self_attn\.(k_proj|v_proj)$", r".*mlp\.fc2$"),
              enable_conv=False,
              name_algo_map=MappingProxyType({r".*ff\.net\.2$": {"train_on_input": True},
                                              r".*mlp\.fc2$": {"train_on_input": True}})),
})


def preset_names() -> list[str]:
    return sorted(PRESETS)


def load_preset_file(path: str | Path) -> Preset:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"preset {str(path)!r} is neither a preset name ({', '.join(preset_names())}) "
                          "nor a file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML ({exc})") from None
    kw: dict[str, Any] = {}
    for k, v in data.items():
        if k not in _PRESET_KEYS:
            raise ConfigError(f"{p}: unknown preset key {k!r}{did_you_mean(k, _PRESET_KEYS)}; "
                              f"valid: {', '.join(_PRESET_KEYS)}")
        if k in ("module_algo_map", "name_algo_map"):
            AdapterConfig(**{k: v})  # validate option names and values
            kw[k] = MappingProxyType({kk: MappingProxyType(dict(vv)) for kk, vv in v.items()})
        elif k in ("enable_conv", "use_fnmatch"):
            if not isinstance(v, bool):
                raise ConfigError(f"{p}: {k} must be true or false, got {v!r}")
            kw[k] = v
        else:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{p}: {k} must be a list of strings")
            kw[k] = tuple(v)
    return Preset(p.stem, **kw)


def get_preset(name: str) -> Preset:
    if name in PRESETS:
        return PRESETS[name]
    if name.endswith(".toml") or "/" in name or Path(name).is_file():
        return load_preset_file(name)
    raise ConfigError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}; valid: {', '.join(preset_names())} "
                      "or a path to a preset .toml file")


def is_text_encoder(prefix: str) -> bool:
    return prefix.startswith("lora_te")


def resolve_preset(cfg: AdapterConfig, prefix: str, family: str = "") -> Selection:
    """The target selection for one root (side chosen by its name prefix; SDXL UNets may differ)."""
    te = is_text_encoder(prefix)
    excl = tuple(cfg.exclude_names)
    maps = (dict(cfg.module_algo_map), dict(cfg.name_algo_map))
    if cfg.target_modules is not None or cfg.target_names is not None:
        return Selection(tuple(cfg.target_modules or ()), tuple(cfg.target_names or ()), excl, True, False, *maps,
                         cfg.use_fnmatch)
    if cfg.preset is None:
        return Selection((), (), excl, True, True, *maps, cfg.use_fnmatch)
    p = get_preset(cfg.preset)
    # the preset's own overrides first; the config's on top
    mam = {**p.module_algo_map, **cfg.module_algo_map}
    nam = {**p.name_algo_map, **cfg.name_algo_map}
    fn = cfg.use_fnmatch or p.use_fnmatch
    if p.everything:
        return Selection((), (), excl + p.exclude_name, p.enable_conv, True, mam, nam, fn)
    mods = p.text_encoder_target_module if te else p.unet_target_module
    names = p.text_encoder_target_name if te else p.unet_target_name
    if not te and family == "sdxl" and p.unet_target_name_sdxl is not None:
        names = p.unet_target_name_sdxl
    return Selection(tuple(mods), tuple(names), excl + p.exclude_name, p.enable_conv, False, mam, nam, fn)
