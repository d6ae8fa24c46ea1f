"""kohya module names for Stable Diffusion models.

* SD1/SD2 UNets keep diffusers module paths: ``lora_unet_`` + path with dots as underscores.
* SDXL UNets use the LDM/SGM layout sd-scripts writes (``input_blocks_4_1_…``): :func:`unet_path_to_ldm`.
* Text encoders are always ``lora_te{,1,2}_text_model_encoder_layers_{i}_…`` whatever the installed
  transformers version's module paths (transformers 5 dropped the ``text_model.`` level of CLIPTextModel).

Loading accepts both UNet spellings for every family; writing never mixes them.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

UNET_PREFIX = "lora_unet"

_RESNET_PARTS = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0", "conv_out": "out.2",
}


def _cfg(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def unet_path_to_ldm(path: str, config: Any) -> str:
    """Map a diffusers UNet2DConditionModel module (or parameter) path to the LDM/SGM layout.

    ``config`` is the UNet config (``unet.config`` or a dict) - needed for layers_per_block and which up blocks
    have attentions.  Paths inside attention blocks are unchanged.  Unknown paths are returned unchanged.
    """
    lpb = _cfg(config, "layers_per_block", 2)
    if not isinstance(lpb, int):
        lpb = int(lpb[0])
    up_types = list(_cfg(config, "up_block_types", ()))
    for src, dst in _TOP_LEVEL.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(.*)$", path)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = i * (lpb + 1) + j + 1
        return f"input_blocks.{idx}.{0 if kind == 'resnets' else 1}" + _resnet_rest(kind, rest)
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)$", path)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op{m[2]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)(.*)$", path)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        idx = 2 * j if kind == "resnets" else 1
        return f"middle_block.{idx}" + _resnet_rest(kind, rest)
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(.*)$", path)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = i * (lpb + 1) + j
        return f"output_blocks.{idx}.{0 if kind == 'resnets' else 1}" + _resnet_rest(kind, rest)
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)$", path)
    if m:
        i = int(m[1])
        has_attn = i < len(up_types) and "CrossAttn" in up_types[i]
        return f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}.conv{m[2]}"
    return path


def _resnet_rest(kind: str, rest: str) -> str:
    if kind != "resnets" or not rest:
        return rest
    part = rest[1:]
    for src, dst in _RESNET_PARTS.items():
        if part == src or part.startswith(src + "."):
            return "." + dst + part[len(src):]
    return rest


def flat(path: str) -> str:
    return path.replace(".", "_")


def unet_namer(config: Any, ldm: bool) -> Callable[[str], str]:
    """Module name function for a UNet root: diffusers spelling (SD1/SD2) or LDM spelling (SDXL)."""
    if ldm:
        return lambda path: f"{UNET_PREFIX}_{flat(unet_path_to_ldm(path, config))}"
    return lambda path: f"{UNET_PREFIX}_{flat(path)}"


def unet_aliases(config: Any, ldm: bool) -> Callable[[str], list[str]]:
    """Read-only spellings: the other UNet layout, plus LyCORIS's generic ``lycoris_`` prefix."""
    def aliases(path: str) -> list[str]:
        other = flat(path) if ldm else flat(unet_path_to_ldm(path, config))
        return [f"{UNET_PREFIX}_{other}", f"lycoris_{flat(path)}"]
    return aliases


def te_path(path: str) -> str:
    """Normalise a CLIP text model module path to ``text_model.…`` (transformers 4 and 5 spellings)."""
    if path.startswith("text_model."):
        return path
    return "text_model." + path


def te_namer(prefix: str) -> Callable[[str], str]:
    return lambda path: f"{prefix}_{flat(te_path(path))}"


def te_aliases(prefix: str) -> Callable[[str], list[str]]:
    def aliases(path: str) -> list[str]:
        p = te_path(path)
        return [f"{prefix}_{flat(p[len('text_model.'):])}", f"lycoris_{flat(path)}"]
    return aliases
