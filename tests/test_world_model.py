"""lyco-tiny (builtin:tiny): loads offline as a Stable Diffusion pipeline, follows prompts, does not know the
held-out concepts.  Checked with the world's own classifier."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from lyco import builtin
from lyco.world import checks as K
from lyco.world.concepts import CONCEPTS
from lyco.world.model import load_pipeline, tiny_model_path
from lyco.world.sampling import generate

#: (shape, colour, background) prompts covering every base shape, colour and plain background
FOLLOW = [
    ("circle", "red", "white"), ("square", "blue", "yellow"), ("triangle", "green", "black"),
    ("star", "yellow", "blue"), ("cross", "white", "red"), ("ring", "purple", "white"),
    ("creature", "orange", "green"), ("circle", "black", "orange"), ("square", "red", "green"),
    ("triangle", "purple", "yellow"), ("star", "orange", "purple"), ("cross", "blue", "white"),
    ("ring", "green", "blue"), ("creature", "yellow", "purple"), ("circle", "white", "black"),
    ("square", "orange", "blue"), ("triangle", "red", "white"), ("star", "white", "green"),
    ("cross", "black", "yellow"), ("ring", "red", "black"), ("creature", "blue", "white"),
    ("circle", "green", "purple"), ("square", "purple", "orange"), ("star", "red", "yellow"),
]


GUIDANCE = 7.0
#: per-attribute floors for the shipped model (measured values in src/lyco/world/README.md)
FOLLOW_FLOORS = {"shape": 0.85, "colour": 0.85, "background": 0.85}  # measured: 1.0, 1.0, 1.0


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("builtin:tiny")


@pytest.fixture(scope="module")
def classifier():
    return K.load_classifier()


def _folder_mb(path) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1e6


def test_loads_offline_with_plain_diffusers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    path = tiny_model_path()
    p = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)
    assert isinstance(p.unet, UNet2DConditionModel) and isinstance(p.vae, AutoencoderKL)
    assert isinstance(p.text_encoder, CLIPTextModel) and isinstance(p.tokenizer, CLIPTokenizer)
    assert p.unet.config.cross_attention_dim == p.text_encoder.config.hidden_size
    assert any("CrossAttn" in b for b in p.unet.config.down_block_types)
    assert p.unet.dtype == torch.float32 and p.text_encoder.dtype == torch.float32
    assert p.vae.config.scaling_factor != 0.18215  # measured from the latents
    assert _folder_mb(path) <= 25.0
    assert builtin.resolve("builtin:tiny") == path
    with pytest.raises(builtin.ModelNotFoundError, match="builtin:tiny"):
        builtin.resolve("builtin:tinyy")


def test_lyco_sd_loader_reports_sd_architecture():
    import lyco.sd
    p = lyco.sd.load_pipeline("builtin:tiny")
    info = lyco.sd.model_info(p)
    assert info.family == "sd1" and info.prediction_type == "epsilon" and info.resolution == 32


def test_generation_is_deterministic(pipe):
    a = generate(["a red star on a blue background"] * 2, pipe, steps=8, seed=3)
    b = generate(["a red star on a blue background"] * 2, pipe, steps=8, seed=3)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a[0], a[1])


def _follow(triples, pipe, classifier, seed: int) -> tuple[float, dict[str, float]]:
    """Share of samples showing all of their prompt's (shape, colour, background), and the share per attribute."""
    specs = [K.base_prompt(s, c, b) for s, c, b in triples]
    images = generate([s.prompt for s in specs], pipe, steps=20, guidance=GUIDANCE, seed=seed)
    results = K.check_images(images, specs, classifier)
    per_attr = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
    return float(np.mean([all(r.values()) for r in results])), per_attr


@pytest.fixture(scope="module")
def follow_results(pipe, classifier):
    return _follow(FOLLOW, pipe, classifier, seed=0)


def test_follows_prompts_above_chance(follow_results):
    """Regression guard: shape, colour and background are each followed far above chance (1/7, 1/8, 1/8)."""
    _acc, per_attr = follow_results
    for attr, floor in FOLLOW_FLOORS.items():
        assert per_attr[attr] >= floor, (attr, per_attr)


def _random_prompts(n: int, seed: int) -> list[tuple[str, str, str]]:
    """n random (shape, colour, background) triples of the base world, object and background colours distinct."""
    from lyco.world import render as R
    rng = np.random.default_rng(seed)
    colours = list(R.COLOURS)
    out = []
    for _ in range(n):
        c, b = rng.choice(colours, 2, replace=False)
        out.append((R.BASE_SHAPES[rng.integers(len(R.BASE_SHAPES))], str(c), str(b)))
    return out


def test_follows_prompts_80_percent(follow_results, pipe, classifier):
    """The issue's acceptance check: >= 80% of samples show their prompt's shape, colour and background — on the
    fixed set above and on 48 random prompts (measured: 24/24 and 42/48)."""
    acc, per_attr = follow_results
    assert acc >= 0.8, f"prompt following {acc:.2f} (per attribute {per_attr})"
    acc_random, per_attr = _follow(_random_prompts(48, seed=1), pipe, classifier, seed=100)
    assert acc_random >= 0.8, f"prompt following on random prompts {acc_random:.2f} (per attribute {per_attr})"


def test_held_out_concepts_are_not_produced(pipe, classifier):
    """Before fine-tuning, the base model does not draw the held-out concepts from their prompts."""
    prompts, names = [], []
    for c in CONCEPTS.values():
        for spec in [c.prompt_sets()["trigger"][0], *c.content_prompts[:3]]:
            prompts.append(spec.prompt)
            names.append(c.name)
    images = generate(prompts, pipe, steps=20, guidance=GUIDANCE, seed=0)
    readings = K.read_images(images, classifier)
    for c in CONCEPTS.values():
        scores = [K.concept_score_from_reading(r, c) for r, n in zip(readings, names) if n == c.name]
        assert np.mean([s >= 0.5 for s in scores]) <= 0.25, (c.name, scores)


def test_classifier_reads_renders(classifier):
    """The judge itself: near-perfect on fresh renders of the whole world."""
    from lyco.world import render as R
    scenes = [K.sample_any_scene(R.scene_rng(99, i, 5)) for i in range(200)]
    readings = K.read_images(np.stack([R.render(s) for s in scenes]), classifier)
    for head, floor in (("shape", 0.85), ("style", 0.85), ("background", 0.95), ("colour", 0.92)):
        labels = [K.scene_labels(s)[head] for s in scenes]
        pairs = [(K.HEADS[head][y], r.labels[head]) for y, r in zip(labels, readings) if y != K.IGNORE]
        assert np.mean([a == b for a, b in pairs]) >= floor, head
    # concept scores separate concept renders from base renders
    for c in CONCEPTS.values():
        from lyco.world.dataset import concept_items
        pos = K.concept_scores(np.stack([im for im, _, _ in concept_items(c, 1, n=8)]), c, classifier)
        assert np.mean([s >= 0.5 for s in pos]) >= 0.75, c.name
    base = np.stack([R.render(R.sample_scene(R.scene_rng(98, i))) for i in range(40)])
    for c in CONCEPTS.values():
        assert max(K.concept_scores(base, c, classifier)) < 0.5, c.name


def test_parse_scene_prompt_and_region_colours():
    spec = K.parse_scene_prompt("a small red star at the top on a blue background, outline style")
    assert spec.attributes() == {"shape": "star", "colour": "red", "background": "plain:blue",
                                 "style": "outline", "size": "small", "position": "top"}
    assert K.parse_scene_prompt("olis creature in a night scene").attributes() == {
        "concept": "olis", "background": "night"}
    from lyco.world import render as R
    img = R.render(R.Scene((R.ObjectSpec("square", "green", "large"),), R.BackgroundSpec("plain", "purple")))
    assert K.region_colours(img) == ("purple", "green")


def test_model_card_records_training():
    meta = json.loads((tiny_model_path() / "lyco_tiny.json").read_text())
    assert meta["seed"] == 0 and meta["train_seconds"] > 0
