"""Module trees with the layout of the models sd-scripts hands a ``--network_module`` (for plug-in tests).

sd-scripts trains SD1.x/2.x on a UNet with diffusers' module paths and class names (diffusers'
``UNet2DConditionModel`` has the same tree), but SDXL on its own UNet in the original LDM/SGM layout:
``input_blocks`` / ``middle_block`` / ``output_blocks`` holding blocks named like diffusers' classes
(``ResnetBlock2D`` with ``in_layers`` / ``emb_layers`` / ``out_layers`` / ``skip_connection``,
``Transformer2DModel``, ``Downsample2D`` (``op``), ``Upsample2D`` (``conv``)), and plain ``nn.Sequential``
time / label embeddings.  :func:`sdxl_ldm_unet` builds that tree (no forward pass: target selection and
adapter shapes only need the modules).  With ``width=320, context=2048`` it is the real SDXL UNet's tree,
which the tests check against sd-scripts' own name lists.
"""
from __future__ import annotations

import torch
from torch import nn


class ResnetBlock2D(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, c_out))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, c_out), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip_connection = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()


class Downsample2D(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)


class Upsample2D(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context: int) -> None:
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context, dim, bias=False)
        self.to_v = nn.Linear(context, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])


class GEGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, dim)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)


class Transformer2DModel(nn.Module):
    def __init__(self, dim: int, depth: int, context: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, dim)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(dim, context) for _ in range(depth)])
        self.proj_out = nn.Linear(dim, dim)


class SdxlLdmUNet(nn.Module):
    """SDXL's UNet tree in the LDM layout: 3 levels (width x1, x2, x4), 2 res blocks per level, transformer
    depth 0 / 2 / 10, attention at levels 1 and 2 and in the middle."""

    def __init__(self, width: int = 32, context: int = 64, adm: int = 64) -> None:
        super().__init__()
        mult, depth = (1, 2, 4), (0, 2, 10)
        emb = 4 * width
        self.time_embed = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(adm, emb), nn.SiLU(), nn.Linear(emb, emb)))
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(4, width, 3, padding=1))]
        skips, c = [width], width
        for level, (m, d) in enumerate(zip(mult, depth)):
            for _ in range(2):
                layers: list[nn.Module] = [ResnetBlock2D(c, width * m, emb)]
                c = width * m
                if d:
                    layers.append(Transformer2DModel(c, d, context))
                blocks.append(nn.ModuleList(layers))
                skips.append(c)
            if level < len(mult) - 1:
                blocks.append(nn.Sequential(Downsample2D(c)))
                skips.append(c)
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = nn.ModuleList([ResnetBlock2D(c, c, emb), Transformer2DModel(c, depth[-1], context),
                                           ResnetBlock2D(c, c, emb)])
        out: list[nn.Module] = []
        for level in reversed(range(len(mult))):
            for i in range(3):
                layers = [ResnetBlock2D(c + skips.pop(), width * mult[level], emb)]
                c = width * mult[level]
                if depth[level]:
                    layers.append(Transformer2DModel(c, depth[level], context))
                if level and i == 2:
                    layers.append(Upsample2D(c))
                out.append(nn.ModuleList(layers))
        self.output_blocks = nn.ModuleList(out)
        self.out = nn.ModuleList([nn.GroupNorm(32, width), nn.SiLU(), nn.Conv2d(width, 4, 3, padding=1)])


def sdxl_ldm_unet(width: int = 32, context: int = 64, meta: bool = False) -> SdxlLdmUNet:
    """The tree (tiny widths by default; ``meta=True`` builds without memory, e.g. for the real widths)."""
    if meta:
        with torch.device("meta"):
            return SdxlLdmUNet(width, context, adm=2816 if width == 320 else 64)
    return SdxlLdmUNet(width, context)
