"""Orthogonal finetuning math: Cayley rotations, block-diagonal (diag-OFT) and butterfly (BOFT) application.

Everything is computed in fp32.  ``blocks`` are the raw parameters A; Q = A - Aᵀ is skew-symmetric and
R = (I + Q)(I - Q)⁻¹ is orthogonal (R = I when A = 0).
"""
from __future__ import annotations

import math

import torch


def cayley(blocks: torch.Tensor, constraint: float = 0.0) -> torch.Tensor:
    """R for every block (any leading dims).  COFT: if constraint τ > 0 and ‖Q‖_F > τ, Q ← Q·τ/‖Q‖_F."""
    q = blocks.float()
    q = q - q.transpose(-1, -2)
    if constraint > 0:
        norm = q.norm() + 1e-8
        q = torch.where(norm > constraint, q * (constraint / norm), q)
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype)
    p = eye + q
    if q.device.type != "cpu":
        solved: torch.Tensor = torch.linalg.solve(eye - q, p)
        return solved
    # (I - Q)ᵀ = I + Q, so (I - Q)⁻¹ = S⁻¹(I + Q) with S = I - Q² symmetric positive definite, eigenvalues in
    # [1, 1 + ‖Q‖²].  On CPUs, batched LAPACK calls on many tiny blocks are pathologically slow when the cores are
    # busy; Newton–Schulz on S converges quadratically to the exact inverse using only batched matmuls.
    # in float64: κ(S) = κ(I - Q)², and the blocks are tiny
    p64, q64 = p.double(), q.double()
    eye64 = eye.double()
    return (p64 @ _spd_inverse(eye64 - q64 @ q64, q64) @ p64).to(q.dtype)


def _spd_inverse(S: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """S⁻¹ for S = I - Q² (Newton–Schulz from X₀ = 2/(1 + λ_max)·I, iterated to fp32 rounding)."""
    lam_max = 1.0 + q.detach().pow(2).sum((-1, -2), keepdim=True)  # ‖Q‖₂² ≤ ‖Q‖_F² per block
    rho = float(((lam_max - 1) / (lam_max + 1)).max())
    steps = 0 if rho <= 0 else max(1, math.ceil(math.log2(math.log(1e-9) / math.log(rho)))) if rho < 1 else 60
    eye = torch.eye(S.shape[-1], device=S.device, dtype=S.dtype)
    X = (2.0 / (1.0 + lam_max)) * eye
    for _ in range(min(steps, 60)):
        X = X @ (2 * eye - S @ X)
    return X


def rotate_rows_blockdiag(W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """diag-OFT merge: output rows of block j become R_jᵀ · W_blk (W is (O, ...), R is (n, bs, bs))."""
    n, bs, _ = R.shape
    Wb = W.reshape(n, bs, -1)
    return torch.einsum("jpq,jpx->jqx", R, Wb).reshape(W.shape)


def rotate_channels_blockdiag(z: torch.Tensor, R: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """diag-OFT bypass on activations: z'[j, q] = Σ_p R_j[p, q] z[j, p] along the channel axis (one bmm)."""
    n, bs, _ = R.shape
    if channel_dim == -1:
        zb = z.reshape(-1, n, bs).transpose(0, 1)  # (n, M, bs)
        return torch.bmm(zb, R).transpose(0, 1).reshape(z.shape)
    b = z.shape[0]
    zb = z.reshape(b, n, bs, -1).permute(1, 0, 3, 2).reshape(n, -1, bs)  # (n, B·S, bs)
    out = torch.bmm(zb, R).reshape(n, b, -1, bs).permute(1, 0, 3, 2)
    return out.reshape(z.shape)


def butterfly_rows(W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """BOFT: apply stages S_0 ... S_{M-1} to the rows (dim 0) of W.  R is (M, n, b, b)."""
    m_stages, n, b, _ = R.shape
    rest = W.shape[1:]
    v = W.reshape(W.shape[0], -1)
    for i in range(m_stages):
        k = (2 ** i) * b // 2
        # π_i: channel g·2k + h·k + t -> position g·2k + 2t + h
        v = v.reshape(-1, 2, k, v.shape[-1]).transpose(1, 2).reshape(n, b, v.shape[-1])
        v = torch.einsum("jpq,jqx->jpx", R[i], v)
        v = v.reshape(-1, k, 2, v.shape[-1]).transpose(1, 2).reshape(-1, v.shape[-1])
    return v.reshape(W.shape[0], *rest)


def butterfly_channels(z: torch.Tensor, R: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """BOFT bypass: the same stages along the channel axis of an activation (any batch shape)."""
    if channel_dim == -1:
        lead = z.shape[:-1]
        out = butterfly_rows(z.reshape(-1, z.shape[-1]).T, R).T
        return out.reshape(*lead, z.shape[-1])
    moved = z.transpose(0, 1)  # (C, B, ...)
    shp = moved.shape
    out = butterfly_rows(moved.reshape(shp[0], -1), R)
    return out.reshape(shp).transpose(0, 1)
