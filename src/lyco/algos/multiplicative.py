"""Shared base of the multiplicative algorithms ((IA)³, diag-OFT, BOFT): W'(m) = W + m·(W'₁ - W), bias untouched."""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import AdapterModule, base_params


class MultiplicativeModule(AdapterModule):
    multiplicative = True
    scaled = False
    allows_dropout = False
    allows_rank_dropout = False
    grouped_bypass = True

    def full_weight(self, W: torch.Tensor) -> torch.Tensor:
        """W'₁ (fp32) from the base weight."""
        raise NotImplementedError

    def transform_output(self, z: torch.Tensor) -> torch.Tensor:
        """W'₁ applied to x, given z = W x (no bias), along the channel axis."""
        raise NotImplementedError

    def adapted_weight(self, W: torch.Tensor, b: torch.Tensor | None, m: float,
                       mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        Wf = W.float()
        W1 = self.full_weight(Wf)
        if m != 1:
            W1 = Wf + m * (W1 - Wf)
        return W1.to(W.dtype), b

    def bypass(self, x: torch.Tensor, base: nn.Module, m: float, mask: torch.Tensor | None) -> torch.Tensor:
        W, b = base_params(base)
        z = self._base_nobias(x, base, W, b)
        z1 = self.transform_output(z)
        y = z1 if m == 1 else z + m * (z1 - z)
        return y if b is None else y + self.geom.channel_view(b.to(y.dtype))

    def delta_raw(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        # for tools that want ΔW: W'₁ - W needs W, see adapted_weight
        raise NotImplementedError(f"{self.algo} is multiplicative: use adapted_weight(W, b, m)")
