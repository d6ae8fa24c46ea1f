"""The wrapper that puts an adapter in place of a layer (PEFT-style injection).

``LycoLayer(base_layer, adapter)`` sits where the original layer was, so the adapter's parameters are real
submodules of the model (DDP and ``model.to()`` see them).  Networks stack by nesting wrappers; each wrapper
holds exactly one adapter.  Attribute reads the wrapper does not know (``in_features``, ``kernel_size``,
``weight``, ...) fall through to the original layer.
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn

from .algos.base import AdapterModule, base_params, weight_expressible
from .errors import StateError


class LycoLayer(nn.Module):
    def __init__(self, base_layer: nn.Module, adapter: AdapterModule, owner: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.lyco_owner = owner  # id() of the Network this wrapper belongs to
        self.merged = False
        self._merge_backup: tuple[torch.Tensor, torch.Tensor | None] | None = None
        # requires_grad flags of the original layer's parameters, kept by the innermost wrapper only
        self._frozen_flags: dict[str, bool] | None = None

    # ------------------------------------------------------------------ attribute fall-through
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_layer", "adapter", "_modules", "_parameters", "_buffers"):
                raise
            return getattr(self._modules["base_layer"], name)

    @property
    def weight(self) -> torch.Tensor:
        return cast(torch.Tensor, self.raw_layer().weight)

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.raw_layer(), "bias", None)

    def raw_layer(self) -> nn.Module:
        m: nn.Module = self.base_layer
        while isinstance(m, LycoLayer):
            m = m.base_layer
        return m

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        g = self.adapter.geom
        if g.kind == "conv" and x.dim() == g.nd + 1:  # unbatched conv input
            return self.adapter(x.unsqueeze(0), self.base_layer).squeeze(0)
        return self.adapter(x, self.base_layer)

    def effective_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, b) this wrapper's forward is equivalent to (used by stacked adapters and merging)."""
        W, b = base_params(self.base_layer)
        a = self.adapter
        if self.merged or a.multiplier == 0:
            return W, b
        return a.adapted_weight(W, b, a.multiplier, a.draw_mask(W.device))

    def weight_expressible(self) -> bool:
        a = self.adapter
        if a.opts.dropout > 0 and a.training:
            return False
        return a.geom.standard and weight_expressible(self.base_layer)

    # ------------------------------------------------------------------ merge
    def chain_below(self) -> list[LycoLayer]:
        out = []
        m = self.base_layer
        while isinstance(m, LycoLayer):
            out.append(m)
            m = m.base_layer
        return out

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        pending = [w for w in self.chain_below() if not w.merged]
        if pending:
            raise StateError(
                f"cannot merge {self.adapter.name}: a network attached before it on the same layer is not merged; "
                "merge networks in the order they were attached"
            )
        raw = self.raw_layer()
        if not self.adapter.geom.standard:
            raise StateError(f"cannot merge {self.adapter.name} into a {type(raw).__name__}: only plain Linear/Conv "
                             "weights can be merged; keep the adapter active instead")
        a = self.adapter
        W, b = cast(torch.Tensor, raw.weight), getattr(raw, "bias", None)
        W2, b2 = a.adapted_weight(W, b, a.multiplier)
        self._merge_backup = (W.detach().clone(), None if b is None else b.detach().clone())
        W.copy_(W2)
        if b is not None and b2 is not b:
            b.copy_(b2)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        raw = self.raw_layer()
        assert self._merge_backup is not None  # merge() keeps it
        W0, b0 = self._merge_backup
        cast(torch.Tensor, raw.weight).copy_(W0)
        if b0 is not None:
            cast(torch.Tensor, raw.bias).copy_(b0)
        self._merge_backup = None
        self.merged = False

    def extra_repr(self) -> str:
        return "merged" if self.merged else ""


def chain(top: nn.Module) -> list[LycoLayer]:
    """Wrappers stacked at one site, outermost first."""
    out = []
    m = top
    while isinstance(m, LycoLayer):
        out.append(m)
        m = m.base_layer
    return out
