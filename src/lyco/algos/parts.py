"""One module's tensors in a file (its *parts*, keyed by the name after ``<module>.``): the checks every algorithm's
loader shares, and the readings of the parts that are the same for every algorithm (alpha, the DoRA magnitude).

:class:`~lyco.algos.base.AdapterModule` exposes these to the algorithms as ``check_file_tensors``, ``_check_shape``,
``_read_alpha`` and ``_dora_file_features`` (and :class:`~lyco.algos.dora.DoraModule` as ``_load_dora``); they are
pure functions of the tensors here so that the classes keep only the modules' behaviour.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import torch

from ..errors import FileFormatError
from .functional import dora as dora_f
from .geometry import Geometry


def kind(t: torch.Tensor) -> str:
    """``"float16 of shape (4, 8)"``: a tensor's dtype and shape for messages."""
    return f"{str(t.dtype).replace('torch.', '')} of shape {tuple(t.shape)}"


def check_tensors(name: str, parts: dict[str, torch.Tensor], integer_parts: Collection[str],
                  scalar_parts: Collection[str], allow_nonfinite: bool = False) -> list[str]:
    """Dtypes, finiteness and scalar parts of one module of a file: raises FileFormatError naming the key, and
    returns warnings for what is read in a tolerated way."""
    warnings: list[str] = []
    for part in sorted(parts):
        t = parts[part]
        key = f"{name}.{part}"
        if part in integer_parts:  # int64 in lyco's files; the reference writes them in the save dtype
            v = t.double().item() if t.numel() == 1 and not t.is_complex() else float("nan")
            if not (math.isfinite(v) and v == int(v)):
                raise FileFormatError(f"key '{key}' must be one integer (got {kind(t)})")
            continue
        if t.numel() == 0:
            raise FileFormatError(f"key '{key}' is empty (shape {tuple(t.shape)}); the file is corrupt or was "
                                  "written with rank 0")
        if not t.is_floating_point():
            raise FileFormatError(f"key '{key}' has dtype {str(t.dtype).replace('torch.', '')}; adapter tensors "
                                  "are floating point (the file is corrupt or not an adapter)")
        if part in scalar_parts and t.numel() != 1:
            raise FileFormatError(f"key '{key}' must hold one number but has shape {tuple(t.shape)}")
        if part in scalar_parts and t.dim() > 0:
            warnings.append(f"key '{key}' has shape {tuple(t.shape)} instead of a 0-d scalar; read as one number")
        if not allow_nonfinite and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise FileFormatError(f"key '{key}' contains {bad} NaN/Inf value(s) of {t.numel()}; the adapter is "
                                  "broken (training diverged?). Pass allow_nonfinite=True to load it anyway")
    return warnings


def check_shape(name: str, part: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    """Raises FileFormatError naming the key when ``t`` does not have the layer's ``expected`` shape."""
    if tuple(t.shape) != tuple(expected):
        raise FileFormatError(
            f"key '{name}.{part}' has shape {tuple(t.shape)} but the model's layer needs {tuple(expected)}; "
            "the file was made for a different model (or a different layer size)"
        )


def read_alpha(tensors: dict[str, torch.Tensor], rank: int) -> float:
    """The module's alpha: ``scale``·rank when the file has a ``scale`` (A1111 extension), else ``alpha`` (0 or
    missing: alpha = rank)."""
    if "scale" in tensors:  # A1111 extension: explicit scale overrides alpha/rank
        return float(tensors["scale"].float().item()) * rank
    if "alpha" in tensors:
        a = float(tensors["alpha"].float().item())
        return a if a else float(rank)
    return float(rank)


def dora_axis(geom: Geometry, tensors: dict[str, torch.Tensor], name: str, hints: dict[str, Any]) -> str:
    """The axis (``"in"`` or ``"out"``) of a module's ``dora_scale`` from its shape and the layer's; raises
    FileFormatError for a shape that fits neither.  An ambiguous square shape uses ``hints["dora_axis"]`` or the
    input axis, with a warning appended to ``hints["warnings"]``."""
    shape = tuple(tensors["dora_scale"].shape)
    o, i_g = geom.out_features, geom.in_per_group
    out_shape = dora_f.scale_shape(geom.weight_shape, "out")
    in_shape = dora_f.scale_shape(geom.weight_shape, "in")
    peft_conv_out = (1, o, *geom.ones) if geom.kind == "conv" else None
    if shape == in_shape and ((geom.kind == "conv" and o == i_g) or shape == out_shape):
        # (1, C, 1...) with C = O = I_g: LyCORIS input axis, or a diffusers-converted PEFT magnitude
        axis: str | None = hints.get("dora_axis")
        if axis is None:
            axis = "in"
            hints.setdefault("warnings", []).append(
                f"{name}: dora_scale {shape} is ambiguous (O = I_g); assumed input axis")
        return axis
    if shape == in_shape:
        return "in"
    if shape in (out_shape, (o,), peft_conv_out):
        return "out"
    raise FileFormatError(
        f"key '{name}.dora_scale' has shape {shape}; expected {out_shape} (output axis) or {in_shape} "
        "(input axis) for this layer"
    )


def dora_features(parts: dict[str, torch.Tensor], on_axis: tuple[str, str]) -> list[str]:
    """The support-matrix DoRA feature of one module (none without ``dora_scale``): ``dora-1d``, or ``on_axis``'s
    (input, output) feature name for the axis the magnitude's shape shows."""
    ds = parts.get("dora_scale")
    if ds is None:
        return []
    if ds.dim() <= 1:
        return ["dora-1d"]
    on_input = ds.shape[0] == 1 and ds.shape[1] > 1
    return [on_axis[0] if on_input else on_axis[1]]
