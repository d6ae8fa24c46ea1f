"""Shared helpers: the LoKr/OFT factorisation rules, initialisers, rank-dropout masks."""
from __future__ import annotations

import math

import torch


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into (m, n) with m <= n and m*n == dimension (LyCORIS's exact rule).

    * ``factor > 0`` dividing ``dimension``: (min(f, D/f), max(f, D/f)).
    * otherwise (``factor < 0`` means no limit): grow m through the divisors of D while m + D/m does not
      increase and m stays <= factor.
    """
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    if factor < 0:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (m, n) if m <= n else (n, m)


def power2factorization(dimension: int, factor: int = -1) -> tuple[int, int] | None:
    """BOFT block split: b = the largest even divisor of D with b <= factor (-1: no limit) and D/b a power of 2.

    Returns (b, n) or None when impossible.
    """
    best = None
    limit = dimension if factor <= 0 else factor
    for b in range(2, min(limit, dimension) + 1, 2):
        if dimension % b:
            continue
        n = dimension // b
        if n & (n - 1) == 0:
            best = (b, n)
    return best


def kaiming_(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = t.size(1)*prod(t.shape[2:])."""
    with torch.no_grad():
        fan_in = t.size(1) * math.prod(t.shape[2:]) if t.dim() > 1 else t.numel()
        bound = 1.0 / math.sqrt(max(fan_in, 1))
        return t.uniform_(-bound, bound, generator=generator)


def normal_(t: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    with torch.no_grad():
        return t.normal_(0.0, std, generator=generator)


def orthogonal_(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Orthonormal rows (for t of shape (r, n), r <= n), scaled like the kaiming bound."""
    with torch.no_grad():
        flat = t.reshape(t.size(0), -1)
        g = torch.randn(flat.shape[1], flat.shape[0], generator=generator, dtype=torch.float32)
        q, _ = torch.linalg.qr(g)
        flat.copy_(q.T[: flat.shape[0]] / math.sqrt(max(flat.shape[0], 1)))
        return t


def rank_dropout_mask(
    size: int, p: float, rescale: bool, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One keep-mask M ~ Bernoulli(1-p) of length ``size`` (float32), optionally divided by mean(M)."""
    keep = (torch.rand(size, device=device, generator=generator) >= p).to(torch.float32)
    if rescale:
        mean = keep.mean()
        if mean > 0:
            keep = keep / mean
    return keep


def scale_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Multiply dim 0 of t by mask (broadcast over the remaining dims)."""
    if mask is None:
        return t
    return t * mask.reshape(-1, *([1] * (t.dim() - 1))).to(t.dtype)


def scale_channels(y: torch.Tensor, mask: torch.Tensor | None, channel_dim: int) -> torch.Tensor:
    """Multiply the channel axis of an activation by mask."""
    if mask is None:
        return y
    m = mask.to(y.dtype)
    if channel_dim == -1:
        return y * m
    return y * m.reshape(-1, *([1] * (y.dim() - 2)))
