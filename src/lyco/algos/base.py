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
``docs/adding-an-algorithm.md``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, FileFormatError
from .functional import dora as dora_f
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
        return fn()
    return base.weight, getattr(base, "bias", None)


def weight_expressible(base: nn.Module) -> bool:
    """Whether ``op(x, base_weight(base), base_bias(base))`` equals ``base(x)`` exactly."""
    fn = getattr(base, "weight_expressible", None)
    if callable(fn):
        return fn()
    return type(base) in STANDARD_LAYERS


def _kind(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')} of shape {tuple(t.shape)}"


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
        self.dora_axis: str | None = None
        if opts.dora_wd:
            self.dora_axis = "out" if opts.wd_on_output else "in"
            shape = dora_f.scale_shape(geom.weight_shape, self.dora_axis)
            if base_weight is not None:
                init = dora_f.norms(base_weight.detach(), self.dora_axis).reshape(shape)
            elif initialize:
                raise ConfigError(f"{name}: DoRA needs the base weight to initialise dora_scale")
            else:
                init = torch.zeros(shape)  # filled from a file
            self.dora_scale = nn.Parameter(init)

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
        ds = parts.get("dora_scale")
        if ds is None:
            return []
        if ds.dim() <= 1:
            return ["dora-1d"]
        on_input = ds.shape[0] == 1 and ds.shape[1] > 1
        return [cls.dora_features[0] if on_input else cls.dora_features[1]]

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
        warnings: list[str] = []
        for part in sorted(parts):
            t = parts[part]
            key = f"{name}.{part}"
            if part in cls.integer_parts:  # int64 in lyco's files; the reference writes them in the save dtype
                v = t.double().item() if t.numel() == 1 and not t.is_complex() else float("nan")
                if not (math.isfinite(v) and v == int(v)):
                    raise FileFormatError(f"key '{key}' must be one integer (got {_kind(t)})")
                continue
            if t.numel() == 0:
                raise FileFormatError(f"key '{key}' is empty (shape {tuple(t.shape)}); the file is corrupt or was "
                                      "written with rank 0")
            if not t.is_floating_point():
                raise FileFormatError(f"key '{key}' has dtype {str(t.dtype).replace('torch.', '')}; adapter tensors "
                                      "are floating point (the file is corrupt or not an adapter)")
            if part in cls.scalar_parts and t.numel() != 1:
                raise FileFormatError(f"key '{key}' must hold one number but has shape {tuple(t.shape)}")
            if part in cls.scalar_parts and t.dim() > 0:
                warnings.append(f"key '{key}' has shape {tuple(t.shape)} instead of a 0-d scalar; read as one number")
            if not allow_nonfinite and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise FileFormatError(f"key '{key}' contains {bad} NaN/Inf value(s) of {t.numel()}; the adapter is "
                                      "broken (training diverged?). Pass allow_nonfinite=True to load it anyway")
        return warnings

    @classmethod
    def from_file(
        cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str, hints: dict[str, Any]
    ) -> AdapterModule:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers for subclasses
    @staticmethod
    def _cast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t if t.dtype == like.dtype else t.to(like.dtype)

    def _export_common(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.scaled:
            out["alpha"] = torch.tensor(self.saved_alpha(), dtype=torch.float32)
        if self.dora_axis is not None:
            out["dora_scale"] = self.dora_scale.detach().float().clone()
        return out

    @staticmethod
    def _check_shape(name: str, part: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
        if tuple(t.shape) != tuple(expected):
            raise FileFormatError(
                f"key '{name}.{part}' has shape {tuple(t.shape)} but the model's layer needs {tuple(expected)}; "
                "the file was made for a different model (or a different layer size)"
            )

    @staticmethod
    def _read_alpha(tensors: dict[str, torch.Tensor], rank: int) -> float:
        if "scale" in tensors:  # A1111 extension: explicit scale overrides alpha/rank
            return float(tensors["scale"].float().item()) * rank
        if "alpha" in tensors:
            a = float(tensors["alpha"].float().item())
            return a if a else float(rank)
        return float(rank)

    @classmethod
    def _load_dora(cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str, hints: dict[str, Any]) -> dict:
        """Options and shape check for an optional ``dora_scale``."""
        if "dora_scale" not in tensors:
            return {}
        if not cls.supports_dora:
            raise FileFormatError(f"module '{name}': dora_scale is only valid with lora, loha or lokr keys")
        shape = tuple(tensors["dora_scale"].shape)
        o, i_g = geom.out_features, geom.in_per_group
        out_shape = dora_f.scale_shape(geom.weight_shape, "out")
        in_shape = dora_f.scale_shape(geom.weight_shape, "in")
        peft_conv_out = (1, o, *geom.ones) if geom.kind == "conv" else None
        if shape == in_shape and ((geom.kind == "conv" and o == i_g) or shape == out_shape):
            # (1, C, 1...) with C = O = I_g: LyCORIS input axis, or a diffusers-converted PEFT magnitude
            axis = hints.get("dora_axis")
            if axis is None:
                axis = "in"
                hints.setdefault("warnings", []).append(
                    f"{name}: dora_scale {shape} is ambiguous (O = I_g); assumed input axis")
        elif shape == in_shape:
            axis = "in"
        elif shape in (out_shape, (o,), peft_conv_out):
            axis = "out"
        else:
            raise FileFormatError(
                f"key '{name}.dora_scale' has shape {shape}; expected {out_shape} (output axis) or {in_shape} "
                "(input axis) for this layer"
            )
        return {"dora_wd": True, "wd_on_output": axis == "out"}

    def _load_dora_tensor(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.dora_axis is not None:
            with torch.no_grad():
                self.dora_scale.copy_(tensors["dora_scale"].float().reshape(self.dora_scale.shape))

    # ------------------------------------------------------------------ weights
    def delta_weight(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """s·c·ΔW_raw in fp32."""
        return self.t() * self.delta_raw(mask)

    def adapted_weight(
        self, W: torch.Tensor, b: torch.Tensor | None, m: float, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W'(m), b'(m)) in the dtypes of W and b."""
        dW = self.delta_weight(mask)
        if self.dora_axis is None:
            W2 = W.float() + (dW if m == 1 else m * dW)
            db = self.delta_bias(mask)
            if db is not None and b is not None:
                b = (b.float() + (db if m == 1 else m * db)).to(b.dtype)
            return W2.to(W.dtype), b
        W1 = dora_f.decomposed_weight(W, dW, self.dora_scale, self.dora_axis, self.opts.dora_detach_norm)
        if m != 1:
            Wf = W.float()
            W1 = Wf + m * (W1 - Wf)
        return W1.to(W.dtype), b

    # ------------------------------------------------------------------ forward
    def use_rebuild(self, base: nn.Module) -> bool:
        g, o = self.geom, self.opts
        if (o.dropout > 0 and self.training) or not weight_expressible(base):
            return False
        if g.groups > 1 and not self.grouped_bypass:
            return True
        if o.path != "auto":
            return o.path == "rebuild"
        auto = self.__dict__.get("_auto_rebuild")
        if auto is None:  # per-token cost rule: rebuild when the dense op costs ≤ 3× the bypass; fixed for life
            auto = self.__dict__["_auto_rebuild"] = 3 * self.bypass_cost() >= g.out_features * g.in_per_group * g.k_numel
        return auto

    def draw_mask(self, device: torch.device) -> torch.Tensor | None:
        if not (self.training and self.opts.rank_dropout > 0):
            return None
        return rank_dropout_mask(self.mask_size(), self.opts.rank_dropout, self.opts.rank_dropout_scale, device)

    def forward(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        m = self.multiplier
        if m == 0:
            return base(x)
        if self.training and self.opts.module_dropout > 0 and torch.rand(()) < self.opts.module_dropout:
            return base(x)
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

    def _base_nobias(self, x: torch.Tensor, base: nn.Module, W: torch.Tensor, b: torch.Tensor | None):
        if type(base) in STANDARD_LAYERS and self.geom.standard:
            return self.geom.op(x, W, None)
        y = base(x)
        return y if b is None else y - self.geom.channel_view(b.to(y.dtype))

    def bypass(self, x: torch.Tensor, base: nn.Module, m: float, mask: torch.Tensor | None) -> torch.Tensor:
        if self.dora_axis is not None:
            return self._dora_bypass(x, base, m, mask)
        t = self._t_for(x)
        plain = isinstance(t, float) and not (self.opts.dropout > 0 and self.training)
        if plain:
            wb = fused.frozen_linear(base)
            y = None if wb is None else self.fused_linear(x, wb[0], wb[1], mask, t * m)
            if y is not None:
                return y
        y = base(x)
        if plain:
            out = self.add_scaled_delta(y, x, mask, t * m)
            if out is not None:
                return out
        d = self.apply_delta(x, mask)
        if self.opts.dropout > 0 and self.training:
            d = F.dropout(d, self.opts.dropout, training=True)
        db = self.delta_bias(mask)
        if db is not None:
            d = d + self.geom.channel_view(db.to(d.dtype))
        return y + d if m == 1 else y + m * d

    def linear_kernel(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[Any, list[torch.Tensor]] | None:
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

    # ------------------------------------------------------------------ DoRA
    def dora_norms(self, W: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """‖W + s·c·ΔW_raw‖ per channel of the DoRA axis (flat fp32), without building W + ΔW when possible."""
        lr = self.lowrank(mask)
        if lr is not None:
            return dora_f.lowrank_norms(W, lr[0], lr[1], self.t(), self.dora_axis, self.weight_sq_norms(W))
        return dora_f.dense_norms(W, self.delta_weight(mask), self.dora_axis)

    def weight_sq_norms(self, W: torch.Tensor) -> torch.Tensor:
        """‖W‖² per channel of the DoRA axis (fp32), cached while the frozen weight is unchanged (same storage,
        same in-place version); a weight that requires grad (a stacked adapter below) is never cached."""
        if W.requires_grad:
            return dora_f.sq_norms(W, self.dora_axis)
        key = (W.data_ptr(), W._version, tuple(W.shape), W.dtype, W.device, self.dora_axis)
        hit = self.__dict__.get("_wsq")
        if hit is None or hit[0] != key:
            hit = self.__dict__["_wsq"] = (key, dora_f.sq_norms(W.detach(), self.dora_axis))
        return hit[1]

    def _dora_bypass(self, x, base, m, mask):
        W, b = base_params(base)
        n = self.dora_norms(W, mask)
        if self.opts.dora_detach_norm:
            n = n.detach()
        g = self.dora_scale.reshape(-1) / (n + dora_f.EPS)
        if self.dora_axis == "in" and self.geom.groups > 1:  # per input channel within a group: same for every group
            g = g.repeat(self.geom.groups)
        t = self._t_for(x)
        if m == 1 and isinstance(t, float):
            y = self._dora_fused(x, base, W, b, g, mask, t)
            if y is not None:
                return y
        cv = self.geom.channel_view
        if self.dora_axis == "out":
            z = self._base_nobias(x, base, W, b)
            gz = cv(g.to(z.dtype))
            adapted = gz * (z + self.apply_delta(x, mask))
            y = adapted if m == 1 else z + m * (adapted - z)
        else:
            xh = x * cv(g.to(x.dtype))
            y = self._base_nobias(xh, base, W, b) + self.apply_delta(xh, mask)
            if m != 1:
                y = (1 - m) * self._base_nobias(x, base, W, b) + m * y
        return y if b is None else y + cv(b.to(y.dtype))

    def _dora_fused(self, x, base, W, b, g, mask, t: float) -> torch.Tensor | None:
        """DoRA at multiplier 1 with the delta fused into the base op's output: one autograd node on a frozen
        plain Linear, otherwise one (b)addmm plus one addcmul (output axis) or a biased base op (input axis)."""
        wb = fused.frozen_linear(base)
        if wb is not None:
            k = self.linear_kernel(x, mask)
            if k is not None:
                fn = fused.FusedDoraOut if self.dora_axis == "out" else fused.FusedDoraIn
                return fused.run(fn, x, W, b, g, k[0], t, k[1])
        if not (type(base) in STANDARD_LAYERS and self.geom.standard):
            return None
        cv = self.geom.channel_view
        if self.dora_axis == "out":
            z = self.geom.op(x, W, None)
            zd = self.add_scaled_delta(z, x, mask, t)
            if zd is None:
                zd = z + self.apply_delta(x, mask)
            gz = cv(g.to(zd.dtype))
            return zd * gz if b is None else torch.addcmul(cv(b.to(zd.dtype)), zd, gz)
        xh = x * cv(g.to(x.dtype))
        y = self.geom.op(xh, W, b)
        out = self.add_scaled_delta(y, xh, mask, t)
        return y + self.apply_delta(xh, mask) if out is None else out

    def extra_repr(self) -> str:
        return f"{self.algo}, {self.geom.describe()}, rank={self.rank}" + (f", dora={self.dora_axis}" if self.dora_axis else "")
