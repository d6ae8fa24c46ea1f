"""(IA)³: a learned per-channel scale on the output (default) or input axis; W'(m) = W ⊙ (1 + m·w)."""
from __future__ import annotations

from typing import Any, Self, cast

import torch
import torch.nn as nn

from ..errors import FileFormatError
from .functional import ia3 as F_ia3
from .geometry import Geometry
from .multiplicative import MultiplicativeModule
from .options import AlgoOptions
from .registry import register
from .support import row


class IA3Module(MultiplicativeModule):
    algo = "ia3"
    file_parts = frozenset({"weight", "on_input"})
    integer_parts = frozenset({"on_input"})
    support = {"ia3": row("✘ ✔ ✘ ✔ ! ✘ ! !", "(IA)³ loads in A1111 and InvokeAI only; ComfyUI warns 'lora key not "
                          "loaded'", lycoris_lora="lycoris-lora 4.1.3 raises TypeError when it loads (IA)³ modules",
                          PEFT="`lyco convert --to peft` converts lora, loha and lokr only")}

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "",
                 base_weight: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 initialize: bool = True) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
        self.on_input = bool(opts.train_on_input)
        c = geom.in_per_group if self.on_input else geom.out_features
        shape = (1, c, *geom.ones) if geom.kind == "conv" else (c,)
        self.weight = nn.Parameter(torch.zeros(shape))
        self.register_buffer("on_input_flag", torch.tensor(int(self.on_input), dtype=torch.int64))

    @property
    def rank(self) -> int:
        return 1

    def full_weight(self, W: torch.Tensor) -> torch.Tensor:
        return F_ia3.scaled_weight(W, self.weight, self.on_input)

    def transform_output(self, z: torch.Tensor) -> torch.Tensor:
        return F_ia3.scale_output(z, self.weight, self.geom)

    def bypass(self, x: torch.Tensor, base: nn.Module, m: float, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.on_input:
            return super().bypass(x, base, m, mask)
        return cast(torch.Tensor, base(F_ia3.scale_input(x, self.weight, self.geom, m)))

    def bypass_cost(self) -> int:
        return self.geom.out_features

    def export(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.detach().float().clone(),
                "on_input": torch.tensor(int(self.on_input), dtype=torch.int64)}

    def describe(self) -> dict[str, Any]:
        return {"algo": self.algo, "train_on_input": self.on_input}

    @classmethod
    def detect(cls, tensors: dict[str, torch.Tensor]) -> bool:
        return "on_input" in tensors

    @classmethod
    def from_file(cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str,
                  hints: dict[str, Any]) -> Self:
        if "weight" not in tensors:
            raise FileFormatError(f"module '{name}': IA3 'on_input' without 'weight'")
        flag = int(tensors["on_input"].item())
        if flag not in (0, 1):
            raise FileFormatError(f"key '{name}.on_input' is {flag}; it must be 0 (output axis) or 1 (input axis)")
        on_input = bool(flag)
        opts = AlgoOptions(algo=cls.algo, dim=1, alpha=None, train_on_input=on_input)
        mod = cls(geom, opts, name, initialize=False)
        w = tensors["weight"]
        if w.numel() != mod.weight.numel():
            raise FileFormatError(f"key '{name}.weight' has {w.numel()} values; the layer's "
                                  f"{'input' if on_input else 'output'} axis has {mod.weight.numel()} channels")
        with torch.no_grad():
            mod.weight.copy_(w.float().reshape(mod.weight.shape))
        return mod


register(IA3Module, aliases=("ia³", "ia_3"))
