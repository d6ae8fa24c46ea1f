"""diag-OFT: a block-diagonal Cayley rotation of the output axis (COFT constraint, optional rescale)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import FileFormatError
from .functional import oft as F_oft
from .functional.common import factorization
from .geometry import Geometry
from .multiplicative import MultiplicativeModule
from .options import AlgoOptions
from .registry import register


class DiagOFTModule(MultiplicativeModule):
    algo = "diag-oft"
    file_parts = frozenset({"oft_blocks", "alpha", "rescale"})

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "", base_weight=None, generator=None,
                 initialize: bool = True, blocks: tuple[int, int] | None = None) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
        o = geom.out_features
        if blocks is None:
            bs, n = factorization(o, opts.dim)
            if bs > n:
                bs, n = n, bs
        else:
            n, bs = blocks
        self.n, self.bs = n, bs
        if geom.groups > 1 and (o // geom.groups) % bs:
            raise self._err(f"rotation blocks of {bs} channels would mix the {geom.groups} groups of this conv, "
                            "which no conv weight can express; pick a dim (block size) dividing "
                            f"{o // geom.groups}")
        self.oft_blocks = nn.Parameter(torch.zeros(n, bs, bs))
        self.rescale = nn.Parameter(torch.ones(o, *geom.ones)) if opts.rescaled else None
        self.constraint = float(opts.constraint)

    @property
    def rank(self) -> int:
        return self.bs

    def rotations(self) -> torch.Tensor:
        tau = self.constraint * self.geom.out_features
        return F_oft.cayley(self.oft_blocks, tau)

    def full_weight(self, W):
        W1 = F_oft.rotate_rows_blockdiag(W, self.rotations())
        if self.rescale is not None:
            W1 = W1 * self.rescale.float().reshape(-1, *([1] * (W.dim() - 1)))
        return W1

    def transform_output(self, z):
        R = self.rotations().to(z.dtype)
        z1 = F_oft.rotate_channels_blockdiag(z, R, self.geom.channel_dim)
        if self.rescale is not None:
            z1 = z1 * self.geom.channel_view(self.rescale.reshape(-1).to(z.dtype))
        return z1

    def bypass_cost(self) -> int:
        return self.geom.out_features * self.bs

    def export(self) -> dict[str, torch.Tensor]:
        out = {"oft_blocks": self.oft_blocks.detach().float().clone(),
               "alpha": torch.tensor(self.constraint, dtype=torch.float32)}
        if self.rescale is not None:
            out["rescale"] = self.rescale.detach().float().clone()
        return out

    def describe(self) -> dict[str, Any]:
        d = {"algo": self.algo, "block_size": self.bs, "blocks": self.n, "constraint": self.constraint}
        if self.rescale is not None:
            d["rescaled"] = True
        return d

    @classmethod
    def detect(cls, tensors) -> bool:
        return "oft_blocks" in tensors and tensors["oft_blocks"].dim() == 3

    @classmethod
    def _read_common(cls, geom, tensors, name):
        constraint = float(tensors["alpha"].float().item()) if "alpha" in tensors else 0.0
        rescaled = "rescale" in tensors
        if rescaled:
            r = tensors["rescale"]
            if r.numel() != geom.out_features:
                raise FileFormatError(f"key '{name}.rescale' has shape {tuple(r.shape)}; the layer has "
                                      f"{geom.out_features} output channels")
        return constraint, rescaled

    @classmethod
    def from_file(cls, geom, tensors, name, hints):
        blocks = tensors["oft_blocks"]
        if blocks.dim() != 3:
            raise FileFormatError(f"key '{name}.oft_blocks' is {blocks.dim()}-D; diag-OFT needs (n, bs, bs)")
        n, bs, bs2 = blocks.shape
        if bs != bs2 or n * bs != geom.out_features:
            raise FileFormatError(f"key '{name}.oft_blocks' has shape {tuple(blocks.shape)}, which does not tile "
                                  f"the layer's {geom.out_features} output channels")
        constraint, rescaled = cls._read_common(geom, tensors, name)
        opts = AlgoOptions(algo=cls.algo, dim=bs, alpha=None, constraint=constraint, rescaled=rescaled)
        mod = cls(geom, opts, name, initialize=False, blocks=(n, bs))
        with torch.no_grad():
            mod.oft_blocks.copy_(blocks.float())
            if rescaled:
                mod.rescale.copy_(tensors["rescale"].float().reshape(mod.rescale.shape))
        return mod


register(DiagOFTModule, aliases=("oft", "diag_oft"), detect_order=50)
