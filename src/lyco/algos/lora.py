"""LoRA / LoCon: ΔW = up · down (Linear, Conv1d/2d/3d with any stride/padding/dilation/groups), Tucker for k>1."""
from __future__ import annotations

from typing import Any, Self

import torch
import torch.nn as nn

from ..errors import FileFormatError
from .dora import DoraModule
from .functional import fused
from .functional import lora as F_lora
from .functional.common import kaiming_, normal_, orthogonal_
from .geometry import Geometry
from .options import AlgoOptions
from .registry import register
from .support import FileSummary, row

INITS = ("kaiming", "gaussian", "orthogonal")


class LoRAModule(DoraModule):
    algo = "lora"
    file_parts = frozenset({"lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale", "scale"})
    grouped_bypass = True
    dora_features = ("dora-in", "dora-out")
    support = {
        "lora": row("✔ ✔ ✔ ✔ ✔ ✔ ✔ ✔"),
        "locon-tucker": row("✔ ✔ ✔ ✔ ! ✘ ✔ !", "diffusers' load_lora_weights rejects lora_mid keys; sd-scripts' own "
                            "loader ignores them", PEFT="PEFT LoRA has no Tucker (lora_mid) form"),
    }

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "",
                 base_weight: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 initialize: bool = True) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
        r = opts.dim
        if r < 1:
            raise self._err(f"dim must be >= 1, got {r}")
        if opts.init not in INITS:
            raise self._err(f"unknown init {opts.init!r}; valid: {', '.join(INITS)}")
        self.tucker = bool(opts.use_tucker and geom.kind == "conv" and geom.has_spatial_kernel)
        if self.tucker and geom.groups > 1:
            raise self._err("Tucker (use_tucker) is not defined for grouped convs")
        i_g, k = geom.in_per_group, geom.kernel_size
        if geom.kind == "linear":
            down_shape: tuple[int, ...] = (r, geom.in_features)
        elif self.tucker:
            down_shape = (r, i_g)
        else:
            down_shape = (r, i_g, *k)
        self.lora_down = nn.Parameter(torch.empty(down_shape))
        self.lora_mid = nn.Parameter(torch.empty(r, r, *k)) if self.tucker else None
        self.lora_up = nn.Parameter(torch.zeros(geom.out_features, r))
        if initialize:
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        init = self.opts.init
        if init == "gaussian":
            normal_(self.lora_down, 1.0 / self.rank, generator)
        elif init == "orthogonal":
            orthogonal_(self.lora_down, generator)
        else:
            kaiming_(self.lora_down, generator)
        if self.lora_mid is not None:
            kaiming_(self.lora_mid, generator)
        with torch.no_grad():
            self.lora_up.zero_()
        if self.opts.use_scalar:
            kaiming_(self.lora_up, generator)

    # ------------------------------------------------------------------ math
    @property
    def rank(self) -> int:
        return self.lora_down.shape[0]

    def mask_size(self) -> int:
        return self.rank

    def delta_raw(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F_lora.delta(self.lora_up, self.lora_down, self.lora_mid, self.geom.weight_shape, mask)

    def lowrank(self, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        return F_lora.lowrank(self.lora_up, self.lora_down, self.lora_mid, mask)

    def apply_raw(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        c = self._cast
        mid = None if self.lora_mid is None else c(self.lora_mid, x)
        return F_lora.apply(x, self.geom, c(self.lora_up, x), c(self.lora_down, x), mid, mask)

    def bypass_cost(self) -> int:
        return F_lora.cost(self.geom, self.rank, self.tucker)

    def linear_kernel(self, x: torch.Tensor, mask: torch.Tensor | None) -> fused.KernelCall | None:
        if self.geom.kind != "linear":
            return None
        up = self.lora_up if mask is None else self.lora_up * mask.to(self.lora_up.dtype)
        return fused.LowRankKernel(), [up, self.lora_down]

    def add_scaled_delta(self, y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None,
                         alpha: float) -> torch.Tensor | None:
        g = self.geom
        if g.groups > 1:
            return None
        c = self._cast
        if g.kind == "linear":
            h = torch.nn.functional.linear(x, c(self.lora_down, x))
        elif self.lora_mid is not None:
            h = g.core_conv(g.pointwise(x, c(self.lora_down, x).reshape(self.rank, -1)), c(self.lora_mid, x))
        else:
            h = g.spatial_conv(x, c(self.lora_down, x))
        if mask is not None:
            h = h * (mask.to(h.dtype) if g.kind == "linear" else mask.to(h.dtype).reshape(-1, *g.ones))
        return self._add_lowrank(y, h, self.lora_up, alpha)

    # ------------------------------------------------------------------ files
    def export(self) -> dict[str, torch.Tensor]:
        g, r = self.geom, self.rank
        ones = g.ones
        up = (self.lora_up.detach().float() * self.scalar.detach().float()).reshape(g.out_features, r, *ones)
        out = {"lora_up.weight": up}
        if self.lora_mid is not None:  # Tucker
            out["lora_down.weight"] = self.lora_down.detach().float().reshape(r, g.in_per_group, *ones)
            out["lora_mid.weight"] = self.lora_mid.detach().float().clone()
        else:
            out["lora_down.weight"] = self.lora_down.detach().float().clone()
        return self._export_common(out)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.tucker:
            d["tucker"] = True
        return d

    @classmethod
    def detect(cls, tensors: dict[str, torch.Tensor]) -> bool:
        return {"lora_down.weight", "lora_up.weight"} <= tensors.keys()

    @classmethod
    def file_features(cls, name: str, parts: dict[str, torch.Tensor]) -> list[str]:
        return ["locon-tucker" if "lora_mid.weight" in parts else "lora", *cls._dora_file_features(parts)]

    @classmethod
    def file_summary(cls, parts: dict[str, torch.Tensor]) -> FileSummary:
        down = parts["lora_down.weight"]
        tags = ("tucker",) if "lora_mid.weight" in parts else ()
        return FileSummary(int(down.shape[0]) if down.dim() else None, tags + super().file_summary(parts).tags)

    @classmethod
    def file_geometry(cls, parts: dict[str, torch.Tensor]) -> Geometry | None:
        down, up, mid = parts["lora_down.weight"], parts["lora_up.weight"], parts.get("lora_mid.weight")
        if down.dim() < 2 or up.dim() < 2:
            return None
        kernel = tuple(mid.shape[2:]) if mid is not None else tuple(down.shape[2:])
        return Geometry.of_weight_shape((up.shape[0], down.shape[1], *kernel))

    @classmethod
    def from_file(cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str,
                  hints: dict[str, Any]) -> Self:
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        mid = tensors.get("lora_mid.weight")
        r = down.shape[0]
        tucker = mid is not None
        g = geom
        if tucker and not (g.kind == "conv" and g.has_spatial_kernel):
            raise FileFormatError(f"module '{name}': lora_mid (Tucker) keys need a conv layer with a kernel > 1, "
                                  f"but the model's layer is {g.describe()}")
        if g.kind == "linear":
            cls._check_shape(name, "lora_down.weight", down, (r, g.in_features))
        elif mid is not None:
            cls._check_shape(name, "lora_down.weight", down, (r, g.in_per_group, *g.ones))
            cls._check_shape(name, "lora_mid.weight", mid, (r, r, *g.kernel_size))
        else:
            cls._check_shape(name, "lora_down.weight", down, (r, g.in_per_group, *g.kernel_size))
        if up.numel() != g.out_features * r or up.shape[0] != g.out_features:
            raise FileFormatError(f"key '{name}.lora_up.weight' has shape {tuple(up.shape)} but the model's layer "
                                  f"needs ({g.out_features}, {r}{', 1' * g.nd})")
        opts = AlgoOptions(algo=cls.algo, dim=r, alpha=cls._read_alpha(tensors, r), use_tucker=tucker,
                           **cls._load_dora(g, tensors, name, hints))
        mod = cls(g, opts, name, initialize=False)
        with torch.no_grad():
            mod.lora_down.copy_(down.float().reshape(mod.lora_down.shape))
            mod.lora_up.copy_(up.float().reshape(g.out_features, r))
            if mid is not None and mod.lora_mid is not None:
                mod.lora_mid.copy_(mid.float())
        mod._load_dora_tensor(tensors)
        return mod


register(LoRAModule, aliases=("locon",))
