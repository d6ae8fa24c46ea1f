"""diag-OFT: a block-diagonal Cayley rotation of the output axis (COFT constraint, optional rescale)."""
from __future__ import annotations

import torch

from ..errors import FileFormatError
from .functional import oft as F_oft
from .functional.common import factorization
from .geometry import Geometry
from .options import AlgoOptions
from .orthogonal import OrthogonalModule
from .registry import register
from .support import row


class DiagOFTModule(OrthogonalModule):
    algo = "diag-oft"
    blocks_ndim = 3
    support = {
        "diag-oft": row("✔ ✔ ✘ ! ! ✘ ✔ !", "OFT loads only in ComfyUI and A1111; InvokeAI rejects the whole file",
                        PEFT="`lyco convert --to peft` converts lora, loha and lokr only"),
        "diag-oft-constraint": row("≈ ✔ ✘ ! ! ✘ ✔ !", "ComfyUI compares ‖Q‖ with α instead of α·O"),
        "diag-oft-rescale": row("≈ ✔ ✘ ! ! ✘ ! !", "ComfyUI ignores rescale for diag-OFT",
                                lycoris_lora="lycoris-lora 4.1.3 cannot load `rescale` (shape error)"),
    }

    def block_shape(self, geom: Geometry, opts: AlgoOptions) -> tuple[int, ...]:
        o = geom.out_features
        bs, n = factorization(o, opts.dim)
        if bs > n:
            bs, n = n, bs
        if geom.groups > 1 and (o // geom.groups) % bs:
            raise self._err(f"rotation blocks of {bs} channels would mix the {geom.groups} groups of this conv, "
                            "which no conv weight can express; pick a dim (block size) dividing "
                            f"{o // geom.groups}")
        return (n, bs, bs)

    @classmethod
    def file_block_shape(cls, geom: Geometry, blocks: torch.Tensor, name: str) -> tuple[int, ...]:
        n, bs, bs2 = blocks.shape
        o = geom.out_features
        if bs != bs2 or n * bs != o or (geom.groups > 1 and (o // geom.groups) % bs):
            raise FileFormatError(f"key '{name}.oft_blocks' has shape {tuple(blocks.shape)}, which does not tile "
                                  f"the layer's {o} output channels" + (f" in {geom.groups} groups" if geom.groups > 1
                                                                         else ""))
        return (n, bs, bs)

    def rotate_rows(self, W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        return F_oft.rotate_rows_blockdiag(W, R)

    def rotate_channels(self, z: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        return F_oft.rotate_channels_blockdiag(z, R, self.geom.channel_dim)

    def bypass_cost(self) -> int:
        return self.geom.out_features * self.bs


register(DiagOFTModule, aliases=("oft", "diag_oft"))
