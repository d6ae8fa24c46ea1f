"""Shared base of the algorithms that take DoRA's weight decomposition (LoRA/LoCon, LoHa, LoKr).

With ``dora_wd`` a :class:`DoraModule` learns a magnitude ``dora_scale`` per channel of one axis (``"out"`` with
``wd_on_output``, else ``"in"``) and adapts the layer to W'₁ = (W + ΔW) · d / ‖W + ΔW‖; without it, it is the plain
additive algorithm of :class:`~lyco.algos.base.AdapterModule`.  The tensor math is in
:mod:`lyco.algos.functional.dora`; this class adds the parameter, the file part, the merged weight and the bypass
forward (with the norms computed from the factors when ΔW is low-rank, and ‖W‖² cached while the frozen weight is
unchanged).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..errors import ConfigError, FileFormatError
from . import parts as part_checks
from .base import STANDARD_LAYERS, AdapterModule, base_params
from .functional import dora as dora_f
from .functional import fused
from .geometry import Geometry
from .options import AlgoOptions


class DoraModule(AdapterModule):
    supports_dora: ClassVar[bool] = True

    dora_scale: nn.Parameter

    def __init__(
        self,
        geom: Geometry,
        opts: AlgoOptions,
        name: str = "",
        base_weight: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        initialize: bool = True,
    ) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
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

    @property
    def _axis(self) -> str:
        """The DoRA axis of a module with DoRA (the DoRA paths run only when :attr:`dora_axis` is set)."""
        assert self.dora_axis is not None
        return self.dora_axis

    # ------------------------------------------------------------------ files
    def _export_common(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super()._export_common(out)
        if self.dora_axis is not None:
            out["dora_scale"] = self.dora_scale.detach().float().clone()
        return out

    @classmethod
    def _load_dora(cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str,
                   hints: dict[str, Any]) -> dict[str, Any]:
        """Options and shape check for an optional ``dora_scale``."""
        if "dora_scale" not in tensors:
            return {}
        if not cls.supports_dora:
            raise FileFormatError(f"module '{name}': dora_scale is only valid with lora, loha or lokr keys")
        return {"dora_wd": True, "wd_on_output": part_checks.dora_axis(geom, tensors, name, hints) == "out"}

    def _load_dora_tensor(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.dora_axis is not None:
            with torch.no_grad():
                self.dora_scale.copy_(tensors["dora_scale"].float().reshape(self.dora_scale.shape))

    # ------------------------------------------------------------------ weights
    def adapted_weight(
        self, W: torch.Tensor, b: torch.Tensor | None, m: float, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.dora_axis is None:
            return super().adapted_weight(W, b, m, mask)
        dW = self.delta_weight(mask)
        W1 = dora_f.decomposed_weight(W, dW, self.dora_scale, self.dora_axis, self.opts.dora_detach_norm)
        if m != 1:
            Wf = W.float()
            W1 = Wf + m * (W1 - Wf)
        return W1.to(W.dtype), b

    def dora_norms(self, W: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """‖W + s·c·ΔW_raw‖ per channel of the DoRA axis (flat fp32), without building W + ΔW when possible."""
        lr = self.lowrank(mask)
        if lr is not None:
            return dora_f.lowrank_norms(W, lr[0], lr[1], self.t(), self._axis, self.weight_sq_norms(W))
        return dora_f.dense_norms(W, self.delta_weight(mask), self._axis)

    def weight_sq_norms(self, W: torch.Tensor) -> torch.Tensor:
        """‖W‖² per channel of the DoRA axis (fp32), cached while the frozen weight is unchanged (same storage,
        same in-place version); a weight that requires grad (a stacked adapter below) is never cached."""
        if W.requires_grad:
            return dora_f.sq_norms(W, self._axis)
        key = (W.data_ptr(), W._version, tuple(W.shape), W.dtype, W.device, self.dora_axis)
        hit: tuple[tuple[Any, ...], torch.Tensor] | None = self.__dict__.get("_wsq")
        if hit is None or hit[0] != key:
            hit = self.__dict__["_wsq"] = (key, dora_f.sq_norms(W.detach(), self._axis))
        return hit[1]

    # ------------------------------------------------------------------ forward
    def bypass(self, x: torch.Tensor, base: nn.Module, m: float, mask: torch.Tensor | None) -> torch.Tensor:
        if self.dora_axis is None:
            return super().bypass(x, base, m, mask)
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

    def _dora_fused(self, x: torch.Tensor, base: nn.Module, W: torch.Tensor, b: torch.Tensor | None,
                    g: torch.Tensor, mask: torch.Tensor | None, t: float) -> torch.Tensor | None:
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
