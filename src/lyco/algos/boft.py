"""BOFT: butterfly-factorised orthogonal finetuning of the output axis."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import FileFormatError
from .functional import oft as F_oft
from .functional.common import power2factorization
from .geometry import Geometry
from .options import AlgoOptions
from .orthogonal import OrthogonalModule
from .registry import register
from .support import row


class BOFTModule(OrthogonalModule):
    algo = "boft"
    blocks_ndim = 4
    support = {
        "boft": row("✔ ✔ ✘ ! ! ✘ ✔ !", "BOFT loads only in ComfyUI and A1111",
                    PEFT="`lyco convert --to peft` converts lora, loha and lokr only"),
        "boft-rescale": row("✔ ✔ ✘ ! ! ✘ ! !", "BOFT loads only in ComfyUI and A1111",
                            lycoris_lora="lycoris-lora 4.1.3 cannot load `rescale` (shape error)"),
    }

    def block_shape(self, geom: Geometry, opts: AlgoOptions) -> tuple[int, ...]:
        o = geom.out_features
        if geom.groups > 1:
            raise self._err("BOFT's butterfly stages mix channels across conv groups, which no grouped conv weight "
                            "can express; use diag-oft with a block size dividing out_channels/groups")
        split = power2factorization(o, opts.dim)
        if split is None:
            raise self._err(f"BOFT: output width {o} cannot be split into an even block <= {opts.dim} times a "
                            "power of two; use a larger dim (block size) such as 10 for SD widths")
        b, n = split
        return (bin(n - 1).count("1") + 1, n, b, b)

    @classmethod
    def file_block_shape(cls, geom: Geometry, blocks: torch.Tensor, name: str) -> tuple[int, ...]:
        m_stages, n, b, b2 = blocks.shape
        if b != b2 or n * b != geom.out_features or n & (n - 1) or geom.groups > 1 or m_stages < 1:
            raise FileFormatError(f"key '{name}.oft_blocks' has shape {tuple(blocks.shape)}, which is not a "
                                  f"butterfly split of the layer's {geom.out_features} output channels")
        return (m_stages, n, b, b)

    @property
    def m_stages(self) -> int:
        return self.oft_blocks.shape[0]

    def rotate_rows(self, W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        return F_oft.butterfly_rows(W, R)

    def rotate_channels(self, z: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        return F_oft.butterfly_channels(z, R, self.geom.channel_dim)

    def bypass_cost(self) -> int:
        return self.m_stages * self.geom.out_features * self.bs

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["stages"] = self.m_stages
        return d


register(BOFTModule)
