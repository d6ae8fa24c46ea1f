"""LoKr math: ΔW_raw = W1 ⊗ W2 without materialising the Kronecker product on the training path.

O = a·b, I_g = c·d.  W1 (a, c) = w1 or w1_a@w1_b.  W2 (b, d, k...) = w2, or (w2_a@w2_b).view(b, d, k...),
or the Tucker form W2[i,j,κ] = Σ t2[p,q,κ] w2_a[p,i] w2_b[q,j].
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ..geometry import Geometry
from .common import scale_channels, scale_rows

Factor = torch.Tensor | None


class W2Parts(NamedTuple):
    """W2 in one of its layouts: full ``w2``; low-rank ``w2a @ w2b``; Tucker ``w2a``, ``t2``, ``w2b`` (conv only).
    The parts a layout does not have are None."""
    w2: Factor = None
    w2a: Factor = None
    w2b: Factor = None
    t2: Factor = None


def make_w1(w1: Factor = None, w1a: Factor = None, w1b: Factor = None) -> torch.Tensor:
    if w1 is not None:
        return w1
    assert w1a is not None and w1b is not None, "W1 is full or low-rank"
    return w1a @ w1b


def make_w2(geom: Geometry, b: int, d: int, w2: Factor = None, w2a: Factor = None, w2b: Factor = None,
            t2: Factor = None) -> torch.Tensor:
    """W2 as (b, d, k...) (conv) or (b, d) (linear)."""
    k = geom.kernel_size
    if w2 is not None:
        return w2
    assert w2a is not None and w2b is not None, "W2 is full, low-rank or Tucker"
    if t2 is not None:
        r = t2.shape[0]
        return torch.einsum("pqk,pi,qj->ijk", t2.reshape(r, r, -1), w2a, w2b).reshape(b, d, *k)
    return (w2a @ w2b).reshape(b, d, *k)


class _KronApply(torch.autograd.Function):
    """Y = W1·X·W2ᵀ per row (X: (M, c, d)), saving only X and the factors: the (M, c, b) or (M, a, d)
    intermediate is recomputed in backward, so training memory matches the frozen layer's."""

    @staticmethod
    def forward(ctx: Any, X: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, order_a: bool) -> torch.Tensor:
        ctx.save_for_backward(X, w1, w2)
        ctx.order_a = order_a
        if order_a:
            return torch.matmul(w1, torch.matmul(X, w2.T))
        return torch.matmul(torch.matmul(w1, X), w2.T)

    @staticmethod
    def backward(ctx: Any, gY: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        X, w1, w2 = ctx.saved_tensors
        need_x, need_w1, need_w2 = ctx.needs_input_grad[:3]
        gX = gw1 = gw2 = None
        if ctx.order_a:
            U = torch.matmul(w1.T, gY)  # (M, c, b)
            if need_x:
                gX = torch.matmul(U, w2)
            if need_w2:
                gw2 = U.reshape(-1, U.shape[-1]).T @ X.reshape(-1, X.shape[-1])
            if need_w1:
                T = torch.matmul(X, w2.T)  # recomputed
                gw1 = gY.transpose(0, 1).reshape(gY.shape[1], -1) @ T.transpose(0, 1).reshape(T.shape[1], -1).T
        else:
            gV = torch.matmul(gY, w2)  # (M, a, d)
            if need_x:
                gX = torch.matmul(w1.T, gV)
            if need_w1:
                gw1 = gV.transpose(0, 1).reshape(gV.shape[1], -1) @ X.transpose(0, 1).reshape(X.shape[1], -1).T
            if need_w2:
                V = torch.matmul(w1, X)  # recomputed
                gw2 = gY.reshape(-1, gY.shape[-1]).T @ V.reshape(-1, V.shape[-1])
        return gX, gw1, gw2, None


def delta(w1: torch.Tensor, w2: torch.Tensor, shape: tuple[int, ...], mask: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW_raw = W1 ⊗ W2 (W1 broadcast over the kernel for convs); ``mask`` scales output rows."""
    if w2.dim() > 2:
        w1 = w1.reshape(*w1.shape, *([1] * (w2.dim() - 2)))
    return scale_rows(torch.kron(w1, w2).reshape(shape), mask)


def apply(x: torch.Tensor, geom: Geometry, dims: tuple[int, int, int, int], w1: torch.Tensor, parts: W2Parts,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW_raw applied to x via vec(W1·X·W2ᵀ) (linear) or a per-slice conv (conv); ``dims`` = (a, b, c, d), W1 is
    (a, c) and W2 (b, d, k...).  groups must be 1."""
    a, b, c, d = dims
    w2, w2a, w2b = parts.w2, parts.w2a, parts.w2b
    if geom.kind == "linear":
        lead = x.shape[:-1]
        X = x.reshape(-1, c, d)
        if w2 is None:
            assert w2a is not None and w2b is not None, "W2 is full or low-rank"
            w2 = w2a @ w2b
        # the cheaper association: (X W2ᵀ) then W1 costs I·b + O·c, W1 X then W2ᵀ costs a·I + O·d
        i_g, o = c * d, a * b
        order_a = i_g * b + o * c <= a * i_g + o * d
        y: torch.Tensor = _KronApply.apply(X, w1, w2, order_a)  # type: ignore[no-untyped-call]  # torch: unannotated
        return scale_channels(y.reshape(*lead, a * b), mask, -1)
    h, out_spatial = conv_slices(x, geom, dims, parts)
    y = torch.matmul(w1, h)  # (n, a, b*S')
    return scale_channels(y.reshape(x.shape[0], a * b, *out_spatial), mask, 1)


def conv_slices(x: torch.Tensor, geom: Geometry, dims: tuple[int, int, int, int],
                parts: W2Parts) -> tuple[torch.Tensor, torch.Size]:
    """W2 applied to each of the c input slices of a conv input: (n, c, b·S') and the output spatial size."""
    _, _, c, d = dims
    w2, w2a, w2b, t2 = parts
    n = x.shape[0]
    xs = x.reshape(n * c, d, *x.shape[2:])
    if w2 is not None:
        h = geom.spatial_conv(xs, w2)
        return h.reshape(n, c, -1), h.shape[2:]
    assert w2a is not None and w2b is not None, "W2 is full, low-rank or Tucker"
    if t2 is not None:
        h = geom.pointwise(xs, w2b)  # (r, d)
        h = geom.core_conv(h, t2)
        h = geom.pointwise(h, w2a.T)  # (b, r)
    else:
        r = w2b.shape[0]
        h = geom.spatial_conv(xs, w2b.reshape(r, d, *geom.kernel_size))
        h = geom.pointwise(h, w2a)
    return h.reshape(n, c, -1), h.shape[2:]


def row_norms_sq_terms(W: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, a: int, b: int, c: int,
                       d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(⟨W̄_o, ΔW_o⟩, ‖ΔW_o‖²) per output row without materialising ΔW (or copying W)."""
    w2f = w2.reshape(b, -1)                                                        # (b, d·K)
    # s[i1, i2, :] = Σ_j1 W1[i1, j1]·W[i1, i2, j1, :]: one (1 × c)·(c × d·K) product per output row, on W's memory
    s = torch.matmul(w1.view(a, 1, 1, c), W.reshape(a, b, c, -1)).view(a, b, -1)
    cross = (s * w2f).sum(-1).reshape(-1)
    sq = (w1.pow(2).sum(1)[:, None] * w2f.pow(2).sum(1)[None, :]).reshape(-1)
    return cross, sq


def col_norms_sq_terms(W: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, a: int, b: int, c: int,
                       d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(⟨W[:, i], ΔW[:, i]⟩, ‖ΔW[:, i]‖²) per input channel (summed over outputs and kernel)."""
    w2f = w2.reshape(b, d, -1)
    k = w2f.shape[-1]
    # s[i2, j1, :] = Σ_i1 W1[i1, j1]·W[i1, i2, j1, :]: batch (i2, j1) is one stride of W, so no copy of W
    Wv = W.reshape(a, b, c, d * k).permute(1, 2, 0, 3)                           # (b, c, a, d·K), a view
    s = torch.matmul(w1.t().reshape(1, c, 1, a), Wv).view(b, c, d, k)
    cross = (s * w2f.view(b, 1, d, k)).sum((0, 3)).reshape(-1)
    sq = (w1.pow(2).sum(0)[:, None] * w2f.pow(2).sum((0, 2))[None, :]).reshape(-1)
    return cross, sq


def cost(geom: Geometry, a: int, b: int, c: int, d: int, r: int, w2_form: str) -> int:
    """Per-token MACs of :func:`apply` (w2_form: 'full' | 'lowrank' | 'tucker')."""
    k = geom.k_numel
    i_g, o = geom.in_per_group, geom.out_features
    if w2_form == "full":
        if geom.kind == "linear":
            return min(i_g * b + o * c, a * i_g + o * d)
        return b * i_g * k + o * c
    if w2_form == "tucker":
        return c * (d * r + r * r * k + r * b) + o * c
    return c * (r * d * k + b * r) + o * c
