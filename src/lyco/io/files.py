"""safetensors reading/writing with clear errors, atomic writes and the sd-scripts/A1111 hashes."""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import FileFormatError
from .atomic import write_atomic

_PICKLE_EXT = {".pt", ".pth", ".ckpt", ".bin"}


def _check_header(path: Path, raw: bytes) -> dict[str, Any]:
    size = len(raw)
    if size < 8:
        raise FileFormatError(f"{path}: not a safetensors file ({size} bytes; the file is empty or truncated)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > size - 8:
        raise FileFormatError(f"{path}: truncated or corrupt safetensors file (header says {n} bytes, the file "
                              f"has {size - 8} after the length field); re-download or re-save it")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path}: corrupt safetensors header ({exc}); re-download or re-save the file") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_len = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise FileFormatError(f"{path}: corrupt safetensors header entry for key '{key}'") from None
        if end > data_len or start > end:
            raise FileFormatError(f"{path}: truncated safetensors file: key '{key}' needs bytes {start}..{end} of the "
                                  f"data section, which has only {data_len}; re-download or re-save the file")
    return header


def read_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of an adapter file (.safetensors; .pt/.ckpt with weights_only loading)."""
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"{p}: no such file")
    if p.suffix.lower() in _PICKLE_EXT:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised as a lyco error naming the file
            raise FileFormatError(f"{p}: cannot read as a weights-only torch file ({exc})") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise FileFormatError(f"{p}: expected a dict of tensors")
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, {}
    raw = p.read_bytes()
    header = _check_header(p, raw)
    try:
        tensors = st_load(raw)
    except Exception as exc:  # noqa: BLE001
        raise FileFormatError(f"{p}: cannot read safetensors file ({exc})") from None
    meta = header.get("__metadata__") or {}
    return tensors, {str(k): str(v) for k, v in meta.items()}


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FileFormatError(f"{p}: not a safetensors file (empty or truncated)")
        (n,) = struct.unpack("<Q", head)
        blob = f.read(n)
    if len(blob) < n:
        raise FileFormatError(f"{p}: truncated safetensors header")
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{p}: corrupt safetensors header ({exc})") from None
    return dict(header.get("__metadata__") or {})


def group_by_module(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"<module>.<part>": t}`` -> ``{module: {part: t}}`` (the module is the text before the first dot)."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, t in tensors.items():
        name, _, part = k.partition(".")
        groups.setdefault(name, {})[part] = t
    return groups


def model_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts and A1111 compute them.

    Both are taken on a serialisation carrying only the ``ss_*`` metadata: the model hash is the sha256 of the
    data section (independent of metadata), the legacy hash the first 8 hex digits of the sha256 of bytes
    0x100000..0x110000.
    """
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    blob = st_save(tensors, ss_only or None)
    (n,) = struct.unpack("<Q", blob[:8])
    model_hash = hashlib.sha256(blob[8 + n:]).hexdigest()
    legacy = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy


def data_section_sha256(path: str | os.PathLike[str]) -> str:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + n:]).hexdigest()


def write_file(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write atomically (:mod:`lyco.io.atomic`).  Refuses NaN/Inf and non-string metadata."""
    p = Path(path)
    if p.suffix.lower() in _PICKLE_EXT:
        raise FileFormatError(f"{p}: lyco writes .safetensors only (pickle formats are unsafe to share)")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise FileFormatError(f"{p}: metadata values must be strings; key {k!r} has {type(v).__name__}")
    clean: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise FileFormatError(f"{p}: refusing to write key '{k}': it contains NaN or Inf "
                                  "(check the learning rate, or save in a wider dtype)")
        clean[k] = t.detach().to("cpu").contiguous()
    blob = st_save(clean, metadata or None)
    return write_atomic(p, blob)
