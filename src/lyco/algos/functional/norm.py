"""Norm-adapter math: (γ + m·Δγ, β + m·Δβ) applied with the norm layer's own normalisation, in one op."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class NormSpec:
    """What the norm layer computes, apart from its affine parameters."""

    kind: Literal["layer", "group", "rms", "custom"]
    shape: tuple[int, ...] = ()
    eps: float | None = None
    groups: int = 1
    #: the normalisation of an RMSNorm-like module (``layer._norm``), for ``kind == "custom"``
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None


def adapted(W: torch.Tensor, b: torch.Tensor | None, dw: torch.Tensor, db: torch.Tensor | None, m: float,
            mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(γ + m·Δγ, β + m·Δβ) in the dtypes of γ and β; ``mask`` scales the per-channel deltas."""
    if mask is not None:
        dw = dw * mask
        db = None if db is None else db * mask
    W2 = (W.float() + m * dw).to(W.dtype)
    if b is not None and db is not None:
        b = (b.float() + m * db).to(b.dtype)
    return W2, b


def forward(spec: NormSpec, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The norm layer's computation with another (γ, β)."""
    if spec.kind == "layer":
        return F.layer_norm(x, spec.shape, weight, bias, cast(float, spec.eps))  # LayerNorm always has an eps
    if spec.kind == "group":
        return F.group_norm(x, spec.groups, weight, bias, cast(float, spec.eps))
    if spec.kind == "rms":
        return F.rms_norm(x, spec.shape, weight, spec.eps)
    assert spec.normalize is not None
    normed = spec.normalize(x.float()).type_as(x)
    y = normed * weight.to(normed.dtype)
    return y if bias is None else y + bias.to(y.dtype)
