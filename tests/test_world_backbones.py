"""The tiny evaluation backbones: real formats, and they separate what they must."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lyco import builtin
from lyco.world import backbones as B
from lyco.world import render as R
from lyco.world.concepts import CONCEPTS
from lyco.world.dataset import concept_items


def _mb(path) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1e6


@pytest.fixture(scope="module")
def clip():
    return B.load_clip("builtin:clip")


@pytest.fixture(scope="module")
def dino():
    return B.load_dino("builtin:dino")


@pytest.fixture(scope="module")
def vgg():
    return B.load_vgg("builtin:vgg")


def test_formats_and_sizes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import (
        AutoImageProcessor,
        AutoModel,
        AutoTokenizer,
        CLIPModel,
        Dinov2Model,
    )
    clip_dir, dino_dir = B.resolve_backbone("builtin:clip", "clip"), B.resolve_backbone("builtin:dino", "dino")
    assert isinstance(CLIPModel.from_pretrained(clip_dir), CLIPModel)
    assert AutoTokenizer.from_pretrained(clip_dir)("a red circle").input_ids
    assert isinstance(AutoModel.from_pretrained(dino_dir), Dinov2Model)
    assert AutoImageProcessor.from_pretrained(dino_dir) is not None
    assert sum(_mb(builtin.resolve(f"builtin:{k}", k)) for k in ("clip", "dino", "vgg")) <= 10.0
    with pytest.raises(builtin.BackboneNotFoundError, match="is a clip backbone, not a dino backbone"):
        B.resolve_backbone("builtin:clip", "dino")


def test_vgg_keeps_torchvision_layout(vgg):
    for i in B.STYLE_TAPS:
        assert isinstance(vgg.features[i], torch.nn.Conv2d)
    assert len(vgg.features) == 37 and isinstance(vgg.features[36], torch.nn.MaxPool2d)
    # a torchvision-format state dict (here a narrow one; real vgg19 weights load the same way)
    ref = B.VGG19((8, 16, 16, 32, 32), num_classes=10, pool=7, hidden=16)
    net = B.VGG19.from_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 32, 32)
    taps = net.taps(x)
    assert [t.shape[1] for t in taps] == [8, 16, 16, 32, 32]
    assert torch.equal(taps[0], ref.features[0](x))
    feats_only = {k: v for k, v in ref.state_dict().items() if k.startswith("features.")}
    assert torch.equal(B.VGG19.from_state_dict(feats_only).taps(x)[-1], taps[-1])


def test_clip_retrieves_held_out_renders(clip):
    """Image -> caption retrieval among 32 fresh renders (never seen in training): chance is 1/32."""
    model, proc = clip
    scenes = [R.sample_scene(R.scene_rng(1234, i, 77)) for i in range(32)]
    images = [R.render(s) for s in scenes]
    texts = [R.describe(s) for s in scenes]
    sim = B.clip_image_embeds(model, proc, images) @ B.clip_text_embeds(model, proc, texts).T
    i2t = (sim.argmax(1) == torch.arange(32)).float().mean().item()
    t2i = (sim.argmax(0) == torch.arange(32)).float().mean().item()
    assert i2t >= 0.4 and t2i >= 0.4, (i2t, t2i)
    # the matching caption beats a caption with the colour swapped
    wrong = [t.replace(s.objects[0].colour, "green" if s.objects[0].colour != "green" else "red", 1)
             for t, s in zip(texts, scenes)]
    diag = sim.diag()
    wrong_sim = (B.clip_image_embeds(model, proc, images) * B.clip_text_embeds(model, proc, wrong)).sum(-1)
    assert (diag > wrong_sim).float().mean().item() >= 0.8


def test_dino_similarity_higher_within_a_concept(dino):
    model, proc = dino
    embs = {c: B.dino_embeds(model, proc, [im for im, _, _ in concept_items(CONCEPTS[c], 0, n=8)])
            for c in CONCEPTS}
    for c, e in embs.items():
        within = (e @ e.T)[~torch.eye(8, dtype=torch.bool)].mean()
        across = torch.stack([(e @ f.T).mean() for d, f in embs.items() if d != c]).max()
        assert within > across, (c, within.item(), across.item())


def test_vgg_gram_separates_the_style_concept_better_than_content(vgg):
    """The held-out style (pgs: duotone) over 8 scenes: images sharing the style but not the scene are closer in
    Gram features than images sharing the scene but not the style, and each duotone image's nearest neighbour
    (among these and the same scenes in the four base styles) is mostly another duotone image.  (The base styles keep a
    scene's palette, so for them the Gram features, dominated by colour statistics, follow the content.)"""
    styles = ("flat", "outline", "pixel", "blurry", "duotone")
    scenes = [R.sample_scene(R.scene_rng(55, i)) for i in range(8)]
    imgs, style_of, scene_of = [], [], []
    for si, s in enumerate(scenes):
        for st in styles:
            imgs.append(R.render(R.with_style(s, st)))
            style_of.append(st)
            scene_of.append(si)
    g = B.unit_gram_vectors(vgg, imgs)
    g = g / g.norm(dim=1, keepdim=True)
    d = torch.cdist(g, g)
    so, sc = np.array(style_of), np.array(scene_of)
    duo = so == "duotone"
    same_style = torch.from_numpy(duo[:, None] & duo[None] & (sc[:, None] != sc[None]))
    same_scene = torch.from_numpy(duo[:, None] & ~duo[None] & (sc[:, None] == sc[None]))
    assert d[same_style].mean() < 0.7 * d[same_scene].mean()
    d.fill_diagonal_(float("inf"))
    nn_idx = d.argmin(1).numpy()
    assert (so[nn_idx][duo] == "duotone").mean() >= 0.75
