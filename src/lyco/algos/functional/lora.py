"""LoRA / LoCon math.

Shapes (as saved): down (r, I) / (r, I_g, k...) [Tucker: (r, I_g, 1...)], mid (r, r, k...), up (O, r) / (O, r, 1...).
Internally lyco keeps ``down`` with its kernel, ``mid`` as (r, r, k...) and ``up`` as (O, r).
"""
from __future__ import annotations

import torch

from ..geometry import Geometry
from .common import scale_channels


def delta(
    up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None, shape: tuple[int, ...],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """ΔW_raw = up · diag(mask) · (mid ∘) down, reshaped to the layer's weight shape."""
    r = down.shape[0]
    if mask is not None:
        up = up * mask.to(up.dtype)
    if mid is None:
        return (up @ down.reshape(r, -1)).reshape(shape)
    # Tucker: ΔW[o, i, κ] = Σ_{p,q} up[o,p] mid[p,q,κ] down[q,i]
    k = mid.shape[2:]
    core = torch.einsum("pqk,qi->pik", mid.reshape(r, r, -1), down.reshape(r, -1))  # (r, I_g, K)
    return (up @ core.reshape(r, -1)).reshape(shape[0], shape[1], *k)


def lowrank(
    up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with ΔW_raw = U @ V, U (O, r), V (r, I_g*K)."""
    r = down.shape[0]
    if mask is not None:
        up = up * mask.to(up.dtype)
    if mid is None:
        return up, down.reshape(r, -1)
    core = torch.einsum("pqk,qi->pik", mid.reshape(r, r, -1), down.reshape(r, -1))
    return up, core.reshape(r, -1)


def apply(
    x: torch.Tensor, geom: Geometry, up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """ΔW_raw applied to x with the layer's geometry, never materialising ΔW."""
    if geom.kind == "linear":
        h = torch.nn.functional.linear(x, down)
        h = scale_channels(h, mask, -1)
        return torch.nn.functional.linear(h, up)
    g = geom.groups
    if mid is not None:
        h = geom.pointwise(x, down.reshape(down.shape[0], -1))
        h = geom.core_conv(h, mid)
    elif g == 1:
        h = geom.spatial_conv(x, down)
    else:
        # grouped conv: the down kernel tiled once per group, then a grouped 1x1 up
        h = geom.spatial_conv(x, down.repeat(g, *([1] * (down.dim() - 1))), groups=g)
        if mask is not None:
            mask = mask.repeat(g)
    h = scale_channels(h, mask, 1)
    return geom.pointwise(h, up, groups=g if mid is None else 1)


def cost(geom: Geometry, r: int, tucker: bool) -> int:
    """Per-token multiply-accumulates of :func:`apply`."""
    if geom.kind == "conv" and tucker:
        return r * geom.in_per_group + r * r * geom.k_numel + r * geom.out_features
    return r * (geom.groups * geom.in_per_group * geom.k_numel + geom.out_features)
