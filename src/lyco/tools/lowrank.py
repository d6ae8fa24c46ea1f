"""SVD helpers shared by extract, resize and merge: rank selection, (randomised) truncated SVD, Tucker."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

MODES = ("fixed", "threshold", "ratio", "quantile")


@dataclass
class Factored:
    """ΔW ≈ up @ down (conv: down keeps the kernel); Tucker adds a core ``mid``."""

    up: torch.Tensor  # (O, r)
    down: torch.Tensor  # (r, I) or (r, I, k...) or Tucker (r, I)
    mid: torch.Tensor | None  # (r, r, k...) for Tucker
    rank: int
    rel_error: float  # ‖ΔW - approx‖_F / ‖ΔW‖_F
    energy: float  # retained fraction of ‖ΔW‖_F²

    def locon_tensors(self, name: str, weight_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """kohya/LyCORIS keys for these factors (alpha = rank, i.e. scale 1)."""
        o, ones = weight_shape[0], (1,) * (len(weight_shape) - 2)
        out = {f"{name}.lora_up.weight": self.up.reshape(o, self.rank, *ones)}
        if self.mid is not None:
            out[f"{name}.lora_down.weight"] = self.down.reshape(self.rank, weight_shape[1], *ones)
            out[f"{name}.lora_mid.weight"] = self.mid
        else:
            out[f"{name}.lora_down.weight"] = self.down
        out[f"{name}.alpha"] = torch.tensor(float(self.rank))
        return out


def select_rank(S: torch.Tensor, mode: str, param: float, max_rank: int) -> int:
    """Rank from singular values (descending) by ``mode``:

    * fixed: ``param`` itself; threshold: the count of σ > param; ratio: σ > param·σ_max;
    * quantile: the smallest r whose σ_1..σ_r reach ``param`` of Σσ.
    Always in [1, max_rank].
    """
    if mode not in MODES:
        raise ConfigError(f"unknown rank mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "fixed":
        if param < 1:
            raise ConfigError(f"rank {param:g}: a fixed rank must be at least 1 (rank 0 would change nothing)")
        r = int(param)
    elif mode == "threshold":
        if param < 0:
            raise ConfigError("threshold must be >= 0")
        r = int((S > param).sum())
    elif mode == "ratio":
        if not 0 <= param <= 1:
            raise ConfigError("ratio must be in [0, 1]")
        r = int((S > S.max() * param).sum())
    else:
        if not 0 <= param <= 1:
            raise ConfigError("quantile must be in [0, 1]")
        c = torch.cumsum(S.double(), 0)
        total = c[-1] if len(c) else torch.tensor(0.0, dtype=torch.float64)
        r = int((c < param * total * (1 - 1e-6)).sum()) + 1
    return max(1, min(int(max_rank), r))


def _svd(m: torch.Tensor, rank: int | None, method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh): full SVD, or a randomised one for a fixed small rank."""
    small = min(m.shape)
    if method == "randomized" or (method == "auto" and rank is not None and rank * 8 <= small and small >= 256):
        assert rank is not None, "the randomised SVD is for a fixed rank"
        q = min(small, rank + 10)
        U, S, V = torch.svd_lowrank(m, q=q, niter=4)
        return U, S, V.T
    return torch.linalg.svd(m, full_matrices=False)


def factor(delta: torch.Tensor, mode: str = "fixed", param: float = 4, *, tucker: bool = False,
           svd: str = "auto") -> Factored:
    """Low-rank LoCon factors of ΔW (Linear (O, I) or conv (O, I_g, k...)); errors computed exactly."""
    d = delta.float()
    o = d.shape[0]
    flat = d.reshape(o, -1)
    norm2 = float(flat.pow(2).sum())
    max_rank = min(flat.shape)
    if tucker and d.dim() > 2 and any(k > 1 for k in d.shape[2:]):
        return _tucker(d, mode, param, svd, norm2)
    needs_spectrum = mode != "fixed"
    U, S, Vh = _svd(flat, None if needs_spectrum else int(param), "full" if needs_spectrum else svd)
    r = select_rank(S, mode, param, min(max_rank, len(S)))
    up = U[:, :r] * S[:r]
    down = Vh[:r]
    approx = up @ down
    err2 = float((flat - approx).pow(2).sum())
    return Factored(up.contiguous(), down.reshape(r, *d.shape[1:]).contiguous(), None, r,
                    (err2 / norm2) ** 0.5 if norm2 > 0 else 0.0, 1 - err2 / norm2 if norm2 > 0 else 1.0)


def _tucker(d: torch.Tensor, mode: str, param: float, svd: str, norm2: float) -> Factored:
    """Truncated HOSVD along the output and input axes: ΔW ≈ up · mid · down (kernel kept in mid)."""
    o, i = d.shape[:2]
    k = d.shape[2:]
    out_unf = d.reshape(o, -1)
    in_unf = d.transpose(0, 1).reshape(i, -1)
    needs = mode != "fixed"
    Uo, So, _ = _svd(out_unf, None if needs else int(param), "full" if needs else svd)
    r = select_rank(So, mode, param, min(o, i))
    Ui, _, _ = _svd(in_unf, r, "full" if needs else svd)
    up, inv = Uo[:, :r], Ui[:, :r]
    core = torch.einsum("op,oik,iq->pqk", up, d.reshape(o, i, -1), inv).reshape(r, r, *k)
    approx = torch.einsum("op,pqk,iq->oik", up, core.reshape(r, r, -1), inv).reshape(d.shape)
    err2 = float((d - approx).pow(2).sum())
    return Factored(up.contiguous(), inv.T.contiguous(), core.contiguous(), r,
                    (err2 / norm2) ** 0.5 if norm2 > 0 else 0.0, 1 - err2 / norm2 if norm2 > 0 else 1.0)


def lowrank_svd(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact SVD of up @ down (O×r times r×X) in O((O+X)·r²): returns (U, S, Vh) with r columns."""
    q1, r1 = torch.linalg.qr(up.double())
    q2, r2 = torch.linalg.qr(down.double().T)
    u, s, vh = torch.linalg.svd(r1 @ r2.T)
    return (q1 @ u).float(), s.float(), (vh @ q2.T).float()
