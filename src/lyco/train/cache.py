"""What the trainer computes once per input and reuses: VAE latents and text-encoder conditioning.

* :class:`LatentSource`: the latents of (image bytes, bucket, crop box, flip, VAE, dtype), kept in memory or on
  disk when the crop is deterministic (centre crop, no flip); otherwise encoded every time.
* :class:`TextCache`: the conditioning of each caption when the text encoders are frozen.

Both encode one input at a time: batched convolutions round differently by batch size, and a cache filled in a
different order (e.g. after a resume) must give bit-identical values.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..io.atomic import atomic_path
from ..io.images import load_rgb
from .buckets import crop_box
from .data import ImageItem
from .family import encode


def image_tensor(item: ImageItem, bucket: tuple[int, int], crop: str, flip: bool, background: tuple[int, int, int],
                 rng: random.Random) -> tuple[torch.Tensor, tuple[int, int, int, int], bool]:
    """Pixels in [-1, 1] (C, H, W) of ``item`` resized and cropped to ``bucket``, maybe flipped; with the crop box."""
    im, _ = load_rgb(item.path, background)
    size, box = crop_box(im.size, bucket, crop, rng)
    im = im.resize(size, Image.Resampling.LANCZOS).crop(box)
    do_flip = flip and rng.random() < 0.5
    if do_flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    t = torch.from_numpy(np.asarray(im, dtype="float32")).permute(2, 0, 1) / 127.5 - 1.0
    return t, box, do_flip


class LatentSource:
    """VAE latents of (item, bucket, crop, flip), cached in memory or on disk when the crop is deterministic."""

    def __init__(self, vae: Any, mode: str, cache_dir: Path, device: torch.device, dtype: torch.dtype) -> None:
        self.vae, self.mode, self.dir, self.device, self.dtype = vae, mode, cache_dir, device, dtype
        self.mem: dict[str, torch.Tensor] = {}
        sf = getattr(vae.config, "scaling_factor", 0.18215)
        self.scale, self.shift = sf, getattr(vae.config, "shift_factor", None) or 0.0
        vae_config = json.dumps(dict(vae.config), sort_keys=True, default=str)
        self.vae_id = hashlib.sha256(vae_config.encode()).hexdigest()[:12]
        self.hits = 0

    def key(self, item: ImageItem, bucket: tuple[int, int], box: tuple[int, ...], flip: bool) -> str:
        raw = f"{item.sha}|{bucket}|{box}|{int(flip)}|{self.vae_id}|{self.dtype}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device, dtype=self.vae.dtype)
        lat = self.vae.encode(x).latent_dist.mode()
        return ((lat - self.shift) * self.scale).float()

    def _cached(self, key: str | None) -> torch.Tensor | None:
        if key is None:
            return None
        if key in self.mem:
            return self.mem[key]
        path = self.dir / f"{key}.pt"
        if self.mode == "disk" and path.is_file():
            try:
                self.mem[key] = torch.load(path, map_location="cpu")
                return self.mem[key]
            except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
                return None
        return None

    def _store(self, key: str, z: torch.Tensor) -> None:
        self.mem[key] = z
        if self.mode == "disk":
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.dir / f"{key}.pt", durable=False) as tmp:
                torch.save(z.clone(), tmp)

    def get(self, items: list[ImageItem], bucket: tuple[int, int], crop: str, subsets: list[Any],
            rngs: list[random.Random]) -> torch.Tensor:
        """Latents of ``items`` (each with its subset's flip and background settings), stacked."""
        out: list[torch.Tensor | None] = [None] * len(items)
        todo = []
        for k, (it, sub, rng) in enumerate(zip(items, subsets, rngs)):
            pix, box, did_flip = image_tensor(it, bucket, crop, sub.flip, sub.background, rng)
            cacheable = self.mode != "no" and crop == "center" and not sub.flip
            key = self.key(it, bucket, box, did_flip) if cacheable else None
            hit = self._cached(key)
            if hit is not None:
                out[k] = hit
                self.hits += 1
            else:
                todo.append((k, pix, key))
        for k, pix, key in todo:
            out[k] = z = self.encode(pix[None])[0].cpu()
            if key:
                self._store(key, z)
        return torch.stack(out)  # type: ignore[arg-type]


class TextCache:
    """Conditioning per caption; with ``enabled`` (frozen text encoders) each caption is encoded once."""

    def __init__(self, enabled: bool, clip_skip: int, device: torch.device) -> None:
        self.enabled, self.clip_skip, self.device = enabled, clip_skip, device
        self.mem: dict[str, dict[str, torch.Tensor]] = {}

    def conditioning(self, pipe: Any, text_encoders: list[Any], captions: list[str]) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return encode(pipe, text_encoders, captions, self.clip_skip, self.device)
        for c in dict.fromkeys(captions):
            if c not in self.mem:  # one caption at a time, so cached values do not depend on batch composition
                with torch.no_grad():
                    enc = encode(pipe, text_encoders, [c], self.clip_skip, self.device)
                self.mem[c] = {k: v[0].detach() for k, v in enc.items()}
        return {k: torch.stack([self.mem[c][k] for c in captions]) for k in self.mem[captions[0]]}
