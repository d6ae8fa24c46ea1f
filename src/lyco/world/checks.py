"""The world's own knowledge: what an image shows, whether it matches a prompt, how much it shows a concept.

A small CNN (:class:`WorldClassifier`) is trained on renders of the whole world, held-out concepts included
(shapes, object colours, backgrounds, styles, sizes, positions), with blur / noise / colour augmentation so that it
also reads generated images.  Its weights ship in ``lyco/data/world/classifier.safetensors`` (made by
``scripts/train_backbones.py``; :func:`train_classifier` reproduces them).  Colours can also be read without it:
:func:`region_colours` takes the background from the border and the object from the pixels that differ from it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..builtin import DATA_DIR
from ..errors import LycoError
from ..io.atomic import atomic_path
from . import render as R
from .concepts import CONCEPTS, Concept, PromptSpec, get_concept

CLASSIFIER_PATH = DATA_DIR / "world" / "classifier.safetensors"

OBJ_COLOURS = tuple(R.COLOURS) + ("teal",)
BACKGROUND_LABELS = tuple(f"plain:{c}" for c in R.COLOURS) + tuple(k for k in R.BACKGROUNDS if k != "plain")
HEADS: dict[str, tuple[str, ...]] = {
    "shape": R.SHAPES,
    "colour": OBJ_COLOURS,
    "background": BACKGROUND_LABELS,
    "style": R.STYLES,
    "size": tuple(R.SIZES),
    "position": R.POSITIONS,
}
IGNORE = -100


class ClassifierMissingError(LycoError, FileNotFoundError):
    """The shipped world classifier is missing."""


class WorldClassifier(nn.Module):
    """A 4-conv CNN with one linear head per attribute.  Input: (B, 3, 32, 32) in [-1, 1]."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 3 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(3 * w * 16, 192), nn.GELU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(192, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[-1] != 32:
            x = F.interpolate(x, size=(32, 32), mode="area")
        h = self.body(x)
        return {k: head(h) for k, head in self.heads.items()}


# ------------------------------------------------------------------------------------------ labels + data
def scene_labels(scene: R.Scene) -> dict[str, int]:
    obj = scene.objects[0]
    colour = "teal" if obj.rgb == R.TEAL else obj.colour
    bg = scene.background
    bgl = f"plain:{bg.colour}" if bg.kind == "plain" else bg.kind
    duo = scene.style == "duotone"
    return {
        "shape": HEADS["shape"].index(obj.shape),
        "colour": IGNORE if duo or colour not in OBJ_COLOURS else OBJ_COLOURS.index(colour),
        "background": IGNORE if duo and bg.kind == "plain" else BACKGROUND_LABELS.index(bgl),
        "style": R.STYLES.index(scene.style),
        "size": tuple(R.SIZES).index(obj.size),
        "position": R.POSITIONS.index(obj.position),
    }


def sample_any_scene(rng: np.random.Generator) -> R.Scene:
    """A scene from the whole world (concept shapes, backgrounds and styles included) for the evaluators."""
    bg = R.sample_background(rng, R.BACKGROUNDS, p=(0.6, 0.08, 0.08, 0.08, 0.16))
    obj = R.sample_object(rng, shapes=R.SHAPES, exclude_colour=bg.colour if bg.kind == "plain" else None)
    if obj.shape == "ghost" and rng.random() < 0.5:
        obj = R.ObjectSpec(obj.shape, "", obj.size, obj.position, rgb=R.TEAL, jitter=obj.jitter)
    style = str(rng.choice(R.STYLES, p=[0.45, 0.13, 0.13, 0.13, 0.16]))
    return R.Scene((obj,), bg, style)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise and small colour shifts, so the classifier reads decoded (slightly soft) images."""
    b = x.shape[0]
    sig = torch.rand(b, generator=gen) * 0.7
    k = torch.arange(-2, 3, dtype=x.dtype)
    ker = torch.exp(-0.5 * (k[None] / sig.clamp(min=1e-3)[:, None]) ** 2)
    ker = ker / ker.sum(1, keepdim=True)
    xs = x.reshape(1, b * 3, 32, 32)
    kk = ker.repeat_interleave(3, 0)
    xs = F.conv2d(F.pad(xs, (2, 2, 0, 0), mode="replicate"), kk[:, None, None, :], groups=b * 3)
    xs = F.conv2d(F.pad(xs, (0, 0, 2, 2), mode="replicate"), kk[:, None, :, None], groups=b * 3)
    x = xs.reshape(b, 3, 32, 32)
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.05
    x = (x * (1 + (torch.rand(b, 3, 1, 1, generator=gen) - 0.5) * 0.1)
         + (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.1)
    return x.clamp(-1, 1)


def images_to_tensor(images: np.ndarray | list) -> torch.Tensor:
    """uint8 (B, H, W, 3) arrays or PIL images -> float (B, 3, H, W) in [-1, 1]."""
    if isinstance(images, list):
        images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return x.float().div(127.5).sub(1.0).contiguous()  # NCHW-contiguous: channels-last is much slower on CPU


def train_classifier(seed: int = 0, n_images: int = 24000, epochs: int = 12, batch: int = 128,
                     log_every: int = 0) -> WorldClassifier:
    """Train the world classifier from renders, deterministically for a seed."""
    torch.manual_seed(seed)
    scenes = [sample_any_scene(R.scene_rng(seed, i, 11)) for i in range(n_images)]
    x_all = images_to_tensor(np.stack([R.render(s) for s in scenes]))
    y_all = {k: torch.tensor([scene_labels(s)[k] for s in scenes]) for k in HEADS}
    net = WorldClassifier()
    steps = epochs * (n_images // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n_images, generator=gen)
        for i in range(n_images // batch):
            idx = perm[i * batch:(i + 1) * batch]
            out = net(augment(x_all[idx], gen))
            loss = cast(torch.Tensor, sum(F.cross_entropy(out[k], y_all[k][idx], ignore_index=IGNORE) for k in HEADS))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if log_every and step % log_every == 0:
                print(f"classifier step {step}/{steps} loss {loss.item():.3f}", flush=True)
    return net.eval()


@torch.no_grad()
def _reconstruct(vae: nn.Module, x: torch.Tensor, gen: torch.Generator, batch: int = 250) -> torch.Tensor:
    out = []
    for i in range(0, len(x), batch):
        post = vae.encode(x[i:i + batch]).latent_dist  # type: ignore[operator]
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        out.append(vae.decode(z).sample.clamp(-1, 1))  # type: ignore[operator]
    return torch.cat(out)


def finetune_on_decoded(net: WorldClassifier, vae: nn.Module, seed: int = 0, n_images: int = 6000,
                        steps: int = 600, batch: int = 128, log_every: int = 0) -> WorldClassifier:
    """Fine-tune the classifier on half renders, half VAE round trips of renders, so that it reads images decoded
    by that VAE (softer edges, slight colour shifts) as well as renders."""
    torch.manual_seed(seed + 1)
    scenes = [sample_any_scene(R.scene_rng(seed, i, 12)) for i in range(n_images)]
    x = images_to_tensor(np.stack([R.render(s) for s in scenes]))
    gen = torch.Generator().manual_seed(seed + 1)
    xr = _reconstruct(vae, x, gen)
    y = {k: torch.tensor([scene_labels(s)[k] for s in scenes]) for k in HEADS}
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        idx = torch.randint(0, n_images, (batch,), generator=gen)
        use_rec = (torch.rand(batch, generator=gen) < 0.5)[:, None, None, None]
        xb = torch.where(use_rec, xr[idx], augment(x[idx], gen))
        out = net(xb)
        loss = cast(torch.Tensor, sum(F.cross_entropy(out[k], y[k][idx], ignore_index=IGNORE) for k in HEADS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"classifier (decoded) step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    return net.eval()


def save_classifier(net: WorldClassifier, path: str | Path = CLASSIFIER_PATH) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().half().contiguous() for k, v in net.state_dict().items()}, str(tmp))


def load_classifier(path: str | Path = CLASSIFIER_PATH) -> WorldClassifier:
    if not Path(path).is_file():
        raise ClassifierMissingError(f"world classifier weights not found at {path}; "
                                     "run scripts/train_backbones.py to make them")
    net = WorldClassifier()
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return net.eval()


# ------------------------------------------------------------------------------------------ reading images
@dataclass(frozen=True)
class Reading:
    """What the classifier reads in one image: a label and its probability per attribute."""

    labels: dict[str, str]
    probs: dict[str, dict[str, float]]

    def p(self, head: str, label: str) -> float:
        return self.probs[head].get(label, 0.0)


@torch.no_grad()
def read_images(images: np.ndarray | list, classifier: WorldClassifier | None = None) -> list[Reading]:
    net = classifier or load_classifier()
    x = images_to_tensor(images)
    out = net(x)
    readings = []
    for i in range(x.shape[0]):
        probs = {k: dict(zip(HEADS[k], F.softmax(out[k][i], -1).tolist())) for k in HEADS}
        labels = {k: max(v, key=v.__getitem__) for k, v in probs.items()}
        readings.append(Reading(labels, probs))
    return readings


def region_colours(image: np.ndarray, threshold: float = 60.0) -> tuple[str, str | None]:
    """(background colour, object colour) names from pixel regions: the border is the background, pixels far
    from it are the object.  For plain backgrounds; object is None when no pixel stands out."""
    img = np.asarray(image, dtype=np.float64)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(img - bg, axis=-1)
    fg = img[dist > threshold]
    names = list(R.COLOURS)
    pal = np.array([R.COLOURS[c] for c in names], dtype=np.float64)
    bg_name = names[int(np.argmin(np.linalg.norm(pal - bg, axis=1)))]
    if len(fg) < 4:
        return bg_name, None
    obj = np.median(fg, axis=0)
    return bg_name, names[int(np.argmin(np.linalg.norm(pal - obj, axis=1)))]


# ------------------------------------------------------------------------------------------ prompt checks
def check(reading: Reading, spec: PromptSpec) -> dict[str, bool]:
    """For each attribute the prompt names, whether the image shows it."""
    result: dict[str, bool] = {}
    for key, want in spec.attributes().items():
        if key == "concept":
            result[key] = concept_score_from_reading(reading, get_concept(want)) >= 0.5
        else:
            result[key] = reading.labels[key] == want
    return result


def check_images(images: np.ndarray | list, specs: list[PromptSpec],
                 classifier: WorldClassifier | None = None) -> list[dict[str, bool]]:
    if len(images) != len(specs):
        raise ValueError(f"{len(images)} images for {len(specs)} prompts")
    return [check(r, s) for r, s in zip(read_images(images, classifier), specs)]


def concept_score_from_reading(reading: Reading, concept: Concept) -> float:
    if concept.category == "character":
        return math.sqrt(reading.p("shape", concept.shape or "") * reading.p("colour", "teal"))
    if concept.category == "object":
        return reading.p("shape", concept.shape or "")
    if concept.category == "style":
        return reading.p("style", concept.style or "")
    return reading.p("background", concept.background or "")


def concept_score(image: np.ndarray, concept: str | Concept, classifier: WorldClassifier | None = None) -> float:
    """How much one image (H, W, 3 uint8) shows a held-out concept, in [0, 1] (>= 0.5: it does)."""
    return concept_scores(np.asarray(image)[None], concept, classifier)[0]


def concept_scores(images: np.ndarray | list, concept: str | Concept,
                   classifier: WorldClassifier | None = None) -> list[float]:
    c = get_concept(concept) if isinstance(concept, str) else concept
    return [concept_score_from_reading(r, c) for r in read_images(images, classifier)]


def base_prompt(shape: str, colour: str, background: str, size: str | None = None,
                position: str | None = None, style: str | None = None) -> PromptSpec:
    """A plain base-world prompt and its attributes (``background``: a colour name or a landscape kind)."""
    words = ([size] if size else []) + [colour, shape]
    text = f"{R.article(words[0])} {' '.join(words)}"
    if position:
        text += " " + R.POSITION_WORDS[position]
    if background in R.COLOURS:
        text += f" on {R.article(background)} {background} background"
        bg = f"plain:{background}"
    else:
        text += f" in a {R.LANDSCAPE_WORDS[background]}"
        bg = background
    if style:
        text += f", {style} style"
    return PromptSpec(text, "base", None, shape, colour, bg, style, size, position)


__all__ = [
    "CONCEPTS",
    "HEADS",
    "Reading",
    "WorldClassifier",
    "base_prompt",
    "check",
    "check_images",
    "concept_score",
    "concept_scores",
    "load_classifier",
    "parse_scene_prompt",
    "read_images",
    "region_colours",
    "save_classifier",
    "train_classifier",
]


def parse_scene_prompt(prompt: str) -> PromptSpec:
    """The scene a micro-world prompt asks for (concept, shape, colour, background, style, ...), read from its
    words (sentence or tag form)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    attrs: dict[str, str] = {}
    triggers = {c.trigger: c for c in CONCEPTS.values()}
    concept = next((triggers[w] for w in words if w in triggers), None)
    if concept is not None:
        attrs["concept"] = concept.name
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if concept is not None and i > 0 and words[i - 1] == concept.trigger and w == concept.class_word:
            continue  # "olis creature": the class word, not the base shape
        if w in R.COLOURS and nxt == "background":
            attrs.setdefault("background", f"plain:{w}")
        elif w in R.LANDSCAPE_WORDS and nxt == "scene":
            attrs.setdefault("background", w)
        elif w in R.BASE_STYLES and nxt == "style":
            attrs.setdefault("style", w)
        elif w in R.COLOURS:
            attrs.setdefault("colour", w)
        elif w in R.BASE_SHAPES:
            attrs.setdefault("shape", w)
        elif w in R.SIZES:
            attrs.setdefault("size", w)
        elif w in R.POSITIONS:
            attrs.setdefault("position", w)
    return PromptSpec(prompt, "base" if concept is None else "content", **attrs)
