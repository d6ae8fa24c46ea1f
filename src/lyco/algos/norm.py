"""Norm adapters (``train_norm``): Δγ, Δβ for LayerNorm, GroupNorm and RMSNorm-like layers, applied in one op."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self, cast

import torch
import torch.nn as nn

from ..errors import FileFormatError
from .base import AdapterModule, base_params
from .functional import norm as F_norm
from .functional.common import rank_dropout_mask
from .geometry import Geometry
from .options import AlgoOptions
from .registry import register
from .support import row


def norm_spec(layer: nn.Module) -> F_norm.NormSpec:
    """What a norm layer computes apart from its affine parameters."""
    if isinstance(layer, nn.LayerNorm):
        return F_norm.NormSpec("layer", tuple(layer.normalized_shape), layer.eps)
    if isinstance(layer, nn.GroupNorm):
        return F_norm.NormSpec("group", eps=layer.eps, groups=layer.num_groups)
    if isinstance(layer, getattr(nn, "RMSNorm", ())):  # torch >= 2.4
        rms: Any = layer
        return F_norm.NormSpec("rms", tuple(rms.normalized_shape), rms.eps)
    return F_norm.NormSpec("custom", normalize=cast(Callable[[torch.Tensor], torch.Tensor], layer._norm))


def _raw(base: nn.Module) -> nn.Module:
    fn = getattr(base, "raw_layer", None)
    return fn() if callable(fn) else base


class NormModule(AdapterModule):
    algo = "norm"
    file_parts = frozenset({"w_norm", "b_norm"})
    layer_kinds = frozenset({"norm"})
    scaled = False
    allows_dropout = False
    support = {
        "norm": row("✔ ✔ ✔ ✔ ! ✘ ✔ !", "diffusers has no norm adapters",
                    PEFT="`lyco convert --to peft` converts lora, loha and lokr only"),
        "norm-te": row("✘ ✔ ✔ ✔ ! ✘ ✔ !", "ComfyUI has no kohya names for text-encoder norms; diffusers has no norm "
                       "adapters", PEFT="`lyco convert --to peft` converts lora, loha and lokr only"),
    }

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "",
                 base_weight: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 initialize: bool = True, has_bias: bool | None = None) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
        c = geom.out_features
        self.w_norm = nn.Parameter(torch.zeros(c))
        has_bias = geom.has_bias if has_bias is None else has_bias
        self.b_norm = nn.Parameter(torch.zeros(c)) if has_bias else None

    @property
    def rank(self) -> int:
        return self.geom.out_features

    def draw_mask(self, device: torch.device) -> torch.Tensor | None:
        if not (self.training and self.opts.rank_dropout > 0):
            return None
        return rank_dropout_mask(self.geom.out_features, self.opts.rank_dropout, self.opts.rank_dropout_scale, device)

    def delta_raw(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.w_norm if mask is None else self.w_norm * mask

    def delta_bias(self, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        if self.b_norm is None:
            return None
        return self.b_norm if mask is None else self.b_norm * mask

    def adapted_weight(self, W: torch.Tensor, b: torch.Tensor | None, m: float,
                       mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return F_norm.adapted(W, b, self.w_norm, self.b_norm, m, mask)

    def forward(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        m = self.multiplier
        if m == 0 or (self.training and self.opts.module_dropout > 0 and torch.rand(()) < self.opts.module_dropout):
            return cast(torch.Tensor, base(x))
        W, b = base_params(base)
        W2, b2 = self.adapted_weight(W, b, m, self.draw_mask(x.device))
        return F_norm.forward(norm_spec(_raw(base)), x, W2, b2)

    def use_rebuild(self, base: nn.Module) -> bool:
        return True

    def bypass_cost(self) -> int:
        return 0

    def export(self) -> dict[str, torch.Tensor]:
        out = {"w_norm": self.w_norm.detach().float().clone()}
        if self.b_norm is not None:
            out["b_norm"] = self.b_norm.detach().float().clone()
        return out

    def describe(self) -> dict[str, Any]:
        return {"algo": self.algo}

    @classmethod
    def detect(cls, tensors: dict[str, torch.Tensor]) -> bool:
        return "w_norm" in tensors

    @classmethod
    def file_features(cls, name: str, parts: dict[str, torch.Tensor]) -> list[str]:
        return ["norm-te" if name.startswith("lora_te") else "norm"]

    @classmethod
    def file_geometry(cls, parts: dict[str, torch.Tensor]) -> Geometry | None:
        return Geometry.of_weight_shape((parts["w_norm"].numel(),), has_bias="b_norm" in parts)

    @classmethod
    def from_file(cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str,
                  hints: dict[str, Any]) -> Self:
        c = geom.out_features
        for p in ("w_norm", "b_norm"):
            if p in tensors and tensors[p].numel() != c:
                raise FileFormatError(f"key '{name}.{p}' has {tensors[p].numel()} values; the norm layer has {c}")
        has_b = "b_norm" in tensors and geom.has_bias
        mod = cls(geom, AlgoOptions(algo=cls.algo, dim=1, alpha=None), name, initialize=False, has_bias=has_b)
        with torch.no_grad():
            mod.w_norm.copy_(tensors["w_norm"].float().reshape(-1))
            if has_b and mod.b_norm is not None:
                mod.b_norm.copy_(tensors["b_norm"].float().reshape(-1))
        return mod


register(NormModule)
