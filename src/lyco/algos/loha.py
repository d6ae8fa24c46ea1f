"""LoHa: ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b) (Linear and Conv, Tucker ``hada_t1/t2`` for k>1)."""
from __future__ import annotations

from typing import Any, Self

import torch
import torch.nn as nn

from ..errors import FileFormatError
from .dora import DoraModule
from .functional import fused
from .functional import loha as F_loha
from .functional.common import normal_, scale_rows
from .geometry import Geometry
from .options import AlgoOptions
from .registry import register
from .support import FileSummary, row

#: (w1_a, w1_b, w2_a, w2_b, t1, t2): the Tucker cores are None without Tucker
Factors = F_loha.Factors


class LoHaModule(DoraModule):
    algo = "loha"
    file_parts = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha",
                            "dora_scale", "scale"})
    support = {"loha": row("✔ ✔ ✔ ✔ ! ✘ ✔ ✔", "diffusers and sd-scripts' own loader have no LoHa")}

    hada_t1: nn.Parameter | None
    hada_t2: nn.Parameter | None

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "",
                 base_weight: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 initialize: bool = True) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
        r = opts.dim
        if r < 1:
            raise self._err(f"dim must be >= 1, got {r}")
        self.tucker = bool(opts.use_tucker and geom.kind == "conv" and geom.has_spatial_kernel)
        o, i_g, k = geom.out_features, geom.in_per_group, geom.kernel_size
        if self.tucker:
            a_shape, b_shape = (r, o), (r, i_g)
            self.hada_t1 = nn.Parameter(torch.empty(r, r, *k))
            self.hada_t2 = nn.Parameter(torch.empty(r, r, *k))
        else:
            a_shape, b_shape = (o, r), (r, i_g * geom.k_numel)
            self.hada_t1 = self.hada_t2 = None
        self.hada_w1_a = nn.Parameter(torch.empty(a_shape))
        self.hada_w1_b = nn.Parameter(torch.empty(b_shape))
        self.hada_w2_a = nn.Parameter(torch.zeros(a_shape))
        self.hada_w2_b = nn.Parameter(torch.empty(b_shape))
        if initialize:
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # LyCORIS's init: b factors N(0,1), w1_a and the Tucker cores N(0, 0.1²), w2_a = 0 (N(0, 0.1²) with scalar)
        normal_(self.hada_w1_b, 1.0, generator)
        normal_(self.hada_w2_b, 1.0, generator)
        normal_(self.hada_w1_a, 0.1, generator)
        if self.hada_t1 is not None and self.hada_t2 is not None:  # Tucker
            normal_(self.hada_t1, 0.1, generator)
            normal_(self.hada_t2, 0.1, generator)
        with torch.no_grad():
            self.hada_w2_a.zero_()
        if self.opts.use_scalar:
            normal_(self.hada_w2_a, 0.1, generator)

    # ------------------------------------------------------------------ math
    @property
    def rank(self) -> int:
        return self.hada_w1_b.shape[0]

    def _factors(self, like: torch.Tensor | None = None) -> Factors:
        ps: Factors = (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.hada_t1, self.hada_t2)
        if like is None:
            return ps
        c = self._cast
        t1, t2 = ps[4], ps[5]
        return (c(ps[0], like), c(ps[1], like), c(ps[2], like), c(ps[3], like),
                None if t1 is None else c(t1, like), None if t2 is None else c(t2, like))

    def delta_raw(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        w1a, w1b, w2a, w2b, t1, t2 = self._factors()
        return F_loha.delta(w1a, w1b, w2a, w2b, t1, t2, self.geom.weight_shape, mask)

    def lowrank(self, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        return F_loha.lowrank(*self._factors(), mask=mask)

    def apply_raw(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F_loha.apply(x, self.geom, self._factors(x), mask=mask)

    def bypass_cost(self) -> int:
        return F_loha.cost(self.geom, self.rank, self.tucker)

    def linear_kernel(self, x: torch.Tensor, mask: torch.Tensor | None) -> fused.KernelCall | None:
        if self.tucker or self.geom.kind != "linear":
            return None
        u, v = F_loha.face_split(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b)
        return fused.LowRankKernel(), [scale_rows(u, mask), v]

    def _factorised_rebuild(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, mask: torch.Tensor | None,
                            alpha: float) -> torch.Tensor:
        """The rebuild path's single GEMM on W + ΔW with factor gradients from the rank-r² form (never the O×I
        weight gradient): :class:`~.functional.fused.RebuildLinear`."""
        w1a = scale_rows(self.hada_w1_a, mask)
        return fused.run(fused.RebuildLinear, x, W, b, None, fused.HadaKernel(), alpha,
                         [w1a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b])

    def _trains_on_linear(self) -> bool:
        """A training step (gradients wanted) on a Linear layer, without DoRA or a learned scalar."""
        return (not self.tucker and self.geom.kind == "linear" and self.dora_axis is None
                and not isinstance(self.scalar, nn.Parameter)
                and fused.wants_grad(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b))

    def fused_linear(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, mask: torch.Tensor | None,
                     alpha: float) -> torch.Tensor | None:
        # training with many tokens: the rebuild forward with factorised gradients costs 2·r²(I+O) per token
        # against the bypass's 3·r²(I+O), plus building W + ΔW twice per step: 2·(2r·O·I multiply-adds + a few
        # O·I-sized memory passes, ~15 multiply-adds each on a CPU); measured break-even: 4·(r + 15)·O·I
        g, r = self.geom, self.rank
        tokens = x.numel() // g.in_features
        saved = tokens * r * r * (g.in_features + g.out_features)
        break_even = 4 * (r + 15) * g.in_features * g.out_features
        if self.opts.path == "auto" and self._trains_on_linear() and saved > break_even:
            return self._factorised_rebuild(x, W, b, mask, alpha)
        return super().fused_linear(x, W, b, mask, alpha)

    def rebuild(self, x: torch.Tensor, base: nn.Module, m: float, mask: torch.Tensor | None) -> torch.Tensor:
        # factorised gradients cost 2·r²(I+O) per token against the O·I weight gradient of the plain rebuild
        g = self.geom
        wb = fused.frozen_linear(base) if self._trains_on_linear() else None
        if wb is not None and 2 * self.rank ** 2 * (g.in_features + g.out_features) < g.in_features * g.out_features:
            t = self._t_for(x)
            assert isinstance(t, float)  # no learned scalar when training on a Linear (_trains_on_linear)
            return self._factorised_rebuild(x, wb[0], wb[1], mask, t * m)
        return super().rebuild(x, base, m, mask)

    def add_scaled_delta(self, y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None,
                         alpha: float) -> torch.Tensor | None:
        if mask is not None:
            return None
        w1a, w1b, w2a, w2b, t1, t2 = self._factors(x)
        g = self.geom
        if t1 is None:
            u, v = F_loha.face_split(w1a, w1b, w2a, w2b)
            if g.kind == "linear":
                h = torch.nn.functional.linear(x, v)
            else:
                h = g.spatial_conv(x, v.reshape(v.shape[0], g.in_per_group, *g.kernel_size))
        else:
            u, core, inp = F_loha.tucker_factors(w1a, w1b, t1, w2a, w2b, t2)
            h = g.core_conv(g.pointwise(x, inp), core)
        return self._add_lowrank(y, h, u, alpha)

    # ------------------------------------------------------------------ files
    def export(self) -> dict[str, torch.Tensor]:
        c = self.scalar.detach().float()
        out = {
            "hada_w1_a": self.hada_w1_a.detach().float() * c,
            "hada_w1_b": self.hada_w1_b.detach().float().clone(),
            "hada_w2_a": self.hada_w2_a.detach().float().clone(),
            "hada_w2_b": self.hada_w2_b.detach().float().clone(),
        }
        if self.hada_t1 is not None and self.hada_t2 is not None:  # Tucker
            out["hada_t1"] = self.hada_t1.detach().float().clone()
            out["hada_t2"] = self.hada_t2.detach().float().clone()
        return self._export_common(out)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.tucker:
            d["tucker"] = True
        return d

    @classmethod
    def detect(cls, tensors: dict[str, torch.Tensor]) -> bool:
        return "hada_w1_a" in tensors

    @classmethod
    def file_summary(cls, parts: dict[str, torch.Tensor]) -> FileSummary:
        w1b = parts.get("hada_w1_b")
        rank = int(w1b.shape[0]) if w1b is not None and w1b.dim() else None
        tags = ("tucker",) if "hada_t1" in parts else ()
        return FileSummary(rank, tags + super().file_summary(parts).tags)

    @classmethod
    def file_geometry(cls, parts: dict[str, torch.Tensor]) -> Geometry | None:
        w1a, w1b, t1 = parts["hada_w1_a"], parts.get("hada_w1_b"), parts.get("hada_t1")
        if w1b is None or w1a.dim() != 2 or w1b.dim() < 2:
            return None
        if t1 is not None:
            return Geometry.of_weight_shape((w1a.shape[1], w1b.shape[1], *t1.shape[2:]))
        return Geometry.of_weight_shape((w1a.shape[0], w1b[0].numel()))

    @classmethod
    def from_file(cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str,
                  hints: dict[str, Any]) -> Self:
        need = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]
        missing = [p for p in need if p not in tensors]
        if missing:
            raise FileFormatError(f"module '{name}': LoHa keys incomplete, missing {', '.join(missing)}")
        r = tensors["hada_w1_b"].shape[0]
        tucker = "hada_t1" in tensors
        g = geom
        o, i_g = g.out_features, g.in_per_group
        if tucker:
            if not (g.kind == "conv" and g.has_spatial_kernel):
                raise FileFormatError(f"module '{name}': hada_t1 (Tucker) needs a conv layer with a kernel > 1, "
                                      f"but the model's layer is {g.describe()}")
            if "hada_t2" not in tensors:
                raise FileFormatError(f"module '{name}': hada_t1 present but hada_t2 missing")
            a_shape, b_shape = (r, o), (r, i_g)
            for core in ("hada_t1", "hada_t2"):
                cls._check_shape(name, core, tensors[core], (r, r, *g.kernel_size))
        else:
            a_shape, b_shape = (o, r), (r, i_g * g.k_numel)
        for p, shape in (("hada_w1_a", a_shape), ("hada_w2_a", a_shape)):
            cls._check_shape(name, p, tensors[p], shape)
        for p in ("hada_w1_b", "hada_w2_b"):
            t = tensors[p]
            if t.dim() != 2 and t.numel() == r * b_shape[1]:
                t = t.reshape(b_shape)
            cls._check_shape(name, p, t, b_shape)
        opts = AlgoOptions(algo=cls.algo, dim=r, alpha=cls._read_alpha(tensors, r), use_tucker=tucker,
                           **cls._load_dora(g, tensors, name, hints))
        mod = cls(g, opts, name, initialize=False)
        with torch.no_grad():
            for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b") + (("hada_t1", "hada_t2") if tucker else ()):
                getattr(mod, p).copy_(tensors[p].float().reshape(getattr(mod, p).shape))
        mod._load_dora_tensor(tensors)
        return mod


register(LoHaModule)
