"""Layer geometry: what an adapter needs to know about the layer it adapts.

A :class:`Geometry` describes a Linear or ConvNd layer (shape, stride, padding, dilation, groups, padding
mode) and provides the layer's functional op ``op(x, W, b)`` plus the helper convs that factorised adapter
paths use (the first spatial conv of a chain carries the layer's geometry; 1x1 convs use stride 1, no padding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TargetError

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def is_norm(module: nn.Module) -> bool:
    """LayerNorm / GroupNorm / RMSNorm with an affine weight, or an RMSNorm-like module with ``weight`` + ``_norm``."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return False
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith("RMSNorm"):
        return True
    return callable(getattr(module, "_norm", None)) and w.dim() == 1


@dataclass(frozen=True)
class Geometry:
    kind: Literal["linear", "conv", "norm"]
    in_features: int
    out_features: int
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    padding_mode: str = "zeros"
    # True when the base layer is exactly nn.Linear / nn.ConvNd, so its weight can be used in a functional op.
    # Quantised or otherwise opaque layers force the bypass path.
    standard: bool = True
    has_bias: bool = False

    # ----------------------------------------------------------------- derived sizes
    @property
    def is_conv(self) -> bool:
        return self.kind == "conv"

    @property
    def nd(self) -> int:
        return len(self.kernel_size)

    @property
    def in_per_group(self) -> int:
        return self.in_features // self.groups

    @property
    def k_numel(self) -> int:
        return math.prod(self.kernel_size) if self.kernel_size else 1

    @property
    def has_spatial_kernel(self) -> bool:
        """True for convs with some kernel side > 1 (these use ``conv_dim``/``conv_alpha``)."""
        return any(k > 1 for k in self.kernel_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "norm":
            return (self.out_features,)
        if self.kind == "linear":
            return (self.out_features, self.in_features)
        return (self.out_features, self.in_per_group, *self.kernel_size)

    @property
    def ones(self) -> tuple[int, ...]:
        """Trailing singleton dims for a per-channel tensor broadcast against a conv weight."""
        return (1,) * self.nd

    @property
    def fan_in(self) -> int:
        return self.in_per_group * self.k_numel

    def describe(self) -> str:
        if self.kind == "norm":
            return f"Norm({self.out_features})"
        if self.kind == "linear":
            return f"Linear({self.in_features}->{self.out_features})"
        extra = f", stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
        if self.groups != 1:
            extra += f", groups={self.groups}"
        return f"Conv{self.nd}d({self.in_features}->{self.out_features}, k={self.kernel_size}{extra})"

    # ----------------------------------------------------------------- construction
    @staticmethod
    def from_module(module: nn.Module, name: str = "") -> Geometry:
        if isinstance(module, nn.Linear):
            return Geometry("linear", module.in_features, module.out_features, standard=type(module) is nn.Linear,
                            has_bias=module.bias is not None)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return Geometry(
                "conv",
                module.in_channels,
                module.out_channels,
                tuple(module.kernel_size),
                tuple(module.stride),
                module.padding if isinstance(module.padding, str) else tuple(module.padding),
                tuple(module.dilation),
                module.groups,
                module.padding_mode,
                standard=type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d),
                has_bias=module.bias is not None,
            )
        if is_norm(module):
            w = cast(torch.Tensor, module.weight)
            return Geometry("norm", w.numel(), w.numel(), has_bias=getattr(module, "bias", None) is not None)
        # Linear-like layers from quantisation libraries (bitsandbytes, quanto, torchao ...): bypass only.
        if hasattr(module, "in_features") and hasattr(module, "out_features") and hasattr(module, "weight"):
            q: Any = module
            return Geometry("linear", int(q.in_features), int(q.out_features), standard=False,
                            has_bias=getattr(module, "bias", None) is not None)
        raise TargetError(
            f"module {name or type(module).__name__!r} ({type(module).__name__}) is not a layer lyco can adapt; "
            "supported: Linear (and Linear-like quantised layers), Conv1d/2d/3d, and with train_norm LayerNorm, "
            "GroupNorm and RMSNorm-like layers"
        )

    @staticmethod
    def of_weight_shape(shape: tuple[int, ...], has_bias: bool = False) -> Geometry:
        """A plain layer with this weight shape: Linear for (O, I), an unpadded stride-1 ConvNd for (O, I, k...)."""
        if len(shape) == 1:
            return Geometry("norm", shape[0], shape[0], has_bias=has_bias)
        if len(shape) == 2:
            return Geometry("linear", shape[1], shape[0], has_bias=has_bias)
        n = len(shape) - 2
        return Geometry("conv", shape[1], shape[0], tuple(shape[2:]), (1,) * n, (0,) * n, (1,) * n, has_bias=has_bias)

    # ----------------------------------------------------------------- functional ops
    def _pad_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | str | int]:
        """Apply non-zero padding modes explicitly; return (input, padding for the conv call)."""
        if self.padding_mode == "zeros":
            return x, self.padding
        pad = self.padding
        if isinstance(pad, str):
            if pad == "valid":
                return x, 0
            # 'same': total padding d*(k-1), split as torch does (left = total // 2)
            pairs: list[int] = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size)):
                total = d * (k - 1)
                pairs += [total // 2, total - total // 2]
        else:
            pairs = [p for p in reversed(pad) for _ in range(2)]
        return F.pad(x, pairs, mode=self.padding_mode), 0

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's own op with an arbitrary weight (and bias)."""
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        x, padding = self._pad_input(x)
        return _CONV_FN[self.nd](x, weight, bias, self.stride, padding, self.dilation, self.groups)

    def spatial_conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """First conv of an adapter chain: the layer's stride/padding/dilation, given groups."""
        x, padding = self._pad_input(x)
        return _CONV_FN[self.nd](x, weight, None, self.stride, padding, self.dilation, groups)

    def pointwise(self, x: torch.Tensor, weight2d: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """A 1x1 conv (or a matmul for Linear) with a 2-D weight (out, in/groups)."""
        if self.kind == "linear":
            return F.linear(x, weight2d)
        return _CONV_FN[self.nd](x, weight2d.reshape(*weight2d.shape, *self.ones), None, 1, 0, 1, groups)

    def core_conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A k-conv in the middle of a Tucker chain (its input has already been through a 1x1 conv)."""
        return self.spatial_conv(x, weight, 1)

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """Reshape a per-channel vector (C,) to broadcast over this layer's activations' channel axis."""
        if self.kind == "linear":
            return v
        return v.reshape(-1, *self.ones)

    @property
    def channel_dim(self) -> int:
        return -1 if self.kind == "linear" else 1
