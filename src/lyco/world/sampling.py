"""Generate images with ``lyco-tiny`` (or any SD pipeline) as uint8 arrays, deterministically for a seed."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .model import load_pipeline


@torch.no_grad()
def generate(prompts: list[str], pipe: Any = None, model: str = "builtin:tiny", steps: int = 20,
             guidance: float = 5.0, seed: int = 0, negative_prompt: str | None = None,
             batch_size: int = 64) -> np.ndarray:
    """Images for ``prompts`` as a (N, H, W, 3) uint8 array.  Image i uses the generator seeded ``seed + i``,
    so a prompt's image does not depend on the batch it is in."""
    pipe = pipe if pipe is not None else load_pipeline(model)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        res = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                   negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None, output_type="np")
        out.append(np.clip(np.rint(res.images * 255.0), 0, 255).astype(np.uint8))
    return np.concatenate(out)
