"""DoRA (weight decomposition) math.

W'₁ = (W + ΔW) ⊙ d / (‖W + ΔW‖_axis + ε), ε = float32 eps.  Output axis: d and the norm are per output
channel (shape (O, 1...)); input axis: per input channel, summed over outputs and kernel (shape (1, I_g, 1...)).
Norms of W + t·U·V are computed from the factors without building W + ΔW.
"""
from __future__ import annotations

from typing import cast

import torch

EPS = float(torch.finfo(torch.float32).eps)


def norms(W: torch.Tensor, axis: str) -> torch.Tensor:
    """Per-channel L2 norms of W as a flat vector ((O,) or (I_g,))."""
    Wf = W.float()
    if axis == "out":
        n = Wf.reshape(Wf.shape[0], -1).norm(dim=1)
    else:
        n = Wf.transpose(0, 1).reshape(Wf.shape[1], -1).norm(dim=1)
    return cast(torch.Tensor, n)  # Tensor.norm is unannotated


def scale_shape(W_shape: tuple[int, ...], axis: str) -> tuple[int, ...]:
    """Saved ``dora_scale`` shape: (O, 1...) or (1, I_g, 1...)."""
    ones = (1,) * (len(W_shape) - 2)
    if axis == "out":
        return (W_shape[0], 1, *ones)
    return (1, W_shape[1], *ones)


def sq_norms(W: torch.Tensor, axis: str) -> torch.Tensor:
    """Per-channel ‖W‖² in fp32 as a flat vector, without a W-sized temporary (W is frozen: callers cache it)."""
    dt = torch.float32 if W.dtype in (torch.float16, torch.bfloat16) else None   # half: accumulate in fp32
    if axis == "out":
        n = torch.linalg.vector_norm(W.reshape(W.shape[0], -1), dim=1, dtype=dt)
    else:
        n = torch.linalg.vector_norm(W.reshape(W.shape[0], W.shape[1], -1), dim=(0, 2), dtype=dt)
    return cast(torch.Tensor, n.float().square_())  # Tensor.square_ is unannotated


def lowrank_norms(W: torch.Tensor, u: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float, axis: str,
                  wsq: torch.Tensor | None = None) -> torch.Tensor:
    """‖W + t·U·V‖ per channel, with U (O, R), V (R, I_g*K); everything in fp32.  ``wsq``: ‖W‖² per channel
    when the caller has it (:func:`sq_norms`)."""
    Wf = W.float()
    o = Wf.shape[0]
    Wb = Wf.reshape(o, -1)
    u = u.float()
    v = v.float()
    if wsq is None:
        wsq = sq_norms(W, axis)
    if axis == "out":
        cross = (u * (Wb @ v.T)).sum(1)
        quad = ((u @ (v @ v.T)) * u).sum(1)
    else:
        i_g = Wf.shape[1]
        r = u.shape[1]
        utw = (u.T @ Wb).reshape(r, i_g, -1)
        v3 = v.reshape(r, i_g, -1)
        cross = (v3 * utw).sum((0, 2))
        quad = (((u.T @ u) @ v).reshape(r, i_g, -1) * v3).sum((0, 2))
    return (wsq + 2 * t * cross + (t * t) * quad).clamp_min(0).sqrt()


def dense_norms(W: torch.Tensor, delta: torch.Tensor, axis: str) -> torch.Tensor:
    """‖W + ΔW‖ per channel by building the sum (fallback)."""
    return norms(W.float() + delta, axis)


def view_scale(vec: torch.Tensor, W_shape: tuple[int, ...], axis: str) -> torch.Tensor:
    """A flat per-channel vector viewed to broadcast against W."""
    return vec.reshape(scale_shape(W_shape, axis))


def decomposed_weight(W: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor, axis: str,
                      detach_norm: bool = False) -> torch.Tensor:
    """W'₁ = (W + ΔW) · d / (‖W + ΔW‖ + ε) in fp32 (``scale`` is the saved-shape dora_scale)."""
    V = W.float() + delta
    n = norms(V, axis)
    if detach_norm:
        n = n.detach()
    return V * (scale.float() / view_scale(n + EPS, tuple(W.shape), axis))
