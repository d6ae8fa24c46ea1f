"""Adapters in PEFT and diffusers layouts, read as kohya/LyCORIS module tensors keyed by module path.

* **PEFT**: a folder with ``adapter_config.json`` + ``adapter_model.safetensors`` (one per model part, e.g. ``unet/``
  and ``text_encoder/`` subfolders as ``lyco convert --to peft`` writes them), or the ``adapter_model.safetensors``
  file itself with its ``adapter_config.json`` beside it.  Keys are ``base_model.model.<module path>.<param>``; the
  scale comes from the config (``lora_alpha`` / ``alpha``, ``r``, ``rank_pattern``, ``alpha_pattern``,
  ``use_rslora``) and is written as the kohya ``alpha`` (or folded into W1 for full-matrix LoKr).
* **diffusers**: one file with ``unet.<path>.lora_A.weight`` / ``text_encoder.<path>...`` keys (also the older
  ``.lora.down.weight`` spelling); the scale is baked into the factors unless an ``<path>.alpha`` key says otherwise.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FileFormatError
from .files import read_file

PEFT_PREFIX = "base_model.model."
CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DIFFUSERS_PARTS = ("unet", "text_encoder", "text_encoder_2", "transformer", "model")
#: PEFT / diffusers parameter name -> kohya/LyCORIS part name
PARTS = {
    "lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight", "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight", "lora_magnitude_vector": "dora_scale",
    "lora_magnitude_vector.weight": "dora_scale",
    **{k: k for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a",
                      "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha")},
}
SUPPORTED_PEFT_TYPES = ("LORA", "LOHA", "LOKR")
#: kohya name prefix of a model part -> its PEFT/diffusers part name
PART_OF_PREFIX = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
                  "lora_te2": "text_encoder_2"}


@dataclass
class ForeignAdapter:
    """One model part's adapter: module path -> {kohya part -> tensor} (alpha included)."""

    part: str  # "model" (the whole model), or "unet" / "text_encoder" / "text_encoder_2"
    kind: str  # e.g. "PEFT LORA", "diffusers LoRA"
    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def layout_of(tensors: dict[str, torch.Tensor]) -> str | None:
    """``"peft"`` or ``"diffusers"`` when the keys are in that layout, else None."""
    keys = list(tensors)
    if keys and all(k.startswith(PEFT_PREFIX) for k in keys):
        return "peft"
    if keys and all(k.split(".", 1)[0] in DIFFUSERS_PARTS for k in keys) and any(
            ".lora_A." in k or ".lora.down." in k for k in keys):
        return "diffusers"
    return None


def is_peft_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / CONFIG).is_file() or any((c / CONFIG).is_file() for c in p.iterdir() if c.is_dir()))


def _split(key: str) -> tuple[str, str]:
    for param in sorted(PARTS, key=len, reverse=True):
        if key.endswith("." + param):
            return key[: -len(param) - 1], PARTS[param]
    raise FileFormatError(f"unknown adapter key {key!r} (lyco reads PEFT/diffusers LoRA, LoHa and LoKr keys)")


def _pattern(patterns: dict[str, Any] | None, path: str, default: Any) -> Any:
    for pat, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pat})$", path):
            return value
    return default


def _weights_file(folder: Path) -> Path:
    for name in WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise FileFormatError(f"{folder}: {CONFIG} without adapter_model.safetensors")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path}: unreadable PEFT config ({exc})") from None
    if not isinstance(cfg, dict):
        raise FileFormatError(f"{path}: a PEFT config is a JSON object")
    t = str(cfg.get("peft_type", "LORA")).upper()
    if t not in SUPPORTED_PEFT_TYPES:
        raise FileFormatError(f"{path}: PEFT type {t} has no kohya/LyCORIS equivalent; lyco reads "
                              f"{', '.join(SUPPORTED_PEFT_TYPES)}")
    return cfg


def _peft_adapter(part: str, weights: Path, cfg: dict[str, Any]) -> ForeignAdapter:
    tensors, _ = read_file(weights)
    bad = [k for k in tensors if not k.startswith(PEFT_PREFIX)]
    if bad:
        raise FileFormatError(f"{weights}: key {bad[0]!r} is not a PEFT key (base_model.model.<module>.<param>)")
    t = str(cfg.get("peft_type", "LORA")).upper()
    ad = ForeignAdapter(part, f"PEFT {t}", config=cfg)
    for key, v in tensors.items():
        path, kpart = _split(key[len(PEFT_PREFIX):])
        if kpart == "dora_scale":  # PEFT's magnitude is per output channel: (O,) or (1, O, 1...)
            v = v.reshape(-1, *([1] * max(v.dim() - 1, 1)))
        ad.modules.setdefault(path, {})[kpart] = v
    default_alpha = cfg.get("lora_alpha" if t == "LORA" else "alpha", 8)
    for path, parts in ad.modules.items():
        r_cfg = int(_pattern(cfg.get("rank_pattern"), path, cfg.get("r", 8)))
        alpha = float(_pattern(cfg.get("alpha_pattern"), path, default_alpha))
        scale = alpha / (math.sqrt(r_cfg) if cfg.get("use_rslora") else r_cfg)
        _set_scale(parts, scale, f"{weights}: module '{path}'")
    return ad


def _set_scale(parts: dict[str, torch.Tensor], scale: float, where: str) -> None:
    """Express a PEFT/diffusers scale as kohya's alpha (alpha = scale·rank), or fold it where kohya has none."""
    low = parts.get("lora_down.weight", parts.get("hada_w1_b", parts.get("lokr_w1_b", parts.get("lokr_w2_b"))))
    if low is None:  # full-matrix LoKr: kohya loaders use scale 1
        if "lokr_w1" not in parts:
            raise FileFormatError(f"{where}: incomplete adapter parameters {sorted(parts)}")
        parts["lokr_w1"] = parts["lokr_w1"].float() * scale
        return
    if low.dim() == 0:
        raise FileFormatError(f"{where}: a low-rank factor is 0-d")
    parts["alpha"] = torch.tensor(scale * low.shape[0], dtype=torch.float32)


def read_peft(path: str | Path) -> list[ForeignAdapter]:
    """The adapters of a PEFT folder (one per model part) or of one PEFT weights file."""
    p = Path(path)
    if p.is_file():
        cfg_path = p.parent / CONFIG
        if not cfg_path.is_file():
            raise FileFormatError(f"{p}: a PEFT weights file needs its {CONFIG} beside it (it holds the scale)")
        return [_peft_adapter("model", p, _read_config(cfg_path))]
    if not p.is_dir():
        raise FileFormatError(f"{p}: no such file or folder")
    folders = [p] + sorted(c for c in p.iterdir() if c.is_dir())
    found = [_peft_adapter("model" if f == p else f.name, _weights_file(f), _read_config(f / CONFIG))
             for f in folders if (f / CONFIG).is_file()]
    if not found:
        raise FileFormatError(f"{p}: no PEFT adapter here ({CONFIG} + adapter_model.safetensors, or subfolders "
                              "with them)")
    return found


def read_diffusers(tensors: dict[str, torch.Tensor], source: str) -> list[ForeignAdapter]:
    """The adapters (one per model part) of a diffusers-format LoRA file's tensors."""
    by_part: dict[str, ForeignAdapter] = {}
    for key, v in tensors.items():
        part, _, rest = key.partition(".")
        ad = by_part.setdefault(part, ForeignAdapter(part, "diffusers LoRA"))
        path, kpart = _split(rest)
        ad.modules.setdefault(path, {})[kpart] = v
    for ad in by_part.values():
        for path, parts in ad.modules.items():
            if "alpha" not in parts:
                _set_scale(parts, 1.0, f"{source}: module '{path}'")
    return list(by_part.values())
