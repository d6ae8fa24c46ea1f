"""LoKr: ΔW = W1 ⊗ W2 with LyCORIS's factorisation rule (``factor``, -1 = balanced), full or low-rank factors,
Tucker ``lokr_t2`` on convs, unbalanced factorisation."""
from __future__ import annotations

from typing import Any, Self

import torch
import torch.nn as nn

from ..errors import FileFormatError
from .dora import DoraModule
from .functional import fused
from .functional import lokr as F_lokr
from .functional.common import factorization, kaiming_
from .geometry import Geometry
from .options import AlgoOptions
from .registry import register
from .support import FileSummary, row

Factor = torch.Tensor | None


class LoKrModule(DoraModule):
    algo = "lokr"
    file_parts = frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
                            "alpha", "dora_scale", "scale"})
    support = {
        "lokr": row("✔ ✔ ✔ ✔ ! ✘ ✔ ✔", "diffusers and sd-scripts' own loader have no LoKr"),
        "lokr-tucker-conv": row("! ✔ ! ✔ ! ✘ ! !", "ComfyUI/Forge skip LoKr layers with lokr_t2 on convs; lycoris-lora "
                                "4.1.3 reads the rank wrongly", PEFT="PEFT's effective-conv2d LoKr has another core "
                                "layout; `lyco convert --to ui-safe` rewrites lokr_t2 exactly"),
        "lokr-unbalanced": row("✔ ✔ ✔ ✔ ! ✘ ! !", "the W1 factor is larger than W2 (unbalanced_factorization)",
                               lycoris_lora="lycoris-lora 4.1.3 rebuilds LoKr modules with its own factorisation rule "
                               "and cannot load unbalanced factors", PEFT="PEFT builds W1 from its own factorisation "
                               "rule"),
        "lokr-factor": row("✔ ✔ ✔ ✔ ! ✘ ✔ !", "the output axis is split with an explicit factor",
                           PEFT="`lyco convert --to peft` writes decompose_factor=-1, so PEFT builds other factor "
                                "sizes"),
        "lokr-decomposed-w1": row("✔ ✔ ✔ ✔ ! ✘ ✔ !", "W1 is low-rank (decompose_both)",
                                  PEFT="`lyco convert --to peft` writes decompose_both=false, so PEFT builds a full "
                                       "W1"),
    }

    # the factors of the layout's forms; the others are None
    lokr_w1: nn.Parameter | None
    lokr_w1_a: nn.Parameter | None
    lokr_w1_b: nn.Parameter | None
    lokr_w2: nn.Parameter | None
    lokr_w2_a: nn.Parameter | None
    lokr_w2_b: nn.Parameter | None
    lokr_t2: nn.Parameter | None

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "",
                 base_weight: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 initialize: bool = True, layout: dict[str, Any] | None = None) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
        r = opts.dim
        if r < 1:
            raise self._err(f"dim must be >= 1, got {r}")
        g = geom
        k = g.kernel_size
        if layout is None:
            layout = self.plan(g, opts)
        a, b, c, d = layout["a"], layout["b"], layout["c"], layout["d"]
        self.a, self.b, self.c, self.d = a, b, c, d
        self.w1_form: str = layout["w1"]  # 'full' | 'lowrank'
        self.w2_form: str = layout["w2"]  # 'full' | 'lowrank' | 'tucker'
        self._rank = r
        if self.w1_form == "full":
            self.lokr_w1 = nn.Parameter(torch.empty(a, c))
            self.lokr_w1_a = self.lokr_w1_b = None
        else:
            self.lokr_w1 = None
            self.lokr_w1_a = nn.Parameter(torch.empty(a, r))
            self.lokr_w1_b = nn.Parameter(torch.empty(r, c))
        self.lokr_w2 = self.lokr_w2_a = self.lokr_w2_b = self.lokr_t2 = None
        if self.w2_form == "full":
            self.lokr_w2 = nn.Parameter(torch.zeros(b, d, *k))
        elif self.w2_form == "tucker":
            self.lokr_t2 = nn.Parameter(torch.empty(r, r, *k))
            self.lokr_w2_a = nn.Parameter(torch.empty(r, b))
            self.lokr_w2_b = nn.Parameter(torch.zeros(r, d))
        else:
            self.lokr_w2_a = nn.Parameter(torch.empty(b, r))
            self.lokr_w2_b = nn.Parameter(torch.zeros(r, d * g.k_numel))
        if initialize:
            self.reset_parameters(generator)

    @staticmethod
    def plan(g: Geometry, opts: AlgoOptions) -> dict[str, Any]:
        """Factor sizes and factor forms for a layer (LyCORIS's exact rules; the file shapes depend on them)."""
        r = opts.dim
        a, b = factorization(g.out_features, opts.factor)
        c, d = factorization(g.in_per_group, opts.factor)
        if opts.unbalanced_factorization:
            a, b = b, a
        w1 = "lowrank" if (opts.decompose_both and r < max(a, c) / 2 and not opts.full_matrix) else "full"
        if opts.full_matrix or r >= max(b, d) / 2:
            w2 = "full"
        elif g.kind == "conv" and opts.use_tucker and g.has_spatial_kernel:
            w2 = "tucker"
        else:
            w2 = "lowrank"
        return {"a": a, "b": b, "c": c, "d": d, "w1": w1, "w2": w2}

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for p in (self.lokr_w1, self.lokr_w1_a, self.lokr_w1_b, self.lokr_w2_a, self.lokr_t2):
            if p is not None:
                kaiming_(p, generator)
        zero = self.lokr_w2 if self.lokr_w2 is not None else self.lokr_w2_b
        assert zero is not None, "W2 is full or has a w2_b factor"
        with torch.no_grad():
            zero.zero_()
        if self.opts.use_scalar:
            kaiming_(zero, generator)

    # ------------------------------------------------------------------ math
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def full_full(self) -> bool:
        return self.w1_form == "full" and self.w2_form == "full"

    def scale(self) -> float:
        # both factors full: no low-rank product, so no alpha/rank scale (every loader uses 1)
        return 1.0 if self.full_full else super().scale()

    def saved_alpha(self) -> float:
        return float(self.opts.dim) if self.full_full else super().saved_alpha()

    def _w1(self, like: torch.Tensor | None = None) -> torch.Tensor:
        c = self._cast_to
        if self.lokr_w1 is not None:
            return c(self.lokr_w1, like)
        assert self.lokr_w1_a is not None and self.lokr_w1_b is not None, "W1 is full or low-rank"
        return c(self.lokr_w1_a, like) @ c(self.lokr_w1_b, like)

    def _w2_parts(self, like: torch.Tensor | None = None) -> F_lokr.W2Parts:
        """(w2, w2_a, w2_b, t2) in ``like``'s dtype (None for the factors the layout does not have)."""

        def c(t: Factor) -> Factor:
            return None if t is None else self._cast_to(t, like)

        return F_lokr.W2Parts(c(self.lokr_w2), c(self.lokr_w2_a), c(self.lokr_w2_b), c(self.lokr_t2))

    @property
    def _dims(self) -> tuple[int, int, int, int]:
        return self.a, self.b, self.c, self.d

    def _cast_to(self, t: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
        return t if like is None else self._cast(t, like)

    def _w2(self, like: torch.Tensor | None = None) -> torch.Tensor:
        return F_lokr.make_w2(self.geom, self.b, self.d, *self._w2_parts(like))

    def delta_raw(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F_lokr.delta(self._w1(), self._w2(), self.geom.weight_shape, mask)

    def apply_raw(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F_lokr.apply(x, self.geom, self._dims, self._w1(x), self._w2_parts(x), mask)

    def bypass_cost(self) -> int:
        return F_lokr.cost(self.geom, self.a, self.b, self.c, self.d, self.rank, self.w2_form)

    def linear_kernel(self, x: torch.Tensor, mask: torch.Tensor | None) -> fused.KernelCall | None:
        if self.geom.kind != "linear" or mask is not None:  # the mask scales output rows: not a factor scale
            return None
        if self.lokr_w2 is not None:  # W2 full
            return fused.KronKernel(), [self._w1(), self.lokr_w2]
        assert self.lokr_w2_a is not None and self.lokr_w2_b is not None, "W2 is low-rank on a Linear layer"
        return fused.KronLowRankKernel(), [self._w1(), self.lokr_w2_a, self.lokr_w2_b]

    def _full_trains_on_linear(self) -> bool:
        """A training step (gradients wanted) with a full W2 on a Linear layer, without DoRA or a learned scalar."""
        return (self.w2_form == "full" and self.geom.kind == "linear" and self.dora_axis is None
                and not isinstance(self.scalar, nn.Parameter)
                and fused.wants_grad(*(p for p in self.parameters() if p is not self.scalar)))

    def _factorised_rebuild(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None,
                            alpha: float) -> torch.Tensor:
        """One GEMM on W + W1⊗W2, factor gradients from the factors (:class:`~.functional.fused.RebuildLinear`)."""
        assert self.lokr_w2 is not None, "used with a full W2 only"
        return fused.run(fused.RebuildLinear, x, W, b, None, fused.KronKernel(), alpha, [self._w1(), self.lokr_w2])

    def fused_linear(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, mask: torch.Tensor | None,
                     alpha: float) -> torch.Tensor | None:
        # training a full W2 with many tokens: the rebuild forward with factorised gradients costs about 2 of the
        # bypass's 4 Kronecker products per token, plus building W + W1⊗W2 twice per step (O·I-sized memory
        # passes); measured break-even (SD1.5 shapes, 16-256 tokens): tokens·cost ≈ 32·O·I
        g = self.geom
        tokens = x.numel() // g.in_features
        if (mask is None and self.opts.path == "auto" and self._full_trains_on_linear()
                and tokens * self.bypass_cost() > 32 * g.in_features * g.out_features):
            return self._factorised_rebuild(x, W, b, alpha)
        return super().fused_linear(x, W, b, mask, alpha)

    def rebuild(self, x: torch.Tensor, base: nn.Module, m: float, mask: torch.Tensor | None) -> torch.Tensor:
        # factorised gradients cost about 2 Kronecker products per token against the plain rebuild's O·I
        g = self.geom
        wb = fused.frozen_linear(base) if mask is None and self._full_trains_on_linear() else None
        if wb is not None and 2 * self.bypass_cost() < g.in_features * g.out_features:
            t = self._t_for(x)
            assert isinstance(t, float)  # no learned scalar when training on a Linear (_full_trains_on_linear)
            return self._factorised_rebuild(x, wb[0], wb[1], t * m)
        return super().rebuild(x, base, m, mask)

    def add_scaled_delta(self, y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None,
                         alpha: float) -> torch.Tensor | None:
        w2 = self._w2_parts(x)
        if self.geom.kind == "conv" and mask is None:
            # y + alpha·W1·(W2 * x-slices) as one baddbmm over the output
            h, spatial = F_lokr.conv_slices(x, self.geom, self._dims, w2)
            if tuple(spatial) == tuple(y.shape[2:]):
                n = y.shape[0]
                out = torch.baddbmm(y.reshape(n, self.a, -1), self._w1(x).expand(n, self.a, self.c), h, alpha=alpha)
                return out.view(y.shape)
        # the scale goes into the small W1 factor instead of a pass over the output
        d = F_lokr.apply(x, self.geom, self._dims, self._w1(x) * alpha, w2, mask)
        return y + d

    def dora_norms(self, W: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is not None:
            return super().dora_norms(W, mask)
        w1, w2 = self._w1().float(), self._w2().float()
        fn = F_lokr.row_norms_sq_terms if self.dora_axis == "out" else F_lokr.col_norms_sq_terms
        cross, sq = fn(W.float(), w1, w2, self.a, self.b, self.c, self.d)
        t = self.t()
        wsq = self.weight_sq_norms(W)
        return (wsq + 2 * t * cross + t * t * sq).clamp_min(0).sqrt()

    # ------------------------------------------------------------------ files
    def export(self) -> dict[str, torch.Tensor]:
        cval = self.scalar.detach().float()
        out: dict[str, torch.Tensor] = {}
        for p in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"):
            t = getattr(self, p)
            if t is not None:
                out[p] = t.detach().float().clone()
        key = "lokr_w1" if self.lokr_w1 is not None else "lokr_w1_a"
        out[key] = out[key] * cval
        return self._export_common(out)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(factor=self.opts.factor, w1=self.w1_form, w2=self.w2_form,
                 shape=[[self.a, self.b], [self.c, self.d]])
        if self.opts.unbalanced_factorization:
            d["unbalanced_factorization"] = True
        return d

    @classmethod
    def detect(cls, tensors: dict[str, torch.Tensor]) -> bool:
        return bool({"lokr_w1", "lokr_w1_a"} & tensors.keys())

    @classmethod
    def _file_factors(cls, parts: dict[str, torch.Tensor]) -> tuple[tuple[int, int], tuple[int, int],
                                                                     int | None] | None:
        """((a, c), (b, d·K), rank) from a module's tensors (W1 is (a, c), W2 (b, d[, k...])), or None."""
        p = parts
        try:
            w1 = tuple(p["lokr_w1"].shape) if "lokr_w1" in p else (p["lokr_w1_a"].shape[0], p["lokr_w1_b"].shape[1])
            if "lokr_w2" in p:
                w2 = (p["lokr_w2"].shape[0], p["lokr_w2"][0].numel())
            elif "lokr_t2" in p:
                w2 = (p["lokr_w2_a"].shape[1], p["lokr_w2_b"].shape[1] * p["lokr_t2"][0, 0].numel())
            else:
                w2 = (p["lokr_w2_a"].shape[0], p["lokr_w2_b"].shape[1])
            low = p.get("lokr_w1_b", p.get("lokr_w2_b"))
        except (KeyError, IndexError):
            return None
        if len(w1) != 2:
            return None
        return (int(w1[0]), int(w1[1])), (int(w2[0]), int(w2[1])), None if low is None else int(low.shape[0])

    @classmethod
    def file_features(cls, name: str, parts: dict[str, torch.Tensor]) -> list[str]:
        out = ["lokr-tucker-conv" if "lokr_t2" in parts else "lokr"]
        f = cls._file_factors(parts)
        if f is not None:
            (a, _), (b, _), _ = f
            if a > b:
                out.append("lokr-unbalanced")
            elif a != factorization(a * b)[0]:
                out.append("lokr-factor")
        if "lokr_w1_a" in parts:
            out.append("lokr-decomposed-w1")
        return out + cls._dora_file_features(parts)

    @classmethod
    def file_summary(cls, parts: dict[str, torch.Tensor]) -> FileSummary:
        f = cls._file_factors(parts)
        tags = (("tucker",) if "lokr_t2" in parts else ()) + super().file_summary(parts).tags
        if f is None:
            return FileSummary(tags=tags)
        (a, c), (b, dk), r = f
        w1 = "low-rank" if "lokr_w1_a" in parts else "full"
        w2 = "tucker" if "lokr_t2" in parts else ("full" if "lokr_w2" in parts else "low-rank")
        return FileSummary(r, tags, f"W1 {a}x{c} {w1} ⊗ W2 {b}x{dk} {w2}")

    @classmethod
    def portable_parts(cls, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Tucker ``lokr_t2`` rebuilt as a full ``lokr_w2`` (exact; ComfyUI, Forge and lycoris-lora lack lokr_t2)."""
        geom = cls.file_geometry(parts) if "lokr_t2" in parts else None
        if geom is None:
            return None
        f = {k: v.float() for k, v in parts.items()}
        b, d = f["lokr_w2_a"].shape[1], f["lokr_w2_b"].shape[1]
        out = {k: v for k, v in parts.items() if k not in ("lokr_t2", "lokr_w2_a", "lokr_w2_b")}
        out["lokr_w2"] = F_lokr.make_w2(geom, b, d, None, f["lokr_w2_a"], f["lokr_w2_b"], f["lokr_t2"])
        if "lokr_w1" in parts:  # both factors full now: loaders use scale 1, so fold alpha/r into W1
            r = f["lokr_t2"].shape[0]
            alpha = float(f["alpha"]) if "alpha" in f and float(f["alpha"]) else r
            out["lokr_w1"] = f["lokr_w1"] * (alpha / r)
            out["alpha"] = torch.tensor(float(r))
        return out

    @classmethod
    def file_geometry(cls, parts: dict[str, torch.Tensor]) -> Geometry | None:
        f = cls._file_factors(parts)
        if f is None:
            return None
        (a, c), (b, dk), _ = f
        if "lokr_w2" in parts and parts["lokr_w2"].dim() > 2:
            w2 = parts["lokr_w2"]
            return Geometry.of_weight_shape((a * b, c * w2.shape[1], *w2.shape[2:]))
        if "lokr_t2" in parts:
            t2 = parts["lokr_t2"]
            return Geometry.of_weight_shape((a * b, c * parts["lokr_w2_b"].shape[1], *t2.shape[2:]))
        return Geometry.of_weight_shape((a * b, c * dk))  # a conv kernel folded into d: same ‖ΔW‖

    @classmethod
    def from_file(cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str,
                  hints: dict[str, Any]) -> Self:
        g = geom
        o, i_g, k = g.out_features, g.in_per_group, g.kernel_size
        has = tensors.__contains__
        if has("lokr_w1"):
            a, c = tensors["lokr_w1"].shape[:2]
            w1_form = "full"
        elif has("lokr_w1_a") and has("lokr_w1_b"):
            a, c = tensors["lokr_w1_a"].shape[0], tensors["lokr_w1_b"].shape[1]
            w1_form = "lowrank"
        else:
            raise FileFormatError(f"module '{name}': LoKr needs lokr_w1 or lokr_w1_a + lokr_w1_b")
        if not (has("lokr_w2") or (has("lokr_w2_a") and has("lokr_w2_b"))):
            raise FileFormatError(f"module '{name}': LoKr needs lokr_w2 or lokr_w2_a + lokr_w2_b")
        if o % a or i_g % c:
            raise FileFormatError(f"module '{name}': lokr_w1 is ({a}, {c}), which does not divide the layer "
                                  f"{g.describe()} (out {o}, in/groups {i_g})")
        b, d = o // a, i_g // c
        r = None
        if w1_form == "lowrank":
            r = tensors["lokr_w1_b"].shape[0]
        if has("lokr_w2"):
            w2_form = "full"
            cls._check_shape(name, "lokr_w2", tensors["lokr_w2"], (b, d, *k))
        elif has("lokr_t2"):
            if not (g.kind == "conv" and g.has_spatial_kernel):
                raise FileFormatError(f"module '{name}': lokr_t2 (Tucker) needs a conv layer with a kernel > 1")
            w2_form = "tucker"
            r = tensors["lokr_w2_b"].shape[0] if r is None else r
            cls._check_shape(name, "lokr_t2", tensors["lokr_t2"], (r, r, *k))
            cls._check_shape(name, "lokr_w2_a", tensors["lokr_w2_a"], (r, b))
            cls._check_shape(name, "lokr_w2_b", tensors["lokr_w2_b"], (r, d))
        else:
            w2_form = "lowrank"
            r = tensors["lokr_w2_b"].shape[0] if r is None else r
            cls._check_shape(name, "lokr_w2_a", tensors["lokr_w2_a"], (b, r))
            w2b = tensors["lokr_w2_b"]
            if tuple(w2b.shape) != (r, d * g.k_numel) and w2b.numel() == r * d * g.k_numel:
                w2b = w2b.reshape(r, d * g.k_numel)
            cls._check_shape(name, "lokr_w2_b", w2b, (r, d * g.k_numel))
        if w1_form == "lowrank" and r is not None:
            cls._check_shape(name, "lokr_w1_a", tensors["lokr_w1_a"], (a, r))
        full_full = r is None
        dim = (int(tensors["alpha"].item()) if (full_full and has("alpha") and float(tensors["alpha"]) >= 1)
               else (r or 1))
        alpha = None if r is None else cls._read_alpha(tensors, r)
        opts = AlgoOptions(algo=cls.algo, dim=dim if r is None else r, alpha=alpha, use_tucker=w2_form == "tucker",
                           **cls._load_dora(g, tensors, name, hints))
        layout = {"a": a, "b": b, "c": c, "d": d, "w1": w1_form, "w2": w2_form}
        mod = cls(g, opts, name, initialize=False, layout=layout)
        with torch.no_grad():
            for p in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"):
                if p in tensors:
                    getattr(mod, p).copy_(tensors[p].float().reshape(getattr(mod, p).shape))
        mod._load_dora_tensor(tensors)
        return mod


register(LoKrModule, aliases=("kron",))
