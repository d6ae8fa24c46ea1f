"""Builders shared by the ``test_eval_*`` tests: tiny random backbones in the real on-disk formats (transformers
CLIPModel / Dinov2Model folders, a torchvision-format VGG-19 state dict), a tiny SD pipeline folder, a strong LoRA and
a dataset made by it.  (Not a test module; imported by the test_eval_* modules.)"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from helpers import toml_dumps
from sd_tiny import make_pipeline, tokenizer_dir

TINY_VGG_WIDTHS = (4, 8, 8, 16, 16)
TRIGGER_PROMPT = "olis creature"
#: generation settings of the end-to-end tests (tiny and fast)
GEN = {"steps": 2, "guidance_scale": 3.0, "width": 32, "height": 32, "images": 3, "batch_size": 8}


def write_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny random transformers CLIPModel folder with a CLIP BPE tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    vocab = 2 * 256 + 2
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(folder)
    for name in os.listdir(tokenizer_dir()):
        shutil.copy(os.path.join(tokenizer_dir(), name), folder / name)
    return folder


def write_dino(folder: Path, seed: int = 0) -> Path:
    """A tiny random transformers Dinov2Model folder."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32,
                       patch_size=8)
    Dinov2Model(cfg).save_pretrained(folder)
    return folder


def vgg_state_dict(widths=TINY_VGG_WIDTHS, seed: int = 0) -> dict[str, torch.Tensor]:
    """A VGG-19 state dict in torchvision key format (``features.<i>.*``, ``classifier.{0,3,6}.*``), narrow."""
    from lyco.world.backbones import VGG19

    torch.manual_seed(seed)
    return VGG19(tuple(widths), num_classes=4, pool=1, hidden=8).state_dict()


def write_vgg(path: Path, seed: int = 0) -> Path:
    torch.save(vgg_state_dict(seed=seed), path)
    return path


def write_backbones(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    return {"dino": str(write_dino(root / "dino")), "clip": str(write_clip(root / "clip")),
            "vgg": str(write_vgg(root / "vgg19.pth"))}


def write_pipeline(folder: Path, seed: int = 0) -> Path:
    """A tiny random SD1-layout pipeline saved as a diffusers folder."""
    pipe = make_pipeline("sd1", seed=seed)
    pipe.save_pretrained(folder)
    return folder


def strong_lora(pipe, path: Path, scale: float = 0.6, seed: int = 1) -> Path:
    """A LoRA with large random weights: a model clearly different from the base."""
    import lyco.sd

    net = lyco.sd.attach(pipe, algo="lora", dim=4, alpha=4.0, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    net.save(str(path))
    net.detach()
    return path


def make_world(root: Path, gen_settings: dict) -> dict:
    """Model folder, strong LoRA, backbones, and a dataset = the LoRA's trigger images at the evaluation's seeds
    1000+k (made through lyco's own generation path, so the adapter's <trigger> images *are* the dataset)."""
    import lyco.sd
    from lyco.eval.config import Generation
    from lyco.eval.generate import ImageJob, generate_jobs, load_variant_pipeline

    write_pipeline(root / "model")
    bb = write_backbones(root / "bb")
    gen = Generation(**gen_settings)
    pipe = load_variant_pipeline(str(root / "model"), gen, torch.device("cpu"))
    adapter = strong_lora(pipe, root / "lora.safetensors")
    net = lyco.sd.load(pipe, str(adapter))
    jobs = [ImageJob("x", "x", "trigger", k, TRIGGER_PROMPT, gen.seed_start + k, f"{k:064d}")
            for k in range(gen.images)]
    generate_jobs(pipe, jobs, gen, root / "tmp", size=(gen.width, gen.height),
                  progress=False)
    net.detach()
    data = root / "data" / f"{gen.images}_{TRIGGER_PROMPT}"
    data.mkdir(parents=True)
    tags = ["red", "small", "left", "outline style", "night scene", "large"]
    for j in jobs:
        shutil.copy(j.path(root / "tmp"), data / f"{j.k:02d}.png")
        (data / f"{j.k:02d}.txt").write_text(f"{TRIGGER_PROMPT}, {tags[j.k % len(tags)]}\n")
    return {"root": root, "model": str(root / "model"), "adapter": str(adapter), "data": str(root / "data"), **bb}


def to_toml(cfg) -> str:
    """The eval config as TOML (what a user would write)."""
    d = cfg.model_dump(mode="json", by_alias=True, exclude_none=True)
    d.pop("root")
    return toml_dumps(d)
