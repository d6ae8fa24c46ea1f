"""Shared base of the orthogonal algorithms (diag-OFT, BOFT): Cayley rotations of the output axis.

Both keep their raw block parameters in ``oft_blocks`` (diag-OFT: (n, bs, bs); BOFT: (M, n, b, b)), store the COFT
constraint in ``alpha`` and an optional per-output-channel ``rescale``.  They differ only in the block layout and in
how the rotations are applied (:meth:`rotate_rows` / :meth:`rotate_channels`, both in ``functional/oft.py``).
"""
from __future__ import annotations

from typing import Any, ClassVar, Self

import torch
import torch.nn as nn

from ..errors import FileFormatError
from .functional import oft as F_oft
from .geometry import Geometry
from .multiplicative import MultiplicativeModule
from .options import AlgoOptions


class OrthogonalModule(MultiplicativeModule):
    file_parts = frozenset({"oft_blocks", "alpha", "rescale"})
    #: number of dimensions of ``oft_blocks`` (how files tell the orthogonal algorithms apart)
    blocks_ndim: ClassVar[int] = 0

    def __init__(self, geom: Geometry, opts: AlgoOptions, name: str = "",
                 base_weight: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 initialize: bool = True, blocks: tuple[int, ...] | None = None) -> None:
        super().__init__(geom, opts, name, base_weight, generator, initialize)
        shape = tuple(blocks) if blocks is not None else self.block_shape(geom, opts)
        self.n, self.bs = shape[-3], shape[-1]
        self.oft_blocks = nn.Parameter(torch.zeros(shape))
        self.rescale = nn.Parameter(torch.ones(geom.out_features, *geom.ones)) if opts.rescaled else None
        self.constraint = float(opts.constraint)

    # ------------------------------------------------------------------ what subclasses define
    def block_shape(self, geom: Geometry, opts: AlgoOptions) -> tuple[int, ...]:
        """The ``oft_blocks`` shape for a new module (raises a ConfigError when the layer cannot be tiled)."""
        raise NotImplementedError

    @classmethod
    def file_block_shape(cls, geom: Geometry, blocks: torch.Tensor, name: str) -> tuple[int, ...]:
        """The ``oft_blocks`` shape of a file, checked against the layer."""
        raise NotImplementedError

    def rotate_rows(self, W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rotate_channels(self, z: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ math
    @property
    def rank(self) -> int:
        return self.bs

    def rotations(self) -> torch.Tensor:
        tau = self.constraint * self.geom.out_features
        return F_oft.cayley(self.oft_blocks, tau)

    def full_weight(self, W: torch.Tensor) -> torch.Tensor:
        W1 = self.rotate_rows(W, self.rotations())
        if self.rescale is not None:
            W1 = W1 * self.rescale.float().reshape(-1, *([1] * (W.dim() - 1)))
        return W1

    def transform_output(self, z: torch.Tensor) -> torch.Tensor:
        z1 = self.rotate_channels(z, self.rotations().to(z.dtype))
        if self.rescale is not None:
            z1 = z1 * self.geom.channel_view(self.rescale.reshape(-1).to(z.dtype))
        return z1

    # ------------------------------------------------------------------ files
    def export(self) -> dict[str, torch.Tensor]:
        out = {"oft_blocks": self.oft_blocks.detach().float().clone(),
               "alpha": torch.tensor(self.constraint, dtype=torch.float32)}
        if self.rescale is not None:
            out["rescale"] = self.rescale.detach().float().clone()
        return out

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"algo": self.algo, "block_size": self.bs, "blocks": self.n, "constraint": self.constraint}
        if self.rescale is not None:
            d["rescaled"] = True
        return d

    @classmethod
    def detect(cls, tensors: dict[str, torch.Tensor]) -> bool:
        return "oft_blocks" in tensors and tensors["oft_blocks"].dim() == cls.blocks_ndim

    @classmethod
    def from_file(cls, geom: Geometry, tensors: dict[str, torch.Tensor], name: str,
                  hints: dict[str, Any]) -> Self:
        blocks = tensors["oft_blocks"]
        if blocks.dim() != cls.blocks_ndim:
            raise FileFormatError(f"key '{name}.oft_blocks' is {blocks.dim()}-D; {cls.algo} needs {cls.blocks_ndim}-D "
                                  "blocks")
        shape = cls.file_block_shape(geom, blocks, name)
        constraint = float(tensors["alpha"].float().item()) if "alpha" in tensors else 0.0
        rescaled = "rescale" in tensors
        if rescaled and tensors["rescale"].numel() != geom.out_features:
            raise FileFormatError(f"key '{name}.rescale' has shape {tuple(tensors['rescale'].shape)}; the layer has "
                                  f"{geom.out_features} output channels")
        opts = AlgoOptions(algo=cls.algo, dim=shape[-1], alpha=None, constraint=constraint, rescaled=rescaled)
        mod = cls(geom, opts, name, initialize=False, blocks=shape)
        with torch.no_grad():
            mod.oft_blocks.copy_(blocks.float())
            if mod.rescale is not None:
                mod.rescale.copy_(tensors["rescale"].float().reshape(mod.rescale.shape))
        return mod

    @classmethod
    def file_features(cls, name: str, parts: dict[str, torch.Tensor]) -> list[str]:
        out = [cls.algo]
        if f"{cls.algo}-constraint" in cls.support and "alpha" in parts and float(parts["alpha"].float().sum()) > 0:
            out.append(f"{cls.algo}-constraint")
        if "rescale" in parts:
            out.append(f"{cls.algo}-rescale")
        return out
