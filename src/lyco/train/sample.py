"""Sample images during training: prompt lines with kohya's inline flags, PNG grids, TensorBoard images.

Flags: ``--w`` width, ``--h`` height, ``--d`` seed, ``--s`` steps, ``--l`` CFG scale, ``--n`` negative prompt,
``--ss`` sampler (ddim, euler, dpm++, pndm).  Sampling uses its own generator and leaves the training RNG untouched.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .config import SampleConfig

log = logging.getLogger("lyco")
_FLAG = re.compile(r"\s--(w|h|d|s|l|n|ss)\s+")


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    width: int
    height: int
    seed: int
    steps: int
    cfg: float
    negative: str
    sampler: str


def parse_sample_prompt(line: str, cfg: SampleConfig, resolution: int, index: int) -> SamplePrompt:
    """A sample prompt line with kohya's inline flags (``--w --h --d --s --l --n --ss``) over the config defaults."""
    base = SamplePrompt("", cfg.width or resolution, cfg.height or resolution, cfg.seed + index, cfg.steps, cfg.cfg,
                        cfg.negative, cfg.sampler)
    parts = _FLAG.split(" " + line)
    prompt = parts[0].strip()
    kw: dict[str, Any] = {}
    for flag, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        try:
            if flag == "w":
                kw["width"] = int(value)
            elif flag == "h":
                kw["height"] = int(value)
            elif flag == "d":
                kw["seed"] = int(value)
            elif flag == "s":
                kw["steps"] = int(value)
            elif flag == "l":
                kw["cfg"] = float(value)
            elif flag == "n":
                kw["negative"] = value
            elif flag == "ss":
                kw["sampler"] = value
        except ValueError:
            log.warning("lyco: sample prompt %r: cannot read --%s %r; ignored", line, flag, value)
    return replace(base, prompt=prompt, **kw)


def _scheduler(pipe: Any, name: str) -> Any:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpm++": DPMSolverMultistepScheduler,
           "pndm": PNDMScheduler}.get(name, DDIMScheduler)
    return cls.from_config(pipe.scheduler.config)


@torch.no_grad()
def generate(pipe: Any, prompts: list[SamplePrompt], device: torch.device, clip_skip: int = 1) -> list[Image.Image]:
    images = []
    original = pipe.scheduler
    try:
        for p in prompts:
            pipe.scheduler = _scheduler(pipe, p.sampler)
            g = torch.Generator(device="cpu").manual_seed(p.seed)
            kw: dict[str, Any] = dict(num_inference_steps=p.steps, guidance_scale=p.cfg, width=p.width, height=p.height,
                                      generator=g, output_type="pil", negative_prompt=p.negative or None)
            if clip_skip > 1:
                kw["clip_skip"] = clip_skip - 1
            images.append(pipe(p.prompt, **kw).images[0])
    finally:
        pipe.scheduler = original
    return images


def grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or min(4, len(images))
    rows = (len(images) + cols - 1) // cols
    w = max(i.width for i in images)
    h = max(i.height for i in images)
    out = Image.new("RGB", (cols * w, rows * h), (0, 0, 0))
    for k, im in enumerate(images):
        out.paste(im, ((k % cols) * w, (k // cols) * h))
    return out


def sample_and_save(pipe: Any, prompts: list[SamplePrompt], out_dir: Path, tag: str, device: torch.device,
                    clip_skip: int = 1) -> tuple[Path, list[Image.Image]]:
    """Generate, write ``samples/<tag>.png`` (grid) and return it with the images; RNG state is preserved."""
    with torch.random.fork_rng(devices=[]):
        images = generate(pipe, prompts, device, clip_skip)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{tag}.png"
    grid(images).save(path)
    return path, images


def to_array(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.uint8)
