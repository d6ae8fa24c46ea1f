"""Backbone loading from local folders / state dicts in the real formats, preprocessing, the feature cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eval_fixtures import TINY_VGG_WIDTHS, vgg_state_dict, write_clip, write_dino
from lyco.errors import ConfigError, FileFormatError
from lyco.eval import backbones as B
from lyco.eval.features import FeatureCache, extract, feature_key
from lyco.eval.metrics import functional as F


def _img(w, h, seed=0):
    a = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(a)


def test_letterbox_geometry():
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    out = B.letterbox(img, 32)                       # scale 0.8 -> 32x16, pad 16: top 8, bottom 8
    a = np.asarray(out)
    assert out.size == (32, 32)
    assert a[:8].max() == 0 and a[24:].max() == 0 and a[8:24].min() == 255
    odd = np.asarray(B.letterbox(Image.new("RGB", (10, 31), (255, 255, 255)), 32))   # 10*32/31 -> 10, pad 22: 11/11
    assert odd[:, :11].max() == 0 and odd[:, 11:21].min() == 255 and odd[:, 21:].max() == 0
    assert B.resize_square(img, 32).size == (32, 32)
    assert B.short_side(img, 24).size == (48, 24)
    assert B.center_crop(img, 16).size == (16, 16)
    sq = _img(32, 32)
    assert np.array_equal(np.asarray(B.letterbox(sq, 32)), np.asarray(B.resize_square(sq, 32)))


def test_dino_folder(tmp_path):
    from transformers import Dinov2Model
    folder = write_dino(tmp_path / "dino")
    bb = B.load_dino(folder, image_size=32)
    x = torch.stack([bb.preprocess(_img(40, 30, i), "letterbox") for i in range(3)])
    feats = bb.encode_image(x)
    assert feats.shape == (3, 32)
    ref = Dinov2Model.from_pretrained(folder).eval()(pixel_values=x)
    assert torch.allclose(feats, ref.last_hidden_state[:, 0], atol=1e-6)     # the final-norm CLS token
    assert B.load_dino(folder, image_size=32).id == bb.id
    assert B.load_dino(folder, image_size=28).id != bb.id
    with pytest.raises(FileFormatError, match="DINOv2"):
        B.load_dino(tmp_path)


def test_clip_folder(tmp_path):
    from transformers import CLIPModel
    folder = write_clip(tmp_path / "clip")
    bb = B.load_clip(folder)
    assert bb.image_size == 32                        # the model's own input size
    x = torch.stack([bb.preprocess(_img(32, 32, i)) for i in range(2)])
    img = bb.encode_image(x)
    txt = bb.encode_text(["a red circle", "", "olis creature on a red background"])
    assert img.shape == (2, 16) and txt.shape == (3, 16)
    model = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        direct = model.get_image_features(pixel_values=x)
    direct = direct if isinstance(direct, torch.Tensor) else direct.pooler_output
    assert torch.allclose(img, direct, atol=1e-6)
    with pytest.raises(ConfigError, match="does not exist"):
        B.load_clip(tmp_path / "missing")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vgg_torchvision_state_dict(tmp_path, suffix):
    sd = vgg_state_dict()
    path = tmp_path / f"vgg19{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    relu = B.load_vgg(path, taps="relu", image_size=24)
    conv = B.load_vgg(path, taps="conv", image_size=24)
    assert relu.id != conv.id
    im = _img(36, 24, 1)
    x = relu.preprocess(im)[None]
    assert x.shape == (1, 3, 24, 36)                  # aspect-preserving, short side 24, no crop
    g_relu, g_conv = relu.encode_image(x), conv.encode_image(x)
    channels = B.vgg_tap_channels(TINY_VGG_WIDTHS)
    assert g_relu.shape == (1, F.gram_dims(channels))
    # relu taps are the ReLU of the conv taps: recompute Grams from the conv outputs
    taps = conv.model(x)
    assert torch.allclose(g_relu, B.style_gram_vectors([t.clamp(min=0) for t in taps]), atol=1e-6)
    assert not torch.allclose(g_relu, g_conv)
    # style loss of an image with itself is 0, with another image > 0
    assert F.style_loss(g_relu.numpy(), relu.encode_image(x).numpy()) == 0.0
    other = relu.encode_image(relu.preprocess(_img(36, 24, 2))[None])
    assert F.style_loss(g_relu.numpy(), other.numpy()) > 0
    with pytest.raises(ConfigError):
        B.tap_indices("pre")


def test_vgg_rejects_other_state_dicts(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(FileFormatError):
        B.load_vgg(path)


def test_feature_cache_reuses_and_keys_by_mode(tmp_path, monkeypatch):
    folder = write_dino(tmp_path / "dino")
    bb = B.load_dino(folder, image_size=32)
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        _img(48, 32, i).save(p)
        paths.append(p)
    cache = FeatureCache(tmp_path / "cache")
    items = [(p, "letterbox") for p in paths] + [(paths[0], "resize")]
    first = extract(bb, items, cache, batch_size=2, progress=False)
    assert len(first) == 4 and len(list((tmp_path / "cache").rglob("*.npy"))) == 4

    def boom(batch):
        raise AssertionError("should have been cached")
    monkeypatch.setattr(bb, "encode_image", boom)
    again = extract(bb, items, cache, progress=False)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    # batched and cached features equal a one-by-one forward
    monkeypatch.undo()
    x = bb.preprocess(Image.open(paths[1]), "letterbox")[None]
    assert np.allclose(first[feature_key(paths[1], "letterbox")], bb.encode_image(x)[0].numpy(), atol=1e-5)
