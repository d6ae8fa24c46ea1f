"""Metric definitions (docs/EVALUATION.md §5) on constructed features."""
from __future__ import annotations

import numpy as np
import pytest

from lyco.errors import ConfigError
from lyco.eval.metrics import DEFAULT_METRICS, REGISTRY, get_metric, metric_label
from lyco.eval.metrics import functional as F


def rand(n, d, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def test_all_pairs_mean_is_centroid_dot():
    a, b = rand(7, 12, 1), rand(9, 12, 2)
    assert F.image_similarity(a, b) == pytest.approx(F.all_pairs_cosine(a, b), abs=1e-12)


def test_identical_items_similarity_one_scd_zero():
    v = rand(1, 16, 3)
    same = np.repeat(v, 5, axis=0) * np.arange(1, 6)[:, None]      # scaling does not matter: features are normalised
    assert F.image_similarity(same, same) == pytest.approx(1.0)
    assert F.squared_centroid_distance(same, same) == pytest.approx(0.0, abs=1e-15)


def test_identical_diverse_sets_scd_zero_similarity_one_minus_variance():
    a = rand(10, 8, 4)
    assert F.squared_centroid_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-15)
    assert F.image_similarity(a, a) == pytest.approx(1 - F.set_variance(a))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identity_similarity_scd_variances(seed):
    a, b = rand(6, 5, seed) + 1.0, rand(11, 5, seed + 10)
    lhs = 1 - F.image_similarity(a, b)
    rhs = 0.5 * (F.squared_centroid_distance(a, b) + F.set_variance(a) + F.set_variance(b))
    assert lhs == pytest.approx(rhs, abs=1e-12)
    # V = 1 - |z̄|² for unit rows
    assert F.set_variance(a) == pytest.approx(1 - np.sum(F.centroid(a) ** 2))


def test_vendi_identical_and_orthonormal():
    v = rand(1, 10, 5)
    assert F.vendi_score(np.repeat(v, 7, axis=0)) == pytest.approx(1.0)
    assert F.vendi_score(np.eye(6, 10) * 3.0) == pytest.approx(6.0)
    # n > d: the d×d route gives the same non-zero spectrum (4 directions, each twice)
    assert F.vendi_score(np.vstack([np.eye(4), 2 * np.eye(4)])) == pytest.approx(4.0)
    x = rand(20, 6, 6)
    assert 1.0 <= F.vendi_score(x) <= 6.0 + 1e-9
    # per-prompt blocks: two blocks of 3 orthonormal items -> mean 3
    blocks = np.vstack([np.eye(3, 8), np.eye(3, 8, k=3)])
    assert F.vendi_per_group(blocks, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(3.0)


def test_style_loss_and_similarity():
    g1, g2 = rand(5, 30, 7), rand(5, 30, 8)
    assert F.style_loss(g1, g1.copy()) == 0.0
    assert F.style_loss(g1, g2) == pytest.approx(F.style_loss(g2, g1))
    assert F.style_loss(g1, g2) == pytest.approx(np.mean(np.sum((g1 - g2) ** 2, axis=1)))
    with pytest.raises(ValueError):
        F.style_loss(g1, g2[:4])
    # style similarity = all-pairs mean squared distance, unnormalised
    ref, gen = rand(4, 9, 9), rand(6, 9, 10) + 0.5
    pairs = np.mean([[np.sum((r - g) ** 2) for g in gen] for r in ref])
    assert F.style_similarity(ref, gen) == pytest.approx(pairs)


def test_gram_dimension_of_real_vgg19_from_shapes():
    from lyco.eval.backbones import vgg_tap_channels
    channels = vgg_tap_channels()
    assert channels == [64, 128, 256, 512, 512]
    assert F.gram_dims(channels) == 610_304


def test_paired_cosine_and_distances():
    a = rand(5, 4, 11)
    assert F.paired_cosine(a, 2 * a) == pytest.approx(1.0)
    assert F.paired_cosine(a, -a) == pytest.approx(-1.0)
    x = rand(40, 3, 12)
    assert F.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert F.frechet_distance(x, x + 2.0) == pytest.approx(12.0, rel=1e-6)
    assert abs(F.kernel_inception_distance(rand(200, 3, 13), rand(200, 3, 14))) < 0.05
    assert F.kernel_inception_distance(x, x + 3.0) > 0.5


def test_metric_classes_and_registry():
    ref, gen = rand(6, 8, 1), rand(6, 8, 2)
    m = get_metric("image_similarity")("trigger")
    m.update(gen[:3], references=ref)
    m.update(gen[3:])
    assert m.compute() == {"value": pytest.approx(F.image_similarity(ref, gen)), "n": 6.0}
    v = get_metric("vendi")("alter")
    v.update(np.vstack([np.eye(3, 8), np.eye(3, 8, k=3)]), groups=np.array([0, 0, 0, 1, 1, 1]))
    assert v.compute()["value"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="base_images"):
        get_metric("style_loss")("style").update(gen)
    with pytest.raises(ConfigError, match="did you mean 'vendi'"):
        get_metric("vendy")
    assert set(DEFAULT_METRICS) <= set(REGISTRY)
    for name, cls in REGISTRY.items():
        assert cls.requires <= {"images", "prompts", "references", "base_images"}, name
    assert not get_metric("scd").higher_is_better and get_metric("text_similarity").higher_is_better
    assert metric_label("image_similarity", "dino", "letterbox", "alter") == "Image Similarity (dino-letterbox) (alter)"
