"""Reading model checkpoint files (``.safetensors``, and ``.ckpt``/``.pt``/``.pth``/``.bin`` without unpickling code).

:func:`read_checkpoint` gives the tensors, the safetensors metadata and the other top-level entries (such as
``global_step``); :func:`checkpoint_shapes` gives key -> shape, reading only the header of a ``.safetensors`` file.
Both raise :class:`~lyco.errors.FileFormatError` naming the file.  Used by :mod:`lyco.sd` (family detection and
single-file loading); adapter files have their own reader in :mod:`lyco.io.files`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import FileFormatError

#: extensions read with ``torch.load(weights_only=True)``
PICKLE_EXTENSIONS = frozenset({".ckpt", ".pt", ".pth", ".bin"})


def shape_of(value: Any) -> tuple[int, ...] | None:
    """The shape of a tensor, a safetensors slice or anything with ``.shape`` (None when it has none)."""
    shape = getattr(value, "shape", None)
    if shape is None and hasattr(value, "get_shape"):
        shape = value.get_shape()
    return tuple(int(s) for s in shape) if shape is not None else None


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"{p}: no such file")
    return p


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
    """(tensors, safetensors metadata, other top-level entries such as ``global_step``) of a checkpoint file.

    ``.safetensors`` is read with safetensors; ``.ckpt``/``.pt``/``.pth``/``.bin`` only with
    ``torch.load(weights_only=True)`` (no arbitrary code).  A nested ``state_dict`` is unwrapped.
    """
    p = _existing(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(p)
    if suffix in PICKLE_EXTENSIONS:
        return _read_pickle(p)
    raise FileFormatError(f"{p}: unknown checkpoint extension {p.suffix!r}; expected .safetensors, .ckpt or .pt")


def checkpoint_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...] | None]:
    """Key -> shape of a checkpoint file, reading only the header of a ``.safetensors`` file."""
    p = _existing(path)
    if p.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(p), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - re-raised as a lyco error naming the file
            raise FileFormatError(f"{p}: cannot read safetensors header ({exc}); re-download or re-save it") from None
    tensors, _, _ = read_checkpoint(p)  # pickle formats: a full (weights-only) load is the only way
    return {k: shape_of(v) for k, v in tensors.items()}


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - re-raised as a lyco error naming the file
        raise FileFormatError(f"{p}: cannot read as safetensors ({exc}); the file may be truncated or corrupt, "
                              "re-download or re-save it") from None
    return tensors, metadata, {}


def _read_pickle(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise FileFormatError(
            f"{p}: cannot load with torch.load(weights_only=True) ({exc}).  lyco never unpickles arbitrary code: "
            "if you trust the file, convert it to .safetensors with a tool you trust and load that") from None
    extras: dict[str, Any] = {}
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        extras.update({k: v for k, v in obj.items() if k != "state_dict" and not isinstance(v, dict)})
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise FileFormatError(f"{p}: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    extras.update({k: v for k, v in obj.items() if not isinstance(v, torch.Tensor)})
    return tensors, {}, extras
