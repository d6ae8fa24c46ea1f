"""Full / native fine-tune: trains fp32 deltas D (weight shape) and D_b (bias), saved as ``diff`` / ``diff_b``."""
from __future__ import annotations

from typing import Any, Self

import torch
import torch.nn as nn

from .base import AdapterModule, base_params
from .geometry import Geometry
from .options import AlgoOptions
from .registry import register
from .support import row


class FullModule(AdapterModule):
    algo = "full"
    file_parts = frozenset({"diff", "diff_b"})
    scaled = False
    grouped_bypass = True
    support = {"full": row("✔ ✔ ✔ ✔ ! ✘ ✔ !", "diffusers has no full-diff loader",
                           PEFT="`lyco convert --to peft` converts lora, loha and lokr only")}

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "",
                 base_weight: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 initialize: bool = True, has_bias: bool | None = None) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
        self.diff = nn.Parameter(torch.zeros(geom.weight_shape))
        has_bias = geom.has_bias if has_bias is None else has_bias
        self.diff_b = nn.Parameter(torch.zeros(geom.out_features)) if has_bias else None

    @property
    def rank(self) -> int:
        return min(self.geom.out_features, self.geom.fan_in)

    def scale(self) -> float:
        return 1.0

    def delta_raw(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        d: torch.Tensor = self.diff
        if mask is not None:
            d = d * mask.reshape(-1, *([1] * (d.dim() - 1)))
        return d

    def delta_bias(self, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        if self.diff_b is None:
            return None
        return self.diff_b if mask is None else self.diff_b * mask

    def apply_raw(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.geom.op(x, self._cast(self.diff, x))
        if mask is not None:
            y = y * self.geom.channel_view(mask.to(y.dtype))
        return y

    def rebuild(self, x: torch.Tensor, base: nn.Module, m: float, mask: torch.Tensor | None) -> torch.Tensor:
        # op(x, W + c·m·D, b + c·m·D_b) with one add per tensor (and none in backward at c·m = 1): the generic
        # path scales D and adds in fp32 as separate passes over the whole weight
        W, b = base_params(base)
        if mask is not None or W.dtype != self.diff.dtype or isinstance(self.scalar, nn.Parameter):
            return super().rebuild(x, base, m, mask)
        alpha = self._t_for(x) * m
        Wp = torch.add(W, self.diff, alpha=alpha)
        bp = b if (b is None or self.diff_b is None) else torch.add(b, self.diff_b.to(b.dtype), alpha=alpha)
        return self.geom.op(x, Wp, bp)

    def bypass_cost(self) -> int:
        g = self.geom
        return g.out_features * g.in_per_group * g.k_numel

    def export(self) -> dict[str, torch.Tensor]:
        out = {"diff": self.diff.detach().float().clone()}
        if self.diff_b is not None:
            out["diff_b"] = self.diff_b.detach().float().clone()
        return out

    @classmethod
    def detect(cls, tensors: dict[str, torch.Tensor]) -> bool:
        return "diff" in tensors

    @classmethod
    def file_geometry(cls, parts: dict[str, torch.Tensor]) -> Geometry | None:
        return Geometry.of_weight_shape(tuple(parts["diff"].shape), has_bias="diff_b" in parts)

    @classmethod
    def from_file(cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str,
                  hints: dict[str, Any]) -> Self:
        cls._check_shape(name, "diff", tensors["diff"], geom.weight_shape)
        has_b = "diff_b" in tensors
        if has_b:
            cls._check_shape(name, "diff_b", tensors["diff_b"], (geom.out_features,))
        mod = cls(geom, AlgoOptions(algo=cls.algo, dim=1, alpha=None), name, initialize=False, has_bias=has_b)
        with torch.no_grad():
            mod.diff.copy_(tensors["diff"].float())
            if has_b and mod.diff_b is not None:
                mod.diff_b.copy_(tensors["diff_b"].float())
        return mod


register(FullModule, aliases=("native", "diff"))
