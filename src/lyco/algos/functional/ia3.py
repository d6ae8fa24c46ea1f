"""(IA)³ math: a per-channel scale (1 + m·w) on the output axis (default) or the input axis."""
from __future__ import annotations

import torch

from ..geometry import Geometry


def scales(w: torch.Tensor, m: float = 1.0) -> torch.Tensor:
    """The flat per-channel factors 1 + m·w."""
    return 1 + m * w.reshape(-1)


def scaled_weight(W: torch.Tensor, w: torch.Tensor, on_input: bool) -> torch.Tensor:
    """W'₁ = W scaled per output row, or per input column (fp32)."""
    s = scales(w).float()
    if on_input:
        return W * s.reshape(1, -1, *([1] * (W.dim() - 2)))
    return W * s.reshape(-1, *([1] * (W.dim() - 1)))


def scale_output(z: torch.Tensor, w: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """W'₁x from z = Wx (no bias) for the output-axis form."""
    return z * geom.channel_view(scales(w).to(z.dtype))


def scale_input(x: torch.Tensor, w: torch.Tensor, geom: Geometry, m: float) -> torch.Tensor:
    """The input x scaled per channel by 1 + m·w (repeated per conv group) for the input-axis form."""
    s = scales(w, m)
    if geom.groups > 1:
        s = s.repeat(geom.groups)
    return x * geom.channel_view(s.to(x.dtype))
