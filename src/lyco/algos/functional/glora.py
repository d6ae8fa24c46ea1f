"""GLoRA math: ΔW_raw = W·A + B with A = a1·a2 (I_g × I_g) and B = b1·b2 (O × I_g·K), both low rank.

Shapes (internal): a1 (I_g, r), a2 (r, I_g), b1 (O, r), b2 (r, I_g, k...).  The rank-dropout mask has 2r entries:
the first r scale a1's columns, the last r b1's.
"""
from __future__ import annotations

import torch

from ..geometry import Geometry


def masked(a1: torch.Tensor, b1: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if mask is None:
        return a1, b1
    r = a1.shape[1]
    return a1 * mask[:r].to(a1.dtype), b1 * mask[r:].to(b1.dtype)


def delta(W: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW_raw = W·a1·a2 + b1·b2 for the base weight W (fp32)."""
    a1, b1 = masked(a1, b1, mask)
    A = a1 @ a2  # (I_g, I_g)
    WA = torch.einsum("oi...,ij->oj...", W.float(), A)
    B = (b1 @ b2.reshape(b2.shape[0], -1)).reshape(W.shape)
    return WA + B


def input_branch(x: torch.Tensor, geom: Geometry, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """(a1·a2) applied to the input channels of x (the layer's weight is applied to the result afterwards)."""
    return geom.pointwise(geom.pointwise(x, a2), a1)


def weight_branch(x: torch.Tensor, geom: Geometry, b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """B·x = b1·(b2 * x) with the layer's geometry."""
    if geom.kind == "linear":
        return torch.nn.functional.linear(torch.nn.functional.linear(x, b2), b1)
    return geom.pointwise(geom.spatial_conv(x, b2), b1)


def cost(geom: Geometry, r: int) -> int:
    """Per-token MACs of the bypass (both branches plus one pass of the layer's weight)."""
    i_g, o, k = geom.in_per_group, geom.out_features, geom.k_numel
    return 2 * r * i_g + o * i_g * k + r * (i_g * k + o)
