"""BOFT: butterfly-factorised orthogonal finetuning of the output axis."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import FileFormatError
from .functional import oft as F_oft
from .functional.common import power2factorization
from .geometry import Geometry
from .oft import DiagOFTModule
from .options import AlgoOptions
from .registry import register


class BOFTModule(DiagOFTModule):
    algo = "boft"

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "", base_weight=None, generator=None,
                 initialize: bool = True, blocks: tuple[int, int, int] | None = None) -> None:
        super(DiagOFTModule, self).__init__(geom, opts, name, base_weight, generator, initialize)
        o = geom.out_features
        if geom.groups > 1:
            raise self._err("BOFT's butterfly stages mix channels across conv groups, which no grouped conv weight "
                            "can express; use diag-oft with a block size dividing out_channels/groups")
        if blocks is None:
            split = power2factorization(o, opts.dim)
            if split is None:
                raise self._err(f"BOFT: output width {o} cannot be split into an even block <= {opts.dim} times a "
                                "power of two; use a larger dim (block size) such as 10 for SD widths")
            b, n = split
            m_stages = bin(n - 1).count("1") + 1
        else:
            m_stages, n, b = blocks
        self.m_stages, self.n, self.bs = m_stages, n, b
        self.oft_blocks = nn.Parameter(torch.zeros(m_stages, n, b, b))
        self.rescale = nn.Parameter(torch.ones(o, *geom.ones)) if opts.rescaled else None
        self.constraint = float(opts.constraint)

    def full_weight(self, W):
        W1 = F_oft.butterfly_rows(W, self.rotations())
        if self.rescale is not None:
            W1 = W1 * self.rescale.float().reshape(-1, *([1] * (W.dim() - 1)))
        return W1

    def transform_output(self, z):
        z1 = F_oft.butterfly_channels(z, self.rotations().to(z.dtype), self.geom.channel_dim)
        if self.rescale is not None:
            z1 = z1 * self.geom.channel_view(self.rescale.reshape(-1).to(z.dtype))
        return z1

    def bypass_cost(self) -> int:
        return self.m_stages * self.geom.out_features * self.bs

    @classmethod
    def detect(cls, tensors) -> bool:
        return "oft_blocks" in tensors and tensors["oft_blocks"].dim() == 4

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["stages"] = self.m_stages
        return d

    @classmethod
    def from_file(cls, geom, tensors, name, hints):
        blocks = tensors["oft_blocks"]
        m_stages, n, b, b2 = blocks.shape
        if b != b2 or n * b != geom.out_features or n & (n - 1):
            raise FileFormatError(f"key '{name}.oft_blocks' has shape {tuple(blocks.shape)}, which is not a "
                                  f"butterfly split of the layer's {geom.out_features} output channels")
        constraint, rescaled = cls._read_common(geom, tensors, name)
        opts = AlgoOptions(algo=cls.algo, dim=b, alpha=None, constraint=constraint, rescaled=rescaled)
        mod = cls(geom, opts, name, initialize=False, blocks=(m_stages, n, b))
        with torch.no_grad():
            mod.oft_blocks.copy_(blocks.float())
            if rescaled:
                mod.rescale.copy_(tensors["rescale"].float().reshape(mod.rescale.shape))
        return mod


register(BOFTModule, detect_order=49)
