"""(IA)³: a learned per-channel scale on the output (default) or input axis; W'(m) = W ⊙ (1 + m·w)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import FileFormatError
from .geometry import Geometry
from .multiplicative import MultiplicativeModule
from .options import AlgoOptions
from .registry import register


class IA3Module(MultiplicativeModule):
    algo = "ia3"
    file_parts = frozenset({"weight", "on_input"})

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "", base_weight=None, generator=None,
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

    def _scale_vec(self, m: float = 1.0) -> torch.Tensor:
        return 1 + m * self.weight.reshape(-1)

    def full_weight(self, W):
        s = self._scale_vec().float()
        if self.on_input:
            return W * s.reshape(1, -1, *([1] * (W.dim() - 2)))
        return W * s.reshape(-1, *([1] * (W.dim() - 1)))

    def transform_output(self, z):
        return z * self.geom.channel_view(self._scale_vec().to(z.dtype))

    def bypass(self, x, base, m, mask):
        if not self.on_input:
            return super().bypass(x, base, m, mask)
        s = self._scale_vec(m)
        if self.geom.groups > 1:
            s = s.repeat(self.geom.groups)
        return base(x * self.geom.channel_view(s.to(x.dtype)))

    def bypass_cost(self) -> int:
        return self.geom.out_features

    def export(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.detach().float().clone(),
                "on_input": torch.tensor(int(self.on_input), dtype=torch.int64)}

    def describe(self) -> dict[str, Any]:
        return {"algo": self.algo, "train_on_input": self.on_input}

    @classmethod
    def detect(cls, tensors) -> bool:
        return "on_input" in tensors

    @classmethod
    def from_file(cls, geom, tensors, name, hints):
        if "weight" not in tensors:
            raise FileFormatError(f"module '{name}': IA3 'on_input' without 'weight'")
        on_input = bool(int(tensors["on_input"].item()))
        opts = AlgoOptions(algo=cls.algo, dim=1, alpha=None, train_on_input=on_input)
        mod = cls(geom, opts, name, initialize=False)
        w = tensors["weight"]
        if w.numel() != mod.weight.numel():
            raise FileFormatError(f"key '{name}.weight' has {w.numel()} values; the layer's "
                                  f"{'input' if on_input else 'output'} axis has {mod.weight.numel()} channels")
        with torch.no_grad():
            mod.weight.copy_(w.float().reshape(mod.weight.shape))
        return mod


register(IA3Module, aliases=("ia³", "ia_3"), detect_order=10)
