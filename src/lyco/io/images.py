"""Reading images as 8-bit RGB the way every lyco reader needs them (dataset scans, latent caching, evaluation).

EXIF orientation is applied; RGBA / LA / palette-with-transparency images are composited on a background colour;
16-bit and 32-bit integer images are scaled to 8 bits; CMYK, palette, greyscale and the rest are converted to RGB.
Needs Pillow (the ``sd`` extra).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def load_rgb(path: Path, background: tuple[int, int, int] = (255, 255, 255)) -> tuple[Image.Image, str | None]:
    """Open an image as 8-bit RGB; returns (image, conversion note or None)."""
    with Image.open(path) as opened:
        im: Image.Image = ImageOps.exif_transpose(opened)
        mode = im.mode
        note = None
        if mode in ("RGBA", "LA") or (mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (*background, 255))
            im = Image.alpha_composite(bg, rgba).convert("RGB")
            note = "alpha composited"
        elif mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            hi = 65535.0 if arr.max() > 255 else 255.0
            im = Image.fromarray((arr / hi * 255.0).round().clip(0, 255).astype("uint8")).convert("RGB")
            note = "16-bit to 8-bit"
        elif mode != "RGB":
            im = im.convert("RGB")
            note = f"{mode} to RGB"
        else:
            im = im.copy()
    return im, note
