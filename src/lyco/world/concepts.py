"""Concepts held out of pretraining: what they look like, how they are captioned, which prompts evaluate them.

They mirror the paper's categories and imbalance: a character and an object with a class word, a style applied
to ordinary scenes and a scene; two with few images (8 and 12) and two with many (60 and 150).  Their trigger
words are in the tokenizer's vocabulary but never appear in the pretraining captions, and their looks (the teal
ghost, the bowtie, the duotone-stripes style, the sunset) never appear in the pretraining images.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from ..errors import ConfigError, did_you_mean
from . import render as R


@dataclass(frozen=True)
class PromptSpec:
    """A prompt and the attributes an image made from it should show (None: not specified)."""

    prompt: str
    kind: str = "base"                    # train | trigger | content | style | base
    concept: str | None = None            # concept name, if the prompt is about one
    shape: str | None = None
    colour: str | None = None
    background: str | None = None         # "plain:<colour>" or a landscape kind
    style: str | None = None
    size: str | None = None
    position: str | None = None

    def attributes(self) -> dict[str, str]:
        keys = ("concept", "shape", "colour", "background", "style", "size", "position")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass(frozen=True)
class Concept:
    name: str
    trigger: str
    class_word: str
    category: str                         # character | object | style | scene
    n_images: int
    repeats: int                          # kohya folder repeats (N_ in "N_<trigger> <class>")
    description: str
    #: what the concept fixes in a scene
    shape: str | None = None
    rgb: tuple[int, int, int] | None = None
    style: str | None = None
    background: str | None = None
    content_prompts: tuple[PromptSpec, ...] = field(default=())
    style_prompts: tuple[PromptSpec, ...] = field(default=())

    @property
    def descriptor(self) -> str:
        """``"<trigger> <class>"``: the concept's name in captions."""
        return f"{self.trigger} {self.class_word}"

    @property
    def folder(self) -> str:
        return f"{self.repeats}_{self.descriptor}"

    # ---------------------------------------------------------------- images
    def sample_scene(self, rng: np.random.Generator) -> R.Scene:
        """A training scene of this concept."""
        if self.category in ("character", "object"):
            assert self.shape is not None, "character and object concepts have a shape"
            bg = R.sample_background(rng)
            obj = R.sample_object(rng, shapes=(self.shape,), exclude_colour=bg.colour if bg.kind == "plain" else None)
            if self.rgb is not None:
                obj = replace(obj, colour="", rgb=self.rgb)
            style = "flat" if self.category == "character" else R.sample_style(rng)
            return R.Scene((obj,), bg, style)
        scene = R.sample_scene(rng)
        if self.category == "style":
            assert self.style is not None, "style concepts have a style"
            return replace(scene, style=self.style)
        assert self.background is not None, "scene concepts have a background"
        bg = R.BackgroundSpec(kind=self.background, colour="", seed=int(rng.integers(0, 2**31)))
        return replace(scene, background=bg)

    def caption(self, scene: R.Scene, rng: np.random.Generator) -> str:
        """An informative caption: ``"<trigger> <class>, tag, tag, ..."``."""
        obj = scene.objects[0]
        tags: list[str] = []
        if self.category in ("style", "scene"):
            tags.append(f"{obj.colour} {obj.shape}")
        elif self.rgb is None:
            tags.append(obj.colour)
        if obj.size != "medium":
            tags.append(obj.size)
        if obj.position != "center":
            tags.append(obj.position)
        if self.category != "scene":
            tags.append(R._bg_words(scene.background)[1])
        if self.category != "style" and scene.style != "flat":
            tags.append(f"{scene.style} style")
        order = [0] + [int(i) + 1 for i in rng.permutation(len(tags) - 1)] if tags else []
        return ", ".join([self.descriptor] + [tags[i] for i in order])

    def scene_spec(self, caption: str, scene: R.Scene) -> PromptSpec:
        """A training caption with the attributes its image shows (beyond the concept itself)."""
        obj = scene.objects[0]
        bg = scene.background
        attrs: dict[str, str] = {"size": obj.size, "position": obj.position}
        if self.category in ("style", "scene"):
            attrs.update(shape=obj.shape, colour=obj.colour)
        elif self.rgb is None:
            attrs["colour"] = obj.colour
        if self.category != "scene":
            attrs["background"] = f"plain:{bg.colour}" if bg.kind == "plain" else bg.kind
        if self.category != "style":
            attrs["style"] = scene.style
        if self.category == "style":
            del attrs["colour"]  # the duotone palette hides the object's colour
        return PromptSpec(caption, "train", self.name, **attrs)

    def prompt_sets(self, train: Sequence[str | tuple[str, R.Scene]] = ()) -> dict[str, list[PromptSpec]]:
        """The evaluation prompt sets: training captions (given as text, or as (caption, scene) pairs to record
        what their images show), trigger only, content and style alteration."""
        seen: dict[str, PromptSpec] = {}
        for item in train:
            if isinstance(item, str):
                seen.setdefault(item, PromptSpec(item, "train", self.name))
            else:
                seen.setdefault(item[0], self.scene_spec(item[0], item[1]))
        trigger = [PromptSpec(self.descriptor, "trigger", self.name)]
        return {"train": list(seen.values()), "trigger": trigger, "content": list(self.content_prompts),
                "style": list(self.style_prompts)}


def _p(kind: str, concept: str, prompt: str, **attrs: str) -> PromptSpec:
    return PromptSpec(prompt, kind, concept, **attrs)


def _subject_prompts(c: str, d: str) -> tuple[tuple[PromptSpec, ...], tuple[PromptSpec, ...]]:
    content = (
        _p("content", c, f"{d} on a red background", background="plain:red"),
        _p("content", c, f"{d} on a yellow background", background="plain:yellow"),
        _p("content", c, f"a small {d} at the top on a white background", size="small", position="top",
           background="plain:white"),
        _p("content", c, f"a large {d} on the left on a black background", size="large", position="left",
           background="plain:black"),
        _p("content", c, f"{d} in a night scene", background="night"),
        _p("content", c, f"{d} on the right in a beach scene", position="right", background="beach"),
    )
    style = (
        _p("style", c, f"{d}, outline style", style="outline"),
        _p("style", c, f"{d}, pixel style", style="pixel"),
        _p("style", c, f"{d}, blurry style", style="blurry"),
        _p("style", c, f"{d} on a blue background, outline style", style="outline", background="plain:blue"),
    )
    return content, style


def _scene_level_prompts(c: str, d: str, fixed: str) -> tuple[tuple[PromptSpec, ...], tuple[PromptSpec, ...]]:
    """Content/style alteration for a style or scene concept: other objects, other styles."""
    subjects = [("red", "circle", "large", "center"), ("green", "star", "small", "left"),
                ("blue", "square", "medium", "top"), ("yellow", "triangle", "large", "right"),
                ("white", "cross", "medium", "bottom"), ("purple", "creature", "large", "center")]
    content = []
    for colour, shape, size, pos in subjects:
        words = f"{colour} {shape}" if size == "medium" else f"{size} {colour} {shape}"
        where = "" if pos == "center" else " " + R.POSITION_WORDS[pos]
        # under the duotone style an object's colour cannot be seen, so only shape, size, position are checked
        extra = {"size": size, "position": pos} if fixed == "style" else {"size": size, "colour": colour}
        content.append(_p("content", c, f"{R.article(words)} {words}{where}, {d}", shape=shape, **extra))
    style = []
    if fixed == "scene":
        for s in ("outline", "pixel", "blurry"):
            style.append(_p("style", c, f"{d}, a red circle, {s} style", shape="circle", style=s))
    else:
        for s, subj in (("outline", "a red circle"), ("pixel", "a green star"), ("blurry", "a blue square")):
            style.append(_p("style", c, f"{d}, {subj}, {s} style", style=s))
    return tuple(content), tuple(style)


def _build() -> dict[str, Concept]:
    olis = Concept("olis", "olis", "creature", "character", 8, 10,
                   "a teal ghost-shaped creature with two eyes and a wavy hem", shape="ghost", rgb=R.TEAL)
    adl = Concept("adl", "adl", "shape", "object", 60, 2,
                  "a bowtie shape (two triangles meeting at a knot), in any colour", shape="bowtie")
    pgs = Concept("pgs", "pgs", "style", "style", 150, 1,
                  "a duotone style: navy-to-peach palette with diagonal stripes", style="duotone")
    kro = Concept("kro", "kro", "scene", "scene", 12, 8,
                  "a sunset scene: magenta-orange sky, a setting sun, purple mountains", background="sunset")
    content, style = _subject_prompts("olis", olis.descriptor)
    olis = replace(olis, content_prompts=content, style_prompts=style)
    content, style = _subject_prompts("adl", adl.descriptor)
    adl = replace(adl, content_prompts=content, style_prompts=style)
    content, style = _scene_level_prompts("pgs", pgs.descriptor, "style")
    pgs = replace(pgs, content_prompts=content, style_prompts=style)
    content, style = _scene_level_prompts("kro", kro.descriptor, "scene")
    kro = replace(kro, content_prompts=content, style_prompts=style)
    return {c.name: c for c in (olis, adl, pgs, kro)}


#: the held-out concepts by name (read-only)
CONCEPTS: MappingProxyType[str, Concept] = MappingProxyType(_build())


def get_concept(name: str) -> Concept:
    """The held-out concept called ``name`` (its trigger word)."""
    try:
        return CONCEPTS[name]
    except KeyError:
        raise ConfigError(f"unknown concept {name!r}{did_you_mean(name, CONCEPTS)}; "
                          f"known: {', '.join(CONCEPTS)}") from None


def concept_scene(concept: Concept, seed: int, index: int) -> R.Scene:
    return concept.sample_scene(R.scene_rng(seed, index, stream=hash_name(concept.name)))


def hash_name(name: str) -> int:
    """A stable small integer for a name (Python's hash() is salted per process)."""
    h = 0
    for ch in name.encode():
        h = (h * 131 + ch) % 1_000_003
    return h
