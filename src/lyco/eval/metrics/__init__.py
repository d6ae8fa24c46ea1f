"""Metric classes and their registry (definitions: docs/EVALUATION.md §5).

A metric is fed the features of one image set (one checkpoint, one leaf, one prompt type) and returns numbers::

    m = ImageSimilarity("trigger")
    m.update(gen_features, references=dataset_features)
    m.compute()            # {"value": 0.53, "n": 100}

``requires`` says what :meth:`Metric.update` needs besides the generated images' features: ``prompts`` (the
processed prompts' text features, one row per image), ``references`` (the leaf's dataset features) or
``base_images`` (the base model's features of the same prompts and seeds, row-matched).  ``feature`` names the
feature kind: ``embedding`` (DINOv2 or CLIP image embeddings), ``clip`` (CLIP image + text) or ``gram`` (VGG Gram
vectors).  The registry maps names to classes and is read-only.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from ...errors import ConfigError, did_you_mean
from . import functional as F

TRAIN, TRIGGER, ALTER, STYLE = "train", "trigger", "alter", "style"
AGNOSTIC, AGNOSTIC_CLASS = "agnostic", "agnostic_class"
#: every prompt type, in report order
PROMPT_TYPES = (TRAIN, TRIGGER, ALTER, STYLE, AGNOSTIC, AGNOSTIC_CLASS)
#: the paper's prompt-type names and code suffixes
PROMPT_TYPE_LABELS = {TRAIN: "<train> (in)", TRIGGER: "<trigger>", ALTER: "<alter> (out)", STYLE: "<style>",
                      AGNOSTIC: "agnostic", AGNOSTIC_CLASS: "agnostic + class word"}
FIDELITY_TYPES = (TRAIN, TRIGGER, ALTER)
LEAK_TYPES = (AGNOSTIC, AGNOSTIC_CLASS)


class Metric:
    """Base class: accumulates feature batches, computes once."""

    name: ClassVar[str]
    display: ClassVar[str]
    description: ClassVar[str] = ""
    higher_is_better: ClassVar[bool]
    feature: ClassVar[str]
    requires: ClassVar[frozenset[str]]
    prompt_types: ClassVar[tuple[str, ...]]
    #: only for leaves of a style category (the paper's style similarity) / never for them
    style_concepts_only: ClassVar[bool] = False

    def __init__(self, prompt_type: str = TRIGGER) -> None:
        self.prompt_type = prompt_type
        self._gen: list[np.ndarray] = []
        self._ref: list[np.ndarray] = []
        self._base: list[np.ndarray] = []
        self._text: list[np.ndarray] = []
        self._groups: list[np.ndarray] = []

    def update(self, features: np.ndarray, prompts: np.ndarray | None = None, references: np.ndarray | None = None,
               base: np.ndarray | None = None, groups: np.ndarray | None = None) -> None:
        """Add generated-image features (rows), with the row-matched text features / base features, the
        reference features, and each image's prompt index (``groups``) as the metric requires."""
        given = {"prompts": prompts, "references": references, "base_images": base}
        for need in self.requires - {"images"}:
            if given[need] is None and not (need == "references" and self._ref):   # references: once is enough
                raise ValueError(f"metric {self.name!r} needs {need}")
        self._gen.append(F.as_matrix(features))
        if prompts is not None:
            self._text.append(F.as_matrix(prompts))
        if references is not None:
            self._ref.append(F.as_matrix(references))
        if base is not None:
            self._base.append(F.as_matrix(base))
        if groups is not None:
            self._groups.append(np.asarray(groups))

    @staticmethod
    def _cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts, axis=0)

    def value(self) -> float:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        if not self._gen:
            raise ValueError(f"metric {self.name!r}: compute() before update()")
        return {"value": self.value(), "n": float(sum(len(g) for g in self._gen))}


class ImageSimilarity(Metric):
    description = ('mean cosine over all (dataset, generated) pairs of normalised features '
                   '(= dot product of the centroids)')
    name, display, higher_is_better, feature = "image_similarity", "Image Similarity", True, "embedding"
    requires = frozenset({"images", "references"})
    prompt_types = FIDELITY_TYPES

    def value(self) -> float:
        return F.image_similarity(self._cat(self._ref), self._cat(self._gen))


class SquaredCentroidDistance(Metric):
    description = 'squared distance between the centroids of normalised dataset and generated features'
    name, display, higher_is_better, feature = "scd", "Image Similarity-SCD", False, "embedding"
    requires = frozenset({"images", "references"})
    prompt_types = FIDELITY_TYPES

    def value(self) -> float:
        return F.squared_centroid_distance(self._cat(self._ref), self._cat(self._gen))


class TextSimilarity(Metric):
    description = 'mean cosine between each image and its own prompt (trigger words removed or replaced)'
    name, display, higher_is_better, feature = "text_similarity", "Text Similarity", True, "clip"
    requires = frozenset({"images", "prompts"})
    prompt_types = FIDELITY_TYPES

    def value(self) -> float:
        return F.paired_cosine(self._cat(self._gen), self._cat(self._text))


class Vendi(Metric):
    """Diversity.  ``<alter>``: the mean Vendi score of each prompt's images (the paper's ``(out)``)."""

    description = 'Vendi score (linear kernel, q = 1) of the generated images; <alter>: mean over prompts'
    name, display, higher_is_better, feature = "vendi", "Diversity", True, "embedding"
    requires = frozenset({"images"})
    prompt_types = FIDELITY_TYPES

    def value(self) -> float:
        z = self._cat(self._gen)
        if self.prompt_type == ALTER and self._groups:
            return F.vendi_per_group(z, self._cat(self._groups))
        return F.vendi_score(z)


class StyleLoss(Metric):
    """Model preservation: Gram-matrix distance to the base model's image of the same prompt and seed."""

    description = "mean Gram-matrix (VGG-19) distance to the base model's image of the same prompt and seed"
    name, display, higher_is_better, feature = "style_loss", "Model Preservation", False, "gram"
    requires = frozenset({"images", "base_images"})
    prompt_types = (STYLE,) + LEAK_TYPES

    def value(self) -> float:
        return F.style_loss(self._cat(self._gen), self._cat(self._base))


class PreservationSimilarity(Metric):
    """Leak / preservation: mean cosine between seed-matched base and fine-tuned images (concept-agnostic prompts)."""

    description = 'mean cosine between seed-matched base and fine-tuned images of concept-agnostic prompts'
    name, display, higher_is_better, feature = "preservation_similarity", "Preservation Similarity", True, "embedding"
    requires = frozenset({"images", "base_images"})
    prompt_types = LEAK_TYPES

    def value(self) -> float:
        return F.paired_cosine(self._cat(self._gen), self._cat(self._base))


class StyleSimilarity(Metric):
    description = 'all-pairs mean squared distance between dataset and generated Gram vectors'
    name, display, higher_is_better, feature = "style_similarity", "Style Similarity", False, "gram"
    requires = frozenset({"images", "references"})
    prompt_types = FIDELITY_TYPES
    style_concepts_only = True

    def value(self) -> float:
        return F.style_similarity(self._cat(self._ref), self._cat(self._gen))


class FID(Metric):
    """Fréchet distance to the dataset on the embedding encoder (not part of the paper's protocol)."""

    description = 'Fréchet distance between Gaussians fitted to dataset and generated features'
    name, display, higher_is_better, feature = "fid", "FD", False, "embedding"
    requires = frozenset({"images", "references"})
    prompt_types = FIDELITY_TYPES

    def value(self) -> float:
        return F.frechet_distance(self._cat(self._ref), self._cat(self._gen))


class KID(Metric):
    """Kernel distance to the dataset on the embedding encoder (not part of the paper's protocol)."""

    description = 'unbiased MMD² with a cubic polynomial kernel between dataset and generated features'
    name, display, higher_is_better, feature = "kid", "KD", False, "embedding"
    requires = frozenset({"images", "references"})
    prompt_types = FIDELITY_TYPES

    def value(self) -> float:
        return F.kernel_inception_distance(self._cat(self._ref), self._cat(self._gen))


REGISTRY: Mapping[str, type[Metric]] = MappingProxyType({cls.name: cls for cls in (
    ImageSimilarity, SquaredCentroidDistance, TextSimilarity, Vendi, StyleLoss, PreservationSimilarity,
    StyleSimilarity, FID, KID)})
#: the paper's metrics (FID/KID are opt-in)
DEFAULT_METRICS = ("image_similarity", "scd", "text_similarity", "vendi", "style_loss", "style_similarity",
                   "preservation_similarity")


def get_metric(name: str) -> type[Metric]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}{did_you_mean(name, REGISTRY)}; available: "
                          f"{', '.join(REGISTRY)}") from None


def higher_is_better(name: str) -> bool:
    return get_metric(name).higher_is_better


def metric_label(metric: str, encoder: str, resize: str, prompt_type: str) -> str:
    """``<Metric> (<encoder>-<resize>) (<prompt type>)`` (docs/EVALUATION.md §5, identifiers)."""
    enc = f"{encoder}-{resize}" if resize else encoder
    return f"{get_metric(metric).display} ({enc}) ({prompt_type})"


__all__ = ["Metric", "REGISTRY", "DEFAULT_METRICS", "PROMPT_TYPES", "get_metric", "higher_is_better", "metric_label",
           "F"]
