"""The ``lyco-tiny`` base model: its configs and the pipeline loader (``builtin:tiny`` ids: :mod:`lyco.builtin`).

``lyco-tiny`` is a Stable Diffusion 1.x-architecture model (AutoencoderKL + UNet2DConditionModel with
cross-attention + CLIPTextModel and CLIPTokenizer) pretrained on the micro-world at 32×32 pixels
(16×16×4 latents).  It is stored in diffusers format in ``lyco/data/tiny`` and loads with
``StableDiffusionPipeline.from_pretrained(path)`` offline.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .. import builtin
from ..sd import load_pipeline as sd_load_pipeline

IMAGE_SIZE = 32


def tiny_model_path() -> Path:
    """The folder of the shipped ``lyco-tiny`` model (what ``builtin:tiny`` names; see :mod:`lyco.builtin`)."""
    return builtin.resolve(builtin.PREFIX + "tiny")


# ------------------------------------------------------------------------------------------ configs
def vae_config() -> dict[str, Any]:
    """AutoencoderKL with one downsample: 32×32×3 images <-> 16×16×4 latents."""
    return {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 2,
                "up_block_types": ("UpDecoderBlock2D",) * 2, "block_out_channels": (32, 64), "layers_per_block": 1,
                "latent_channels": 4, "norm_num_groups": 32, "sample_size": IMAGE_SIZE}


def unet_config(cross_attention_dim: int = 128) -> dict[str, Any]:
    """UNet2DConditionModel on 16×16×4 latents, cross-attention at 8×8 and 4×4 (SD 1.x block types)."""
    return {"sample_size": IMAGE_SIZE // 2, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                "block_out_channels": (32, 64, 128),
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                "cross_attention_dim": cross_attention_dim, "attention_head_dim": 4, "norm_num_groups": 32}


def text_config(vocab_size: int, bos: int, eos: int, hidden: int = 128) -> dict[str, Any]:
    """A small CLIPTextModel (CLIP's layout: causal transformer, final layer norm, 77 positions)."""
    return {"vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos, "projection_dim": hidden}


def scheduler_config() -> dict[str, Any]:
    """The noise schedule lyco-tiny was trained with (cosine betas suit 16×16 latents), as a DDIM config."""
    return {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02,
                "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                "timestep_spacing": "leading"}


# ------------------------------------------------------------------------------------------ loading
def load_pipeline(model_id: str | os.PathLike[str] = "builtin:tiny", device: str = "cpu", dtype: Any = None) -> Any:
    """``StableDiffusionPipeline`` for ``model_id`` (``builtin:tiny`` by default) through lyco's offline loader,
    with a DDIM scheduler (what the world's checks sample with), on ``device``."""
    from diffusers import DDIMScheduler

    pipe = sd_load_pipeline(model_id, torch_dtype=None if dtype in (None, torch.float32) else dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe.to(device)
