"""Tiny random-weight Stable Diffusion pipelines with the real SD1 / SD2 / SDXL *structure* (small widths).

Built in-process (no hub).  The tokenizer is a byte-level CLIP BPE with no merges (every character is a token),
written to a temporary folder so ``CLIPTokenizer.from_pretrained`` works on it.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from functools import cache

import torch

FAMILIES = ("sd1", "sd2", "sdxl")


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@cache
def tokenizer_dir() -> str:
    """A folder with a minimal CLIP tokenizer (vocab.json + merges.txt)."""
    d = tempfile.mkdtemp(prefix="lyco-tiny-tok-")
    atexit.register(shutil.rmtree, d, ignore_errors=True)  # one folder per test process, gone when it exits
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 16, "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>",
                   "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, f)
    return d


VOCAB = 2 * 256 + 2


def tokenizer():
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(tokenizer_dir())


def te_config(hidden=32, layers=2, act="quick_gelu", proj=32):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=2,
                          num_hidden_layers=layers, max_position_embeddings=16, vocab_size=VOCAB, hidden_act=act,
                          projection_dim=proj,
                          bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1)


def unet_config(family: str) -> dict:
    base = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    if family == "sd2":
        base.update(use_linear_projection=True, attention_head_dim=(4, 8))
    if family == "sdxl":
        base.update(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                    use_linear_projection=True, transformer_layers_per_block=(1, 2), cross_attention_dim=64,
                    addition_embed_type="text_time", addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=8 * 6 + 32, layers_per_block=2)
    return base


def make_pipeline(family: str = "sd1", seed: int = 0, with_tokenizer: bool = True, prediction_type: str = "epsilon"):
    """A tiny pipeline of the given family with seeded random weights."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(family))
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32, sample_size=16)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    tok = tokenizer() if with_tokenizer else None
    if family == "sdxl":
        te1 = CLIPTextModel(te_config(32))
        te2 = CLIPTextModelWithProjection(te_config(32, act="gelu"))
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                         unet=unet, scheduler=sched)
    else:
        act = "gelu" if family == "sd2" else "quick_gelu"
        te = CLIPTextModel(te_config(32, act=act))
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt="a red circle", seed=0, steps=2, size=32):
    """A deterministic small generation (numpy image array)."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(num_inference_steps=steps, guidance_scale=3.0, height=size, width=size, generator=g, output_type="np")
    with torch.no_grad():
        return pipe(prompt, **kw).images
