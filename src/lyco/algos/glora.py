"""GLoRA: W' = W + s·(W·A + B), A = a1·a2 (I_g × I_g, low rank), B = b1·b2 (O × I_g·K, low rank)."""
from __future__ import annotations

from typing import Any, Self

import torch
import torch.nn as nn

from ..errors import FileFormatError
from .base import AdapterModule, base_params
from .functional import glora as F_glora
from .functional.common import kaiming_
from .geometry import Geometry
from .options import AlgoOptions
from .registry import register
from .support import FileSummary, row


class GLoRAModule(AdapterModule):
    algo = "glora"
    file_parts = frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha", "scale"})
    support = {"glora": row("✔ ! ✔ ! ! ✘ ✔ !", "A1111 errors per GLoRA layer; InvokeAI rejects the whole file",
                            PEFT="`lyco convert --to peft` converts lora, loha and lokr only")}

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "",
                 base_weight: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 initialize: bool = True) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
        r = opts.dim
        if r < 1:
            raise self._err(f"dim must be >= 1, got {r}")
        i_g, o = geom.in_per_group, geom.out_features
        self.a1 = nn.Parameter(torch.empty(i_g, r))
        self.a2 = nn.Parameter(torch.zeros(r, i_g))
        self.b1 = nn.Parameter(torch.empty(o, r))
        self.b2 = nn.Parameter(torch.zeros(r, i_g, *geom.kernel_size))
        if initialize:
            kaiming_(self.a1, generator)
            kaiming_(self.b1, generator)
            if opts.use_scalar:
                kaiming_(self.a2, generator)
                kaiming_(self.b2, generator)

    @property
    def rank(self) -> int:
        return self.a2.shape[0]

    def mask_size(self) -> int:
        return 2 * self.rank  # independent masks for the A and B branches

    def delta_given(self, W: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW_raw = W·a1·a2 + b1·b2 for the base weight W (fp32)."""
        return F_glora.delta(W, self.a1, self.a2, self.b1, self.b2, mask)

    def adapted_weight(self, W: torch.Tensor, b: torch.Tensor | None, m: float,
                       mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        dW = self.t() * self.delta_given(W, mask)
        return (W.float() + (dW if m == 1 else m * dW)).to(W.dtype), b

    def bypass(self, x: torch.Tensor, base: nn.Module, m: float, mask: torch.Tensor | None) -> torch.Tensor:
        W, b = base_params(base)
        a1, b1 = F_glora.masked(self.a1, self.b1, mask)
        g, c = self.geom, self._cast
        branch_a = self._base_nobias(F_glora.input_branch(x, g, c(a1, x), c(self.a2, x)), base, W, b)
        branch_b = F_glora.weight_branch(x, g, c(b1, x), c(self.b2, x))
        y: torch.Tensor = base(x)
        d = (branch_a + branch_b) * self.t().to(y.dtype)
        if self.opts.dropout > 0 and self.training:
            d = torch.nn.functional.dropout(d, self.opts.dropout, training=True)
        return y + d if m == 1 else y + m * d

    def bypass_cost(self) -> int:
        return F_glora.cost(self.geom, self.rank)

    def export(self) -> dict[str, torch.Tensor]:
        c = self.scalar.detach().float()
        ones = self.geom.ones
        r = self.rank
        return self._export_common({
            "a1.weight": self.a1.detach().float().reshape(-1, r, *ones).clone(),
            "a2.weight": (self.a2.detach().float() * c).reshape(r, -1, *ones),
            "b1.weight": self.b1.detach().float().reshape(-1, r, *ones).clone(),
            "b2.weight": (self.b2.detach().float() * c).clone(),
        })

    @classmethod
    def detect(cls, tensors: dict[str, torch.Tensor]) -> bool:
        return "a1.weight" in tensors

    @classmethod
    def file_summary(cls, parts: dict[str, torch.Tensor]) -> FileSummary:
        a2 = parts.get("a2.weight")
        rank = int(a2.shape[0]) if a2 is not None and a2.dim() else None
        return FileSummary(rank, super().file_summary(parts).tags)

    @classmethod
    def from_file(cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str,
                  hints: dict[str, Any]) -> Self:
        if "bm.weight" in tensors:
            raise FileFormatError(f"module '{name}': GLoRA Tucker keys (bm.weight) are not supported (no UI applies "
                                  "them); re-export without Tucker")
        need = ["a1.weight", "a2.weight", "b1.weight", "b2.weight"]
        missing = [p for p in need if p not in tensors]
        if missing:
            raise FileFormatError(f"module '{name}': GLoRA keys incomplete, missing {', '.join(missing)}")
        a1, a2, b1, b2 = (tensors[p] for p in need)
        r = a2.shape[0]
        if not (b2.shape[0] == r and b1.shape[1] == r and a1.shape[1] == r):
            raise FileFormatError(f"module '{name}': GLoRA keys are in a legacy layout (a1 {tuple(a1.shape)}, "
                                  f"a2 {tuple(a2.shape)}, b1 {tuple(b1.shape)}, b2 {tuple(b2.shape)}); only the "
                                  "current LyCORIS layout (a2/b2 rank-first) is supported")
        g = geom
        i_g = g.in_per_group
        cls._check_shape(name, "a1.weight", a1.reshape(a1.shape[0], r), (i_g, r))
        cls._check_shape(name, "a2.weight", a2.reshape(r, -1), (r, i_g))
        cls._check_shape(name, "b1.weight", b1.reshape(b1.shape[0], r), (g.out_features, r))
        cls._check_shape(name, "b2.weight", b2, (r, i_g, *g.kernel_size))
        opts = AlgoOptions(algo=cls.algo, dim=r, alpha=cls._read_alpha(tensors, r))
        mod = cls(g, opts, name, initialize=False)
        with torch.no_grad():
            mod.a1.copy_(a1.float().reshape(i_g, r))
            mod.a2.copy_(a2.float().reshape(r, i_g))
            mod.b1.copy_(b1.float().reshape(-1, r))
            mod.b2.copy_(b2.float())
        return mod


register(GLoRAModule)
