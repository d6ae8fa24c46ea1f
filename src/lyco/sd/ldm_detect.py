"""Which Stable Diffusion family an original-layout (LDM/SGM) single-file checkpoint belongs to.

Key prefixes say which text encoder layout the file has; tensor shapes (when given) say how wide the text
encoders and the UNet's cross-attention are, and must agree: SD1/SD2 context = text width, SDXL context =
width 1 + width 2.  Layouts lyco does not load (SDXL refiner, inpainting, SD3, Flux, ...) raise
:class:`~lyco.errors.FileFormatError` naming what was recognised.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import FileFormatError, short_list
from ..io.checkpoint import checkpoint_shapes, shape_of

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_SD1 = "cond_stage_model.transformer."
OPENCLIP_SD2 = "cond_stage_model.model."
CLIP_SDXL = "conditioner.embedders.0.transformer."
OPENCLIP_SDXL = "conditioner.embedders.1.model."
OPENCLIP_REFINER = "conditioner.embedders.0.model."

FAMILIES = ("sd1", "sd2", "sdxl")
Shapes = dict[str, "tuple[int, ...] | None"]

#: key fragments of layouts lyco recognises but does not load
_FOREIGN: tuple[tuple[str, str], ...] = (
    ("joint_blocks.", "Stable Diffusion 3 / 3.5 (MMDiT)"),
    ("text_encoders.clip_g.", "Stable Diffusion 3 text encoders"),
    ("double_blocks.", "Flux"),
    ("single_blocks.", "Flux"),
    ("control_model.", "a ControlNet"),
    ("edm_mean", "Playground v2.5 (EDM)"),
    ("noise_augmentor.", "Stable unCLIP"),
    ("embedder.model.visual.", "Stable unCLIP"),
    ("lora_unet_", "a LoRA/LyCORIS adapter, not a checkpoint (load it with lyco.sd.load)"),
    ("lora_te", "a LoRA/LyCORIS adapter, not a checkpoint (load it with lyco.sd.load)"),
    ("lycoris_", "a LyCORIS adapter, not a checkpoint (load it with lyco.sd.load)"),
)
_IN_CHANNELS = {9: "an inpainting model (9 input channels)", 8: "an InstructPix2Pix model (8 input channels)",
                7: "the x4 upscaler (7 input channels)", 5: "a depth-conditioned model (5 input channels)"}
_FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


@dataclass(frozen=True)
class CheckpointInfo:
    """What an original-layout checkpoint contains."""

    family: str  #: "sd1" | "sd2" | "sdxl"
    has_unet: bool
    has_vae: bool
    text_encoders: tuple[str, ...]  #: key prefixes of the text encoders present
    context_dim: int | None = None  #: UNet cross-attention width (attn2.to_k input), from shapes
    text_widths: tuple[int, ...] = ()  #: hidden width of each text encoder present, from shapes
    in_channels: int | None = None
    linear_projection: bool | None = None  #: UNet transformer proj_in is Linear (SD2/SDXL) rather than 1x1 conv


def as_shapes(keys_or_state_dict: Any) -> Shapes:
    """Normalise a path, a state dict (tensors or anything with ``.shape``) or plain keys to key -> shape."""
    if isinstance(keys_or_state_dict, (str, os.PathLike)):
        return checkpoint_shapes(keys_or_state_dict)
    if isinstance(keys_or_state_dict, Mapping):
        sd = keys_or_state_dict
        if isinstance(sd.get("state_dict"), Mapping):
            sd = sd["state_dict"]
        return {str(k): shape_of(v) for k, v in sd.items()}
    if isinstance(keys_or_state_dict, Iterable):
        return {str(k): None for k in keys_or_state_dict}
    raise FileFormatError(f"cannot detect a model family from a {type(keys_or_state_dict).__name__}; "
                          "pass a file path, a state dict or its keys")


def _has(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def _top_prefixes(shapes: Shapes) -> str:
    return short_list(sorted({".".join(k.split(".")[:2]) for k in shapes}), limit=8)


def _foreign(shapes: Shapes, source: str) -> None:
    for fragment, what in _FOREIGN:
        if any(fragment in k for k in shapes):
            raise FileFormatError(f"{source}: recognised {what}; lyco loads only SD1.x, SD2.x and SDXL base "
                                  "single-file checkpoints")
    if _has(shapes, OPENCLIP_REFINER) and not _has(shapes, OPENCLIP_SDXL):
        raise FileFormatError(f"{source}: recognised the SDXL refiner (a single OpenCLIP encoder at "
                              f"{OPENCLIP_REFINER}*); lyco loads only SDXL base checkpoints")
    if not _has(shapes, UNET):
        if any(k.startswith(("down_blocks.", "unet.", "conv_in.")) for k in shapes):
            what = "diffusers-layout weights; load them with diffusers' from_pretrained"
        elif _has(shapes, VAE) or _has(shapes, "cond_stage_model.") or _has(shapes, "conditioner."):
            what = "a VAE and/or text encoders but no UNet"
        else:
            what = "no Stable Diffusion keys"
        raise FileFormatError(f"{source}: no UNet weights ({UNET}*) found: recognised {what}.  "
                              f"Top-level keys: {_top_prefixes(shapes) or 'none'}")


def _first_shape(shapes: Shapes, *keys: str) -> tuple[int, ...] | None:
    for k in keys:
        if shapes.get(k) is not None:
            return shapes[k]
    return None


def _context_dim(shapes: Shapes) -> int | None:
    for k, s in shapes.items():
        if s is not None and len(s) == 2 and k.startswith(UNET) and k.endswith(".attn2.to_k.weight"):
            return s[1]
    return None


def _linear_projection(shapes: Shapes) -> bool | None:
    for k, s in shapes.items():
        if s is not None and k.startswith(UNET) and re.search(r"\.\d+\.1\.proj_in\.weight$", k):
            return len(s) == 2
    return None


def _text_width(shapes: Shapes, prefix: str) -> int | None:
    if prefix in (CLIP_SD1, CLIP_SDXL):
        s = _first_shape(shapes, prefix + "text_model.final_layer_norm.weight",
                         prefix + "text_model.embeddings.token_embedding.weight")
    else:
        s = _first_shape(shapes, prefix + "ln_final.weight", prefix + "token_embedding.weight")
    return s[-1] if s else None


def _family_from_names(shapes: Shapes, source: str) -> str | None:
    clip1, open2 = _has(shapes, CLIP_SD1), _has(shapes, OPENCLIP_SD2)
    xl = _has(shapes, CLIP_SDXL) or _has(shapes, OPENCLIP_SDXL)
    found = [name for name, hit in (("SD1 CLIP (cond_stage_model.transformer.*)", clip1),
                                    ("SD2 OpenCLIP (cond_stage_model.model.*)", open2),
                                    ("SDXL text encoders (conditioner.embedders.*)", xl)) if hit]
    if len(found) > 1:
        raise FileFormatError(f"{source}: mixes text encoder layouts of several families: {', '.join(found)}")
    if open2 and _has(shapes, UNET + "label_emb."):
        raise FileFormatError(f"{source}: recognised an SD2 model with a class-label embedding (unCLIP or "
                              "upscaler); lyco loads only plain SD2 text-to-image checkpoints")
    if xl or _has(shapes, UNET + "label_emb."):
        return "sdxl"
    if open2:
        return "sd2"
    if clip1:
        return "sd1"
    return None


def _text_prefixes(family: str, shapes: Shapes) -> tuple[str, ...]:
    wanted = {"sd1": (CLIP_SD1,), "sd2": (OPENCLIP_SD2,), "sdxl": (CLIP_SDXL, OPENCLIP_SDXL)}[family]
    return tuple(p for p in wanted if _has(shapes, p))


def _check_widths(info: CheckpointInfo, source: str) -> None:
    ctx, widths = info.context_dim, info.text_widths
    if ctx is None or not widths or len(widths) != len(info.text_encoders):
        return
    if info.family == "sdxl" and len(widths) < 2:
        return
    if sum(widths) != ctx:
        what = " + ".join(str(w) for w in widths)
        raise FileFormatError(
            f"{source}: the UNet's cross-attention width ({ctx}) does not match the text encoder width ({what}) "
            f"of a {_FAMILY_NAMES[info.family]} layout: UNet and text encoder come from different models, or "
            "the file is damaged")


def inspect_checkpoint(keys_or_state_dict: Any, *, family: str | None = None,
                       source: str | os.PathLike | None = None) -> CheckpointInfo:
    """Family, components and widths of an original-layout checkpoint (see :func:`detect_family`).

    ``family`` forces the family when names alone cannot tell (a UNet-only file given as bare keys); it must
    agree with what the keys say.
    """
    if source is None and isinstance(keys_or_state_dict, (str, os.PathLike)):
        source = keys_or_state_dict
    src = str(source) if source is not None else "checkpoint"
    shapes = as_shapes(keys_or_state_dict)
    if not shapes:
        raise FileFormatError(f"{src}: no tensors found")
    _foreign(shapes, src)
    in_shape = shapes.get(UNET + "input_blocks.0.0.weight")
    in_channels = in_shape[1] if in_shape is not None and len(in_shape) == 4 else None
    if in_channels is not None and in_channels != 4:
        what = _IN_CHANNELS.get(in_channels, f"a UNet with {in_channels} input channels")
        raise FileFormatError(f"{src}: recognised {what}; lyco loads only text-to-image checkpoints with "
                              "4 latent input channels")
    named = _family_from_names(shapes, src)
    linear = _linear_projection(shapes)
    if family is not None:
        if family not in FAMILIES:
            raise FileFormatError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
        if named is not None and named != family:
            raise FileFormatError(f"{src}: family {family!r} was requested but the keys are the "
                                  f"{_FAMILY_NAMES[named]} layout ({named!r})")
        named = family
    if named is None:
        if linear is None:
            raise FileFormatError(f"{src}: a UNet without text encoder, given as key names only: cannot tell SD1 "
                                  "from SD2; pass family='sd1' or 'sd2', or the state dict with its tensors")
        named = "sd2" if linear else "sd1"
    prefixes = _text_prefixes(named, shapes)
    widths = tuple(w for w in (_text_width(shapes, p) for p in prefixes) if w is not None)
    info = CheckpointInfo(family=named, has_unet=True, has_vae=_has(shapes, VAE), text_encoders=prefixes,
                          context_dim=_context_dim(shapes), text_widths=widths, in_channels=in_channels,
                          linear_projection=linear)
    _check_widths(info, src)
    return info


def detect_family(keys_or_state_dict: Any, *, source: str | os.PathLike | None = None) -> str:
    """``"sd1"``, ``"sd2"`` or ``"sdxl"`` from an original-layout (LDM/SGM) checkpoint.

    Accepts a file path (.safetensors: header only), a state dict (shapes are checked: the UNet's cross-attention
    width must equal the text encoder width, SDXL: the sum of both) or bare keys.  ``conditioner.embedders.*`` or
    ``model.diffusion_model.label_emb.*`` mean SDXL, OpenCLIP ``cond_stage_model.model.*`` SD2,
    ``cond_stage_model.transformer.*`` SD1; a UNet-only state dict is told apart by its projection layers.
    Unsupported layouts raise :class:`~lyco.errors.FileFormatError` naming ``source`` and what was recognised.
    """
    return inspect_checkpoint(keys_or_state_dict, source=source).family
