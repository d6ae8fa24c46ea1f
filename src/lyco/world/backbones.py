"""Tiny evaluation backbones standing in for CLIP, DINOv2 and VGG-19, in the real ones' formats.

* ``clip``: a transformers ``CLIPModel`` + ``CLIPProcessor`` folder (image–text alignment);
* ``dino``: a transformers ``Dinov2Model`` + image-processor folder (image similarity and diversity);
* ``vgg``: :class:`VGG19`, torchvision's VGG-19 module layout (``features`` indices kept, so taps after modules
  0, 5, 10, 19, 28 are conv1_1 … conv5_1) with narrower channels, for Gram-matrix style losses.  It loads
  torchvision's own ``vgg19`` state dict as well (channels are read from the weights).

``load_clip("builtin:clip")`` and ``load_clip("openai/clip-vit-large-patch14")`` go through the same code.
How the shipped weights were trained: ``scripts/train_backbones.py`` and ``lyco/world/README.md``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from .. import builtin
from ..builtin import BackboneNotFoundError
from ..errors import FileFormatError
from ..io.pretrained import load_pretrained

#: torchvision's VGG-19 ("E") layer plan: channel counts and "M" for max-pool
VGG19_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
#: features indices of conv1_1 ... conv5_1 (add 1 for the ReLU after each)
STYLE_TAPS = (0, 5, 10, 19, 28)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_backbone(name_or_path: str | os.PathLike[str], kind: str) -> str:
    """``builtin:clip`` / ``builtin:dino`` / ``builtin:vgg`` -> the shipped folder (:func:`lyco.builtin.resolve`);
    anything else (a folder, a file, a hub id) unchanged."""
    text = os.fspath(name_or_path)
    return str(builtin.resolve(text, kind)) if builtin.is_builtin(text) else text


def load_clip(name_or_path: str = "builtin:clip") -> tuple[Any, Any]:
    """(CLIPModel, CLIPProcessor) from a folder or hub id (``builtin:clip``: the tiny one, offline)."""
    from transformers import CLIPModel, CLIPProcessor
    path = resolve_backbone(name_or_path, "clip")
    local = path != os.fspath(name_or_path) or os.path.isdir(path)
    model = load_pretrained(CLIPModel, path, what="CLIP backbone", local_files_only=local).eval()
    return model, CLIPProcessor.from_pretrained(path, local_files_only=local)


def load_dino(name_or_path: str = "builtin:dino") -> tuple[Any, Any]:
    """(Dinov2Model, image processor) from a folder or hub id (``builtin:dino``: the tiny one, offline)."""
    from transformers import AutoImageProcessor, Dinov2Model
    path = resolve_backbone(name_or_path, "dino")
    local = path != os.fspath(name_or_path) or os.path.isdir(path)
    model = load_pretrained(Dinov2Model, path, what="DINOv2 backbone", local_files_only=local).eval()
    return model, AutoImageProcessor.from_pretrained(path, local_files_only=local)


# ------------------------------------------------------------------------------------------ VGG
def vgg_plan(widths: Sequence[int]) -> tuple[int | str, ...]:
    """VGG-19's plan with the five stage widths replaced (torchvision: 64, 128, 256, 512, 512)."""
    stage = 0
    out: list[int | str] = []
    for item in VGG19_PLAN:
        if item == "M":
            out.append("M")
            stage += 1
        else:
            out.append(widths[stage])
    return tuple(out)


class VGG19(nn.Module):
    """torchvision's VGG-19 layout: ``features`` (same indices), ``avgpool``, ``classifier`` (indices 0, 3, 6).

    ``widths`` are the five stage widths; ``pool`` the avgpool size (torchvision: 7); ``hidden`` the classifier
    width (4096).  ReLUs are not in-place, so a tap after a conv is the conv's output."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512, 512), num_classes: int = 1000,
                 pool: int = 7, hidden: int = 4096) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in vgg_plan(tuple(widths)):
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(c_in * pool * pool, hidden), nn.ReLU(), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(),
            nn.Linear(hidden, num_classes))
        self.widths = tuple(widths)
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the network's input (ImageNet mean/std)."""
        mean = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x01.dtype, device=x01.device)[:, None, None]
        return (x01 - mean) / std

    def taps(self, x: torch.Tensor, layers: tuple[int, ...] = STYLE_TAPS) -> list[torch.Tensor]:
        """Outputs after the given ``features`` indices (normalised input)."""
        outs, last = [], max(layers)
        for i, mod in enumerate(self.features):
            x = mod(x)
            if i in layers:
                outs.append(x)
            if i >= last:
                break
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(h, 1))

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], **meta: Any) -> VGG19:
        """Build from a torchvision-format state dict (``features.N.weight``, ``classifier.N.weight``)."""
        try:
            widths = tuple(int(sd[f"features.{i}.weight"].shape[0]) for i in STYLE_TAPS)
        except KeyError as exc:
            raise FileFormatError(f"not a torchvision VGG-19 state dict: missing {exc}") from None
        has_head = "classifier.0.weight" in sd
        if has_head:
            hidden = int(sd["classifier.0.weight"].shape[0])
            num_classes = int(sd["classifier.6.weight"].shape[0])
            pool = round((sd["classifier.0.weight"].shape[1] / widths[-1]) ** 0.5)
        else:  # features only: a small placeholder head
            hidden, num_classes, pool = 8, 1, 1
        net = cls(widths, num_classes, pool, hidden)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        if not has_head:
            missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected:
            raise FileFormatError(f"VGG-19 state dict does not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
        if "mean" in meta:
            net.mean, net.std = tuple(meta["mean"]), tuple(meta["std"])
        return net.eval()


def gram(feat: torch.Tensor) -> torch.Tensor:
    """Gram matrices (B, C, C) of features (B, C, H, W), normalised by C·H·W."""
    b, c, h, w = feat.shape
    f = feat.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def load_vgg(name_or_path: str | os.PathLike[str] = "builtin:vgg") -> VGG19:
    """A VGG-19 from a folder (``model.safetensors`` + ``config.json``), a ``.safetensors``/``.pth`` file in
    torchvision format, or ``builtin:vgg`` (the tiny one)."""
    path = Path(resolve_backbone(name_or_path, "vgg"))
    meta: dict[str, Any] = {}
    if path.is_dir():
        if (path / "config.json").is_file():
            meta = json.loads((path / "config.json").read_text())
        path = path / "model.safetensors"
    if not path.is_file():
        raise BackboneNotFoundError(f"VGG weights not found at {path}")
    if path.suffix == ".safetensors":
        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return VGG19.from_state_dict({k: v.float() for k, v in sd.items()}, **meta)


# ------------------------------------------------------------------------------------------ embeddings
def _pil(images: Any) -> list[Any]:
    from PIL import Image
    return [im if hasattr(im, "convert") else Image.fromarray(np.asarray(im)) for im in images]


@torch.no_grad()
def clip_image_embeds(model: Any, processor: Any, images: Any) -> torch.Tensor:
    """L2-normalised CLIP image embeddings of uint8 arrays or PIL images."""
    px = processor(images=_pil(images), return_tensors="pt")["pixel_values"]
    emb = model.get_image_features(pixel_values=px)
    emb = emb.pooler_output if hasattr(emb, "pooler_output") else emb
    return torch.nn.functional.normalize(emb, dim=-1)


@torch.no_grad()
def clip_text_embeds(model: Any, processor: Any, texts: list[str]) -> torch.Tensor:
    """L2-normalised CLIP text embeddings (77-token padding, as CLIP was trained)."""
    tok = processor.tokenizer(texts, padding="max_length", max_length=model.config.text_config.max_position_embeddings,
                              truncation=True, return_tensors="pt")
    emb = model.get_text_features(input_ids=tok["input_ids"])
    emb = emb.pooler_output if hasattr(emb, "pooler_output") else emb
    return torch.nn.functional.normalize(emb, dim=-1)


@torch.no_grad()
def dino_embeds(model: Any, processor: Any, images: Any) -> torch.Tensor:
    """L2-normalised DINOv2 CLS embeddings (``pooler_output``) of uint8 arrays or PIL images."""
    px = processor(images=_pil(images), return_tensors="pt")["pixel_values"]
    return torch.nn.functional.normalize(model(pixel_values=px).pooler_output, dim=-1)


@torch.no_grad()
def unit_gram_vectors(vgg: VGG19, images: Any, relu: bool = True) -> torch.Tensor:
    """Flattened Gram matrices at conv1_1 … conv5_1 (after their ReLU when ``relu``), each scaled to unit norm so
    that every layer weighs the same, concatenated: the world's style descriptor.  (The evaluation's style loss uses
    :func:`lyco.eval.backbones.style_gram_vectors`, which does not normalise.)"""
    x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im)
                                   for im in images])).permute(0, 3, 1, 2).float() / 255.0
    taps = tuple(i + 1 for i in STYLE_TAPS) if relu else STYLE_TAPS
    grams = [gram(f).flatten(1) for f in vgg.taps(vgg.normalize(x), taps)]
    return torch.cat([torch.nn.functional.normalize(g, dim=1) for g in grams], dim=1)
