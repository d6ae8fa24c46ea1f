"""sd-scripts' command line, as the plug-in sees it: ``network_args`` (strings) and the train script's ``args``.

``network_args`` keep LyCORIS's names and are parsed with a typed schema: booleans accept only true/false/1/0,
numbers are strict, unknown names are errors with a did-you-mean.  :func:`network_config` turns them, with
``--network_dim`` / ``--network_alpha`` / ``--network_dropout``, into the :class:`~lyco.AdapterConfig` that
``lycoris.kohya`` (lycoris-lora 4.1.3) would build from the same command line; the differences that remain are
deliberate and listed in :data:`DIFFERENCES`.  :func:`check_train_args` rejects, before any training, the
train-script options the plug-in cannot honour.
"""
from __future__ import annotations

import logging
import types
import typing
from typing import Any

from ..config import OVERRIDE_KEYS, AdapterConfig
from ..errors import ConfigError, did_you_mean

log = logging.getLogger("lyco")

#: LyCORIS spellings accepted in network_args (old name -> lyco field)
ALIASES = {"use_cp": "use_tucker", "use_conv_cp": "use_tucker", "constrain": "constraint", "bypass_mode": "path",
           "weight_decompose": "dora_wd", "wd_on_out": "wd_on_output"}
EXTRA_ARGS = {"loraplus_lr_ratio": float, "loraplus_unet_lr_ratio": float, "loraplus_text_encoder_lr_ratio": float,
              "disable_conv_cp": bool, "train_unet": bool, "train_text_encoder": bool}
ARG_FIELDS = tuple(sorted(set(OVERRIDE_KEYS) | {"preset", "train_norm", "exclude_names", "seed"}))

#: sd-scripts ``networks.lora`` arguments with no lyco.kohya spelling, and what to use instead
BLOCKWISE_HINT = ("sd-scripts' block-wise networks.lora options have no network_args form in lyco.kohya; give "
                  "per-block ranks, alphas or algorithms in a preset TOML file (network_args \"preset=blocks.toml\" "
                  "with name_algo_map entries such as {\".*down_blocks_0.*\" = {dim = 8}})")
KOHYA_LORA_ARGS = {name: BLOCKWISE_HINT for name in (
    "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight", "mid_lr_weight",
    "up_lr_weight", "block_lr_zero_threshold", "network_reg_dims", "network_reg_alphas", "network_reg_lrs")}

#: the defaults lycoris.kohya uses for the same command line (lyco's own defaults differ for these)
LYCORIS_DEFAULTS = {"preset": "full", "rank_dropout_scale": False}

#: deliberate differences from lycoris.kohya (4.1.3) for the same command line (docs/kohya-plugin.md)
DIFFERENCES = (
    "the reference's duplicated module (time_embedding.linear_1/2 matched by both its TimestepEmbedding class "
    "and its name, an AssertionError on SD1/SD2 UNets) is built once",
    "conv_dim=0 switches k×k convs off (lycoris.kohya reads 0 as 'use network_dim')",
    "text-encoder modules are named text_model_encoder_layers_… with every transformers version (lycoris.kohya "
    "names them after the installed transformers' module paths)",
    "dora_wd=true puts DoRA on the input axis, the layout every UI computes correctly; wd_on_output=true gives "
    "lycoris.kohya's output-axis default",
    "flash-attention CLIP layers (CLIPFlashAttention2) are targeted like CLIPAttention",
)


def parse_bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1"):
        return True
    if s in ("false", "0"):
        return False
    raise ConfigError(f"network_args {name}={v!r}: expected true/false/1/0")


def _field_type(name: str) -> Any:
    """The base Python type of an AdapterConfig field (Optional / Annotated unwrapped)."""
    t = AdapterConfig.model_fields[name].annotation
    for _ in range(3):
        if typing.get_origin(t) is typing.Annotated:
            t = typing.get_args(t)[0]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if typing.get_origin(t) in (typing.Union, types.UnionType) and args:
            t = args[0]
    return t


def _num(name: str, v: Any, t: type) -> Any:
    try:
        if t is int:
            f = float(v)
            if f != int(f):
                raise ValueError
            return int(f)
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"network_args {name}={v!r}: expected {'an integer' if t is int else 'a number'}") from None


def _parse_one(raw_key: str, v: Any) -> tuple[str, Any]:
    key = ALIASES.get(raw_key, raw_key)
    if raw_key == "bypass_mode":
        return "path", "bypass" if parse_bool(raw_key, v) else "auto"
    t = _field_type(key)
    if t is bool:
        return key, parse_bool(raw_key, v)
    if t is int:
        return key, _num(raw_key, v, int)
    if t is float:
        return key, _num(raw_key, v, float)
    if typing.get_origin(t) is list:
        return key, [s.strip() for s in str(v).split(",") if s.strip()] if isinstance(v, str) else list(v)
    return key, str(v)


def parse_network_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(AdapterConfig fields, plug-in extras) from sd-scripts' string ``network_args``."""
    cfg: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    valid = set(ARG_FIELDS) | set(ALIASES) | set(EXTRA_ARGS)
    for raw_key, v in kwargs.items():
        if v is None:
            continue
        if raw_key in EXTRA_ARGS:
            t = EXTRA_ARGS[raw_key]
            extra[raw_key] = parse_bool(raw_key, v) if t is bool else _num(raw_key, v, t)
        elif raw_key in KOHYA_LORA_ARGS:
            raise ConfigError(f"network_args {raw_key!r}: {KOHYA_LORA_ARGS[raw_key]}")
        elif raw_key not in valid:
            raise ConfigError(f"unknown network_args {raw_key!r}{did_you_mean(raw_key, valid)}; "
                              f"valid: {', '.join(sorted(valid))}")
        else:
            key, value = _parse_one(raw_key, v)
            cfg[key] = value
    if "disable_conv_cp" in extra:
        cfg["use_tucker"] = not extra.pop("disable_conv_cp")
    return cfg, extra


def network_config(network_dim: int | None, network_alpha: float | None, neuron_dropout: float | None,
                   kwargs: dict[str, Any]) -> tuple[AdapterConfig, dict[str, Any]]:
    """The config sd-scripts' command line asks for, with lycoris.kohya's defaults, and the plug-in extras.

    As in lycoris.kohya: ``--network_dim`` (None: 4) and ``--network_alpha`` for Linear layers and 1×1 convs,
    ``conv_dim`` / ``conv_alpha`` defaulting to them for k×k convs, the ``full`` preset, no rank-dropout
    rescaling."""
    args, extras = parse_network_args(kwargs)
    args.setdefault("dim", int(network_dim) if network_dim is not None else 4)
    if network_alpha is not None:
        args.setdefault("alpha", float(network_alpha))
    if neuron_dropout:
        args.setdefault("dropout", float(neuron_dropout))
    for k, v in LYCORIS_DEFAULTS.items():
        args.setdefault(k, v)
    if args.get("dora_wd") and "wd_on_output" not in args:
        log.info("lyco.kohya: DoRA on the input axis (the layout every UI computes correctly); lycoris.kohya "
                 "defaults to the output axis: pass wd_on_output=true for that")
    try:
        return AdapterConfig(**args), extras
    except ConfigError as exc:
        raise ConfigError(f"network_args: {exc}") from None


#: ``--save_model_as`` values the plug-in writes
SAVE_FORMATS = (None, "safetensors")


def check_train_args(args: Any) -> None:
    """Reject, before training starts, train-script options whose output lyco.kohya cannot produce."""
    fmt = getattr(args, "save_model_as", None)
    if fmt not in SAVE_FORMATS:
        raise ConfigError(
            f"--save_model_as {fmt}: lyco.kohya writes .safetensors files only (kohya/LyCORIS keys plus sd-scripts "
            "metadata, loaded by sd-scripts, ComfyUI, A1111, Forge, InvokeAI and diffusers); use --save_model_as "
            "safetensors (nothing has been trained yet)")
