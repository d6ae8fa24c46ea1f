"""LoHa math: ΔW_raw = (w1_a·w1_b) ⊙ (w2_a·w2_b), computed as one rank-r² product (face-splitting identity).

Plain shapes: w?_a (O, r), w?_b (r, I_g*K).  Tucker shapes: w?_a (r, O), w?_b (r, I_g), t? (r, r, k...).
"""
from __future__ import annotations

from typing import Any, cast

import torch

from ..geometry import Geometry
from .common import scale_channels, scale_rows


def face_split(w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor,
               w2b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with (w1a@w1b) ⊙ (w2a@w2b) = U @ V exactly: U (O, r²) row-wise Kronecker, V (r², X) Khatri-Rao."""
    o, r = w1a.shape
    u = (w1a[:, :, None] * w2a[:, None, :]).reshape(o, r * r)
    v = (w1b[:, None, :] * w2b[None, :, :]).reshape(r * r, -1)
    return u, v


def tucker_factors(w1a: torch.Tensor, w1b: torch.Tensor, t1: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor,
                   t2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker LoHa as one rank-r² Tucker product: out factor (O, r²), core (r², r², k...), in factor (r², I_g)."""
    assert t2 is not None, "Tucker LoHa has both cores"
    r = t1.shape[0]
    k = t1.shape[2:]
    out = (w1a.T[:, :, None] * w2a.T[:, None, :]).reshape(w1a.shape[1], r * r)  # [o, (p,p')]
    core = (t1[:, None, :, None] * t2[None, :, None, :]).reshape(r * r, r * r, *k)  # [(p,p'),(q,q'),κ]
    inp = (w1b[:, None, :] * w2b[None, :, :]).reshape(r * r, -1)  # [(q,q'), i]
    return out, core, inp


class _HadaWeight(torch.autograd.Function):
    """(w1a@w1b) ⊙ (w2a@w2b) saving only the factors; the products are recomputed in backward."""

    @staticmethod
    def forward(ctx: Any, w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor,
                w2b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w1a, w1b, w2a, w2b)
        return (w1a @ w1b) * (w2a @ w2b)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w1a, w1b, w2a, w2b = ctx.saved_tensors
        g1 = grad * (w2a @ w2b)
        g2 = grad * (w1a @ w1b)
        return g1 @ w1b.T, w1a.T @ g1, g2 @ w2b.T, w2a.T @ g2


def delta(
    w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor, t1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None, shape: tuple[int, ...] = (), mask: torch.Tensor | None = None
) -> torch.Tensor:
    """ΔW_raw reshaped to ``shape``; ``mask`` scales output rows."""
    if t1 is None:
        if mask is not None:
            w1a = w1a * mask.to(w1a.dtype)[:, None]
        hada = _HadaWeight.apply(w1a, w1b, w2a, w2b)  # type: ignore[no-untyped-call]  # torch: unannotated
        return cast(torch.Tensor, hada).reshape(shape)
    assert t2 is not None, "Tucker LoHa has both cores"
    r = t1.shape[0]
    d1 = torch.einsum("pqk,po,qi->oik", t1.reshape(r, r, -1), w1a, w1b)
    d2 = torch.einsum("pqk,po,qi->oik", t2.reshape(r, r, -1), w2a, w2b)
    return scale_rows((d1 * d2).reshape(shape), mask)


def lowrank(w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor, t1: torch.Tensor | None = None,
            t2: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with ΔW_raw = U @ V (V flattened over I_g*K)."""
    if t1 is None:
        u, v = face_split(w1a, w1b, w2a, w2b)
    else:
        out, core, inp = tucker_factors(w1a, w1b, t1, w2a, w2b, t2)
        rr = core.shape[0]
        v = torch.einsum("pqk,qi->pik", core.reshape(rr, rr, -1), inp).reshape(rr, -1)
        u = out
    return scale_rows(u, mask), v


#: (w1a, w1b, w2a, w2b, t1, t2); the Tucker cores t1, t2 are None without Tucker
Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def apply(x: torch.Tensor, geom: Geometry,
          factors: Factors,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW_raw applied to x: x -> V (r² channels, layer geometry) -> U (1x1).  ``factors`` = (w1a, w1b, w2a, w2b, t1,
    t2), the Tucker cores None without Tucker; ``mask`` scales output channels."""
    w1a, w1b, w2a, w2b, t1, t2 = factors
    if t1 is None:
        u, v = face_split(w1a, w1b, w2a, w2b)
        if geom.kind == "linear":
            y = torch.nn.functional.linear(torch.nn.functional.linear(x, v), u)
        else:
            h = geom.spatial_conv(x, v.reshape(v.shape[0], geom.in_per_group, *geom.kernel_size))
            y = geom.pointwise(h, u)
    else:
        out, core, inp = tucker_factors(w1a, w1b, t1, w2a, w2b, t2)
        h = geom.pointwise(x, inp)
        h = geom.core_conv(h, core)
        y = geom.pointwise(h, out)
    return scale_channels(y, mask, geom.channel_dim)


def cost(geom: Geometry, r: int, tucker: bool) -> int:
    rr = r * r
    if tucker:
        return rr * geom.in_per_group + rr * rr * geom.k_numel + rr * geom.out_features
    return rr * (geom.in_per_group * geom.k_numel + geom.out_features)
