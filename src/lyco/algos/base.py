"""The thin shared base of every adapter algorithm.

An :class:`AdapterModule` owns only the adapter's parameters.  It is called as ``adapter(x, base)`` where
``base`` is the module below it (the original layer, or another lyco wrapper when networks are stacked), and
implements three execution paths:

* **rebuild**: ``op(x, W'(m), b'(m))`` - one op on the adapted weight;
* **bypass**: ``base(x) + m·δ(x)`` for additive algorithms, or the factorised multiplicative form;
* **merge**: :meth:`adapted_weight` is written into the layer by the wrapper.

Algorithms implement a handful of hooks (``delta_raw``, ``apply_raw``, ``lowrank``, ``bypass_cost``,
``export``, ``from_file``, ``detect``), declare their capabilities as class attributes (``layer_kinds``,
``stochastic_graph``, ``truncatable``, ``support`` ...) and register themselves in :mod:`lyco.algos.registry`.
Everything the rest of lyco needs to know about an algorithm is asked of its class; see
``docs/adding-an-algorithm.md``.  DoRA lives on :class:`~lyco.algos.dora.DoraModule` (the base of the algorithms
that take it), and the checks of a module's tensors in a file in :mod:`lyco.algos.parts`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from . import parts as part_checks
from .functional import fused
from .functional.common import rank_dropout_mask
from .geometry import Geometry
from .options import AlgoOptions
from .support import FileSummary, Support

STANDARD_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def base_params(base: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (effective) weight and bias of the module below an adapter."""
    fn = getattr(base, "effective_params", None)
    if callable(fn):
        return cast(tuple[torch.Tensor, torch.Tensor | None], fn())
    return cast(torch.Tensor, base.weight), getattr(base, "bias", None)


def weight_expressible(base: nn.Module) -> bool:
    """Whether ``op(x, base_weight(base), base_bias(base))`` equals ``base(x)`` exactly."""
    fn = getattr(base, "weight_expressible", None)
    if callable(fn):
        return cast(bool, fn())
    return type(base) in STANDARD_LAYERS


class AdapterModule(nn.Module):
    """Base class of every algorithm (one instance adapts one layer)."""

    algo: ClassVar[str] = ""
    #: every tensor name (after ``<module>.``) this algorithm reads and writes
    file_parts: ClassVar[frozenset[str]] = frozenset()
    #: parts stored as integers (every other part must be floating point)
    integer_parts: ClassVar[frozenset[str]] = frozenset()
    #: parts that hold one number (0-d)
    scalar_parts: ClassVar[frozenset[str]] = frozenset({"alpha", "scale"})
    #: the layer kinds (:attr:`Geometry.kind`) the algorithm adapts
    layer_kinds: ClassVar[frozenset[str]] = frozenset({"linear", "conv"})
    supports_dora: ClassVar[bool] = False
    #: a training step may leave some adapter parameters without a gradient (DDP needs find_unused_parameters)
    stochastic_graph: ClassVar[bool] = False
    #: files can be written at a lower rank than the module trains (:meth:`export_truncated`)
    truncatable: ClassVar[bool] = False
    #: support-matrix rows (feature -> :class:`Support`) of the features :meth:`file_features` reports
    support: ClassVar[Mapping[str, Support]] = {}
    #: DoRA feature names on the (input, output) axis for this algorithm (InvokeAI and PEFT have DoRA on LoRA only)
    dora_features: ClassVar[tuple[str, str]] = ("dora-in-not-lora", "dora-out-not-lora")
    #: the bypass path handles groups > 1 itself (otherwise grouped convs use rebuild)
    grouped_bypass: ClassVar[bool] = False
    #: additive algorithms use W + m·ΔW; multiplicative ones W + m·(W'₁ - W) and never touch the bias
    multiplicative: ClassVar[bool] = False
    #: uses alpha/rank scaling (and therefore rs-LoRA and the learned scalar)
    scaled: ClassVar[bool] = True
    #: neuron dropout / rank dropout are meaningful for this algorithm
    allows_dropout: ClassVar[bool] = True
    allows_rank_dropout: ClassVar[bool] = True

    def __init__(
        self,
        geom: Geometry,
        opts: AlgoOptions,
        name: str = "",
        base_weight: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        initialize: bool = True,
    ) -> None:
        super().__init__()
        self.geom = geom
        self.opts = opts
        self.name = name
        self.multiplier: float = 1.0
        self._validate_options()
        if opts.use_scalar and self.scaled:
            self.scalar = nn.Parameter(torch.zeros(()))
        else:
            # 1.0 unless max-norm regularisation scales it; folded into a factor on save
            self.register_buffer("scalar", torch.ones(()))
        #: the axis of DoRA's magnitude, None without DoRA (set by :class:`~lyco.algos.dora.DoraModule`)
        self.dora_axis: str | None = None

    # ------------------------------------------------------------------ validation
    def _err(self, msg: str) -> ConfigError:
        return ConfigError(f"{self.name or self.algo} ({self.geom.describe()}), algo {self.algo!r}: {msg}")

    def _validate_options(self) -> None:
        o, g = self.opts, self.geom
        if g.kind not in self.layer_kinds:
            raise self._err(f"this algorithm adapts {' and '.join(sorted(self.layer_kinds))} layers only")
        if o.dora_wd and not self.supports_dora:
            raise self._err("DoRA (dora_wd) is defined for lora/locon, loha and lokr only")
        for field in ("dropout", "rank_dropout", "module_dropout"):
            v = getattr(o, field)
            if not 0.0 <= v < 1.0:
                raise self._err(f"{field} must be in [0, 1), got {v}")
        if o.dropout > 0 and (o.dora_wd or self.multiplicative or not self.allows_dropout):
            raise self._err("neuron dropout applies to additive algorithms without DoRA only; use rank_dropout "
                            "or module_dropout instead")
        if o.rank_dropout > 0 and not self.allows_rank_dropout:
            raise self._err("rank_dropout would break this algorithm's structure; use module_dropout instead")
        if o.dropout > 0 and g.groups > 1 and not self.grouped_bypass:
            raise self._err("neuron dropout needs the bypass path, which this algorithm lacks for grouped convs")
        if o.path not in ("auto", "bypass", "rebuild"):
            raise self._err(f"path must be 'auto', 'bypass' or 'rebuild', got {o.path!r}")
        if not g.standard and g.groups > 1 and not self.grouped_bypass:
            raise self._err("cannot adapt a non-standard grouped layer")

    # ------------------------------------------------------------------ algorithm hooks
    @property
    def rank(self) -> int:
        return self.opts.dim

    def scale(self) -> float:
        """s = alpha / r_f (r_f = sqrt(r) with rs-LoRA); alpha None or 0 means alpha = r.  1 for unscaled algorithms."""
        if not self.scaled:
            return 1.0
        r = self.rank
        alpha = self.opts.alpha if self.opts.alpha else r
        r_f = r ** 0.5 if self.opts.rs_lora else r
        return float(alpha) / r_f

    def saved_alpha(self) -> float:
        """The alpha written to files: every consumer computes alpha/rank, so rs-LoRA is folded in."""
        return self.scale() * self.rank

    def t(self) -> torch.Tensor:
        """s·c as a 0-d fp32 tensor."""
        return self.scalar.float() * self.scale()

    def _t_for(self, like: torch.Tensor) -> torch.Tensor | float:
        """s·c for multiplying an activation: a plain float when there is no learned scalar (one op less)."""
        if isinstance(self.scalar, nn.Parameter):
            return self.t().to(like.dtype)
        # the buffer's value, read once per change (a GPU read synchronises): max-norm and state loading write it in
        # place, which bumps its version; moving it to another device changes its storage
        s = self.scalar
        key = (s._version, s.data_ptr())
        hit = self.__dict__.get("_scalar_value")
        if hit is None or hit[0] != key:
            hit = self.__dict__["_scalar_value"] = (key, float(s))
        return self.scale() * hit[1]

    def delta_raw(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW_raw (fp32, the layer's weight shape); rank-dropout ``mask`` applied."""
        raise NotImplementedError

    def delta_bias(self, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Δb (already scaled), or None."""
        return None

    def apply_raw(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW_raw applied to x with the layer's geometry (factorised; dtype of x)."""
        raise NotImplementedError

    def lowrank(self, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(U, V) with ΔW_raw = U @ V (V flattened over I_g*K), when cheap; used for DoRA norms."""
        return None

    def bypass_cost(self) -> int:
        """Per-token multiply-accumulates of the factorised δ(x)."""
        raise NotImplementedError

    def mask_size(self) -> int:
        """Length of the rank-dropout mask (output rows by default)."""
        return self.geom.out_features

    def export(self) -> dict[str, torch.Tensor]:
        """File tensors (fp32, folded: rs-LoRA in alpha, the scalar in one factor)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Resolved hyper-parameters recorded in the file's metadata."""
        d: dict[str, Any] = {"algo": self.algo}
        if self.scaled:
            d.update(rank=self.rank, alpha=self.saved_alpha())
        if self.dora_axis:
            d["dora_axis"] = self.dora_axis
        return d

    def export_truncated(self, rank: int) -> dict[str, torch.Tensor]:
        """File tensors at a lower ``rank`` (only for :attr:`truncatable` algorithms)."""
        raise self._err("this algorithm cannot write its file at another rank")

    @classmethod
    def needs_find_unused(cls, opts: AlgoOptions) -> bool:
        """Whether a training step with these options may leave parameters without a gradient (DDP's
        ``find_unused_parameters``): module dropout skips whole modules; stochastic algorithms skip parts."""
        return cls.stochastic_graph or opts.module_dropout > 0

    @classmethod
    def detect(cls, tensors: dict[str, torch.Tensor]) -> bool:
        """Whether a module's tensors (part name -> tensor) are this algorithm's."""
        raise NotImplementedError

    # ------------------------------------------------------------------ what tools ask of a file's module
    @classmethod
    def file_features(cls, name: str, parts: dict[str, torch.Tensor]) -> list[str]:
        """The support-matrix features (keys of :attr:`support` / DORA_SUPPORT) one module of a file uses."""
        return [cls.algo, *cls._dora_file_features(parts)]

    @classmethod
    def _dora_file_features(cls, parts: dict[str, torch.Tensor]) -> list[str]:
        return part_checks.dora_features(parts, cls.dora_features)

    @classmethod
    def file_summary(cls, parts: dict[str, torch.Tensor]) -> FileSummary:
        """Rank, variant tags and factor layout of one module of a file (for ``lyco inspect``)."""
        return FileSummary(tags=("dora",) if "dora_scale" in parts else ())

    @classmethod
    def portable_parts(cls, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """An exact rewrite of one module's tensors into a more widely loaded form, from the file alone (None: this
        algorithm has none); ``lyco convert --to ui-safe --for CLIENT`` uses it before falling back to the base
        model."""
        return None

    @classmethod
    def file_geometry(cls, parts: dict[str, torch.Tensor]) -> Geometry | None:
        """A layer geometry consistent with a module's tensors, enough to rebuild ΔW from the file alone
        (None: ΔW needs the base layer's weight).  The kernel of a flattened conv factor may be folded into the
        input size: the Frobenius norm of ΔW does not depend on it."""
        return None

    @classmethod
    def delta_from_file(cls, parts: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """s·ΔW (fp32) from one module's tensors alone, through the same code that loads the module; None when
        it needs the base weight (multiplicative algorithms, DoRA, GLoRA)."""
        if cls.multiplicative or "dora_scale" in parts:
            return None
        geom = cls.file_geometry(parts)
        if geom is None:
            return None
        mod = cls.from_file(geom, parts, "", {})
        with torch.no_grad():
            return mod.delta_weight()

    @classmethod
    def check_file_tensors(cls, name: str, parts: dict[str, torch.Tensor], allow_nonfinite: bool = False) -> list[str]:
        """Dtypes, finiteness and scalar parts of one module of a file: raises FileFormatError naming the key, and
        returns warnings for what is read in a tolerated way."""
        return part_checks.check_tensors(name, parts, cls.integer_parts, cls.scalar_parts, allow_nonfinite)

    @classmethod
    def from_file(
        cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str, hints: dict[str, Any]
    ) -> Self:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers for subclasses
    @staticmethod
    def _cast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t if t.dtype == like.dtype else t.to(like.dtype)

    def _export_common(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.scaled:
            out["alpha"] = torch.tensor(self.saved_alpha(), dtype=torch.float32)
        return out

    _check_shape = staticmethod(part_checks.check_shape)
    _read_alpha = staticmethod(part_checks.read_alpha)

    # ------------------------------------------------------------------ weights
    def delta_weight(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """s·c·ΔW_raw in fp32."""
        return self.t() * self.delta_raw(mask)

    def adapted_weight(
        self, W: torch.Tensor, b: torch.Tensor | None, m: float, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W'(m), b'(m)) in the dtypes of W and b."""
        dW = self.delta_weight(mask)
        W2 = W.float() + (dW if m == 1 else m * dW)
        db = self.delta_bias(mask)
        if db is not None and b is not None:
            b = (b.float() + (db if m == 1 else m * db)).to(b.dtype)
        return W2.to(W.dtype), b

    # ------------------------------------------------------------------ forward
    def use_rebuild(self, base: nn.Module) -> bool:
        g, o = self.geom, self.opts
        if (o.dropout > 0 and self.training) or not weight_expressible(base):
            return False
        if g.groups > 1 and not self.grouped_bypass:
            return True
        if o.path != "auto":
            return o.path == "rebuild"
        auto: bool | None = self.__dict__.get("_auto_rebuild")
        if auto is None:  # per-token cost rule: rebuild when the dense op costs ≤ 3× the bypass; fixed for life
            dense = g.out_features * g.in_per_group * g.k_numel
            auto = self.__dict__["_auto_rebuild"] = 3 * self.bypass_cost() >= dense
        return auto

    def draw_mask(self, device: torch.device) -> torch.Tensor | None:
        if not (self.training and self.opts.rank_dropout > 0):
            return None
        return rank_dropout_mask(self.mask_size(), self.opts.rank_dropout, self.opts.rank_dropout_scale, device)

    def forward(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        m = self.multiplier
        if m == 0 or (self.training and self.opts.module_dropout > 0 and torch.rand(()) < self.opts.module_dropout):
            return cast(torch.Tensor, base(x))
        mask = self.draw_mask(x.device)
        if self.use_rebuild(base):
            return self.rebuild(x, base, m, mask)
        return self.bypass(x, base, m, mask)

    def rebuild(self, x: torch.Tensor, base: nn.Module, m: float, mask: torch.Tensor | None) -> torch.Tensor:
        """op(x, W'(m), b'(m)): one op on the adapted weight."""
        W, b = base_params(base)
        W2, b2 = self.adapted_weight(W, b, m, mask)
        return self.geom.op(x, W2, b2)

    def apply_delta(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """s·c·ΔW_raw·x (the additive bypass delta)."""
        y = self.apply_raw(x, mask)
        t = self._t_for(y)
        return y if (isinstance(t, float) and t == 1.0) else y * t

    def _base_nobias(self, x: torch.Tensor, base: nn.Module, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if type(base) in STANDARD_LAYERS and self.geom.standard:
            return self.geom.op(x, W, None)
        y: torch.Tensor = base(x)
        return y if b is None else y - self.geom.channel_view(b.to(y.dtype))

    def bypass(self, x: torch.Tensor, base: nn.Module, m: float, mask: torch.Tensor | None) -> torch.Tensor:
        t = self._t_for(x)
        # a plain float scale (no learned scalar) and no neuron dropout: the fused paths apply
        plain = t if isinstance(t, float) and not (self.opts.dropout > 0 and self.training) else None
        if plain is not None:
            wb = fused.frozen_linear(base)
            fy = None if wb is None else self.fused_linear(x, wb[0], wb[1], mask, plain * m)
            if fy is not None:
                return fy
        y: torch.Tensor = base(x)
        if plain is not None:
            out = self.add_scaled_delta(y, x, mask, plain * m)
            if out is not None:
                return out
        d = self.apply_delta(x, mask)
        if self.opts.dropout > 0 and self.training:
            d = F.dropout(d, self.opts.dropout, training=True)
        db = self.delta_bias(mask)
        if db is not None:
            d = d + self.geom.channel_view(db.to(d.dtype))
        return y + d if m == 1 else y + m * d

    def linear_kernel(self, x: torch.Tensor, mask: torch.Tensor | None) -> fused.KernelCall | None:
        """A kernel of :mod:`.functional.fused` for ΔW_raw on a Linear layer and the tensors it takes (in x's
        dtype), or None when the algorithm has none for this case."""
        return None

    def fused_linear(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, mask: torch.Tensor | None,
                     alpha: float) -> torch.Tensor | None:
        """x·Wᵀ + b + alpha·ΔW_raw·x in one fused autograd node (a frozen plain Linear), or None."""
        k = self.linear_kernel(x, mask)
        if k is None:
            return None
        return fused.run(fused.FusedLinear, x, W, b, None, k[0], alpha, k[1])

    def add_scaled_delta(self, y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None,
                         alpha: float) -> torch.Tensor | None:
        """y + alpha·ΔW_raw·x in fewer ops, when the algorithm can fuse it (None: use the generic path)."""
        return None

    def _add_lowrank(self, y: torch.Tensor, h: torch.Tensor, u: torch.Tensor, alpha: float) -> torch.Tensor | None:
        """y + alpha·U·h as one (b)addmm, for h = V·x in the activation layout (R channels) and U (O, R)."""
        u = self._cast(u, y)
        if self.geom.kind == "linear":
            o = y.shape[-1]
            return torch.addmm(y.reshape(-1, o), h.reshape(-1, h.shape[-1]), u.t(), alpha=alpha).view(y.shape)
        if h.shape[2:] != y.shape[2:]:
            return None
        n, o = y.shape[:2]
        out = torch.baddbmm(y.reshape(n, o, -1), u.expand(n, *u.shape), h.reshape(n, h.shape[1], -1), alpha=alpha)
        return out.view(y.shape)

    def extra_repr(self) -> str:
        dora = f", dora={self.dora_axis}" if self.dora_axis else ""
        return f"{self.algo}, {self.geom.describe()}, rank={self.rank}{dora}"
