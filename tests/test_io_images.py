"""lyco.io.images.load_rgb: every image mode a dataset may hold comes back as 8-bit RGB with the right pixels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lyco.io.images import load_rgb


def _write(tmp_path, im: Image.Image, name: str = "x.png", **save) -> object:
    p = tmp_path / name
    im.save(p, **save)
    return p


@pytest.mark.parametrize("mode, colour, background, expected, note", [
    ("RGB", (10, 20, 30), (0, 0, 0), (10, 20, 30), None),
    ("L", 77, (0, 0, 0), (77, 77, 77), "L to RGB"),
    ("RGBA", (200, 100, 50, 0), (0, 255, 0), (0, 255, 0), "alpha composited"),       # transparent: background
    ("RGBA", (200, 100, 50, 255), (0, 255, 0), (200, 100, 50), "alpha composited"),  # opaque: the pixel
    ("LA", (90, 0), (1, 2, 3), (1, 2, 3), "alpha composited"),
    ("I;16", 65535, (0, 0, 0), (255, 255, 255), "16-bit to 8-bit"),
])
def test_modes_become_8bit_rgb(tmp_path, mode, colour, background, expected, note):
    p = _write(tmp_path, Image.new(mode, (4, 3), colour))
    im, got_note = load_rgb(p, background)
    assert im.mode == "RGB" and im.size == (4, 3)
    assert np.asarray(im)[1, 2].tolist() == list(expected)
    assert got_note == note


def test_palette_with_transparency_and_cmyk(tmp_path):
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    p = _write(tmp_path, pal, transparency=0)
    im, note = load_rgb(p, (0, 0, 255))
    assert note == "alpha composited" and np.asarray(im)[0, 0].tolist() == [0, 0, 255]
    cmyk = _write(tmp_path, Image.new("CMYK", (2, 2), (0, 0, 0, 0)), "c.jpg", quality=100)
    im, note = load_rgb(cmyk)
    assert note == "CMYK to RGB" and im.mode == "RGB"
    assert np.asarray(im).min() >= 250                     # no ink = white


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (4, 2), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6                                        # rotate 90° clockwise on display
    p = _write(tmp_path, im, "o.jpg", exif=exif.tobytes())
    out, _ = load_rgb(p)
    assert out.size == (2, 4)


def test_file_is_closed_and_image_detached(tmp_path):
    p = _write(tmp_path, Image.new("RGB", (2, 2), (1, 2, 3)))
    im, _ = load_rgb(p)
    p.unlink()                                              # nothing keeps the file open (Windows would refuse)
    assert np.asarray(im)[0, 0].tolist() == [1, 2, 3]
