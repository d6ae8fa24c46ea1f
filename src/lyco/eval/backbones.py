"""Feature backbones from local weights (docs/EVALUATION.md §4): DINOv2 and CLIP (transformers or open_clip
folders) and a VGG-19 feature stack from a torchvision-format state dict.  No hub access: every backbone is built
from a local path.

Each backbone has ``preprocess(image, mode) -> tensor``, ``encode_image(batch) -> (B, D)`` (CLIP also
``encode_text(list[str])``) and an ``id`` that fingerprints its weights and settings (the feature-cache key).
``builtin`` paths are the micro-world's tiny backbones under ``lyco/data/backbones/{dino,clip,vgg}``.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .. import builtin
from ..errors import ConfigError, FileFormatError
from ..io.pretrained import load_pretrained
from ..world.backbones import STYLE_TAPS as VGG_TAPS
from ..world.backbones import load_vgg as world_load_vgg
from ..world.backbones import vgg_plan

log = logging.getLogger("lyco")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin")


# ------------------------------------------------------------------------------------------- preprocessing
def rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Plain (aspect-changing) bicubic resize to size×size: generated images."""
    return rgb(img).resize((size, size), Image.Resampling.BICUBIC)


def letterbox(img: Image.Image, size: int) -> Image.Image:
    """Longest side → size (new side = round(side·scale)), black padding, left/top pad ⌊pad/2⌋: dataset images."""
    img = rgb(img)
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img.resize((nw, nh), Image.Resampling.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shortest side → size, then the central size×size crop."""
    img = short_side(img, size)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def short_side(img: Image.Image, size: int) -> Image.Image:
    """Aspect-preserving bicubic resize with the shortest side = size, no crop (VGG)."""
    img = rgb(img)
    w, h = img.size
    scale = size / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)


RESIZERS = {"resize": resize_square, "letterbox": letterbox, "center_crop": center_crop, "short_side": short_side}


def to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    a = np.asarray(rgb(img), dtype=np.float32) / 255.0
    t = torch.from_numpy(a).permute(2, 0, 1)
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


# ------------------------------------------------------------------------------------------- helpers
def fingerprint(module: nn.Module, *extra: object) -> str:
    """sha256 over parameter/buffer names and bytes, plus settings: identifies the weights for the cache."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:16]


def builtin_path(kind: str, name: str = "") -> Path:
    """The micro-world's tiny backbone folder for ``kind`` (dino, clip, vgg); ``name``: the ``builtin:`` id given."""
    try:
        return builtin.resolve(name or builtin.PREFIX + kind, kind)
    except builtin.BuiltinNotFoundError as exc:
        raise ConfigError(f"backbones.{kind} = {name or 'builtin'!r}: {exc}; or give a local weights path") from None


def _preprocessor(folder: Path) -> dict[str, Any]:
    pp = folder / "preprocessor_config.json"
    return json.loads(pp.read_text(encoding="utf-8")) if pp.is_file() else {}


def _norm_stats(folder: Path, default: tuple) -> tuple[tuple[float, ...], tuple[float, ...]]:
    d = _preprocessor(folder)
    if "image_mean" in d and "image_std" in d:
        return tuple(d["image_mean"]), tuple(d["image_std"])
    return default


def _input_size(folder: Path, default: int) -> int:
    """The square input side a transformers folder's image processor crops to (else ``default``)."""
    crop = _preprocessor(folder).get("crop_size")
    if isinstance(crop, dict) and "height" in crop:
        return int(crop["height"])
    if isinstance(crop, int):
        return crop
    return default


def _features(out: Any) -> torch.Tensor:
    """transformers ≥ 5 returns model outputs from get_*_features, older versions a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    return out.last_hidden_state[:, 0]


class Backbone:
    """Common interface.  ``kind``: dino | clip | vgg."""

    kind = ""

    def __init__(self, model: nn.Module, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, dtype: torch.dtype, source: str, extra: tuple = ()) -> None:
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.device, self.dtype = device, dtype
        self.source = source
        self.id = f"{self.kind}-{fingerprint(self.model, image_size, self.mean, self.std, *extra)}"
        self.model.to(device)

    @property
    def cache_key(self) -> str:
        """Feature-cache folder name: the weights fingerprint and the extraction dtype."""
        return f"{self.id}-{str(self.dtype).replace('torch.', '')}"

    def preprocess(self, img: Image.Image, mode: str = "resize") -> torch.Tensor:
        return to_tensor(RESIZERS[mode](img, self.image_size), self.mean, self.std)

    def _autocast(self) -> Any:
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self._encode_image(batch.to(self.device)).float()

    def _encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DinoBackbone(Backbone):
    """DINOv2 (any transformers vision model with a CLS token): the final-norm CLS token (``pooler_output``)."""

    kind = "dino"

    def _encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        return _features(self.model(pixel_values=batch))


class ClipBackbone(Backbone):
    """CLIP image and text embeddings after projection, unnormalised."""

    kind = "clip"
    model: Any  # a transformers CLIPModel, or an open_clip model (OpenClipBackbone)

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int, **kw: Any) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        super().__init__(model, **kw)

    def _encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=batch))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        with self._autocast():
            out = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                               attention_mask=tok["attention_mask"].to(self.device))
        return _features(out).float()


class OpenClipBackbone(ClipBackbone):
    """An open_clip model (``open_clip_config.json`` + weights); needs the optional ``open_clip_torch`` package."""

    def _encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        with self._autocast():
            return self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float()


# ------------------------------------------------------------------------------------------- VGG-19
# VGG_TAPS: ``features`` indices of conv1_1 … conv5_1 (the micro-world's VGG19 keeps torchvision's indices)


def tap_indices(taps: str) -> tuple[int, ...]:
    """``relu``: relu1_1…relu5_1 (what the paper's numbers are: torchvision's in-place ReLUs overwrote its conv
    taps); ``conv``: the true pre-activations conv1_1…conv5_1."""
    if taps == "relu":
        return tuple(i + 1 for i in VGG_TAPS)
    if taps == "conv":
        return tuple(VGG_TAPS)
    raise ConfigError(f"metrics.vgg_taps = {taps!r}: expected 'relu' or 'conv'")


def vgg_tap_channels(widths: Sequence[int] = (64, 128, 256, 512, 512)) -> list[int]:
    """Channel count at each tap for VGG-19 stage widths (shapes only)."""
    plan = vgg_plan(tuple(widths))
    convs, i = {}, 0
    for item in plan:
        if item == "M":
            i += 1
        else:
            convs[i] = int(item)
            i += 2
    return [convs[t] for t in VGG_TAPS]


class VGGTaps(nn.Module):
    """``features[:30]`` of a VGG-19 (the part the style loss reads) returning the five taps.  The micro-world's
    :class:`VGG19` has non-in-place ReLUs, so conv taps really are pre-activation."""

    def __init__(self, net: nn.Module, taps: str = "relu") -> None:
        super().__init__()
        self.layers = tap_indices(taps)
        features: Any = net.features  # a VGG's nn.Sequential
        self.features: nn.Sequential = features[: max(self.layers) + 1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                out.append(x)
        return out


def style_gram_vectors(taps: list[torch.Tensor]) -> torch.Tensor:
    """g(x) of the paper's style loss: each tap's Gram ψψᵀ/(c·h·w), flattened and concatenated, not normalised →
    (B, Σ c²).  (The micro-world's :func:`~lyco.world.backbones.unit_gram_vectors` scales each layer to unit norm.)"""
    out = []
    for t in taps:
        b, c, h, w = t.shape
        f = t.float().reshape(b, c, h * w)
        out.append((f @ f.transpose(1, 2) / (c * h * w)).reshape(b, c * c))
    return torch.cat(out, dim=1)


class VggBackbone(Backbone):
    """Gram vectors of the five taps; images are resized aspect-preserving (short side = image_size), no crop."""

    kind = "vgg"

    def preprocess(self, img: Image.Image, mode: str = "short_side") -> torch.Tensor:
        return to_tensor(short_side(img, self.image_size), self.mean, self.std)

    def _encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        return style_gram_vectors(self.model(batch))


# ------------------------------------------------------------------------------------------- loading
def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def resolve_weights(kind: str, path: str | Path) -> Path:
    """``builtin`` / ``builtin:<kind>`` → the micro-world's folder; else the path, which must exist."""
    if str(path) == "builtin" or builtin.is_builtin(path):
        return builtin_path(kind, "" if str(path) == "builtin" else str(path))
    p = Path(path)
    if not p.exists():
        what = {"dino": "a transformers folder", "clip": "a transformers or open_clip folder",
                "vgg": "a torchvision-format state dict or folder"}[kind]
        raise ConfigError(f"backbones.{kind}: {p} does not exist (local weights only: {what})")
    return p


def load_dino(path: str | Path, *, image_size: int | None = None, device: torch.device | str = "cpu",
              dtype: str = "fp32") -> DinoBackbone:
    """A DINOv2 transformers folder.  ``image_size`` None: the folder's image-processor crop size, else 224."""
    p = resolve_weights("dino", path)
    from transformers import AutoModel
    try:
        model = load_pretrained(AutoModel, p, what="DINOv2 backbone", local_files_only=True)
    except FileFormatError:
        raise
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{p}: cannot load a DINOv2 model offline (a transformers folder with config.json "
                              f"and weights): {exc}") from None
    mean, std = _norm_stats(p, (IMAGENET_MEAN, IMAGENET_STD))
    size = image_size or _input_size(p, 224)
    return DinoBackbone(model, image_size=size, mean=mean, std=std, device=torch.device(device),
                        dtype=DTYPES[dtype], source=str(p))


def load_clip(path: str | Path, *, image_size: int | None = None, device: torch.device | str = "cpu",
              dtype: str = "fp32") -> ClipBackbone:
    """A transformers ``CLIPModel`` folder (config.json, weights, tokenizer files), or an open_clip folder
    (``open_clip_config.json`` + weights; needs ``open_clip_torch``).  ``image_size`` None: the model's own."""
    p = resolve_weights("clip", path)
    if p.is_dir() and not (p / "config.json").is_file() and (p / "open_clip_config.json").is_file():
        return _load_open_clip(p, image_size=image_size, device=torch.device(device), dtype=dtype)
    from transformers import AutoTokenizer, CLIPModel
    try:
        model = load_pretrained(CLIPModel, p, what="CLIP backbone", local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except FileFormatError:
        raise
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{p}: cannot load a CLIP model offline (a transformers CLIPModel folder with "
                              f"config.json, weights and tokenizer files): {exc}") from None
    size = image_size or int(model.config.vision_config.image_size)
    max_len = int(model.config.text_config.max_position_embeddings)
    mean, std = _norm_stats(p, (CLIP_MEAN, CLIP_STD))
    return ClipBackbone(model, tokenizer, max_len, image_size=size, mean=mean, std=std, device=torch.device(device),
                        dtype=DTYPES[dtype], source=str(p), extra=(max_len,))


def _load_open_clip(p: Path, *, image_size: int | None, device: torch.device, dtype: str) -> ClipBackbone:
    try:
        import open_clip
    except ImportError:
        raise ConfigError(f"backbones.clip = {p}: an open_clip folder needs the 'open_clip_torch' package; install it "
                          "or use the transformers CLIPModel folder of the same weights") from None
    cfg = json.loads((p / "open_clip_config.json").read_text(encoding="utf-8"))
    name = cfg.get("model_name") or cfg.get("model_cfg", {}).get("name")
    weights = next((f for f in sorted(p.iterdir()) if f.suffix in WEIGHT_EXTENSIONS), None)
    if not name or weights is None:
        raise FileFormatError(f"{p}: an open_clip folder needs a weights file and the architecture name in "
                              "open_clip_config.json (add \"model_name\": \"ViT-L-14\"), or use the transformers "
                              "CLIPModel folder of the same weights")
    model = open_clip.create_model(name, pretrained=str(weights), device="cpu")
    tokenizer = open_clip.get_tokenizer(name)
    pp = cfg.get("preprocess_cfg", {})
    vis = getattr(model.visual, "image_size", 224)
    size = image_size or int(vis[0] if isinstance(vis, (tuple, list)) else vis)
    return OpenClipBackbone(model, tokenizer, 77, image_size=size, mean=pp.get("mean", CLIP_MEAN),
                            std=pp.get("std", CLIP_STD), device=device, dtype=DTYPES[dtype], source=str(p),
                            extra=("open_clip", name))


def load_vgg(path: str | Path, *, taps: str = "relu", image_size: int | None = None,
             device: torch.device | str = "cpu", dtype: str = "fp32") -> VggBackbone:
    """A VGG-19 from a torchvision-format state dict (``vgg19-dcbb9e9d.pth``, a ``.safetensors``, or a folder with
    ``model.safetensors`` + ``config.json``); channel widths are read from the weights.  ``image_size`` None:
    ``config.json``'s ``image_size``, else 224."""
    p = resolve_weights("vgg", path)
    try:
        net = world_load_vgg(p)
    except (KeyError, RuntimeError) as exc:
        raise FileFormatError(f"{p}: not a torchvision-format VGG-19 state dict ({exc})") from None
    cfg_file = p / "config.json" if p.is_dir() else None
    meta = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file is not None and cfg_file.is_file() else {}
    size = image_size or int(meta.get("image_size", 224))
    return VggBackbone(VGGTaps(net, taps), image_size=size, mean=net.mean, std=net.std, device=torch.device(device),
                       dtype=DTYPES[dtype], source=str(p), extra=(taps,))
