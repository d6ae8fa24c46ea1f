"""Loading Stable Diffusion pipelines offline: diffusers folders, single-file checkpoints, ``builtin:tiny``."""
from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .. import builtin
from ..errors import FileFormatError
from ..io.pretrained import load_pretrained
from .single_file import load_single_file
from .tokenizers import resolve_tokenizer

log = logging.getLogger("lyco")

SINGLE_FILE_EXT = {".safetensors", ".ckpt", ".pt", ".pth"}


def resolve_model_path(model: str | os.PathLike) -> Path:
    """``builtin:tiny`` -> the shipped model folder (:mod:`lyco.builtin`); anything else must be a local path."""
    s = os.fspath(model)
    if builtin.is_builtin(s):
        return builtin.resolve(s, "model")
    p = Path(s).expanduser()
    if not p.exists():
        raise FileFormatError(f"{p}: no such file or folder (lyco loads models offline: a diffusers folder, a "
                              ".safetensors/.ckpt single file, or builtin:tiny)")
    return p


def load_pipeline(model: str | os.PathLike, *, family: str | None = None, prediction_type: str | None = None,
                  tokenizer: Any = None, tokenizer_2: Any = None, torch_dtype: Any = None) -> Any:
    """A diffusers pipeline from a diffusers folder, a single-file checkpoint or ``builtin:tiny`` (offline)."""
    p = resolve_model_path(model)
    if p.is_dir():
        return _load_folder(p, tokenizer=tokenizer, tokenizer_2=tokenizer_2, torch_dtype=torch_dtype,
                            prediction_type=prediction_type)
    if p.suffix.lower() not in SINGLE_FILE_EXT:
        raise FileFormatError(f"{p}: unknown model file type {p.suffix!r}; expected .safetensors or .ckpt")
    return load_single_file(p, family=family, prediction_type=prediction_type, tokenizer=tokenizer,
                            tokenizer_2=tokenizer_2, torch_dtype=torch_dtype)


def _load_folder(p: Path, *, tokenizer: Any, tokenizer_2: Any, torch_dtype: Any, prediction_type: str | None) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    index = p / "model_index.json"
    if not index.is_file():
        raise FileFormatError(f"{p}: not a diffusers pipeline folder (no model_index.json)")
    cls_name = json.loads(index.read_text()).get("_class_name", "")
    xl = "XL" in cls_name
    cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    kw: dict[str, Any] = {"local_files_only": True}
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    if not xl:
        kw.update(safety_checker=None, requires_safety_checker=False, feature_extractor=None)
    for name, given in (("tokenizer", tokenizer), ("tokenizer_2", tokenizer_2)):
        if name == "tokenizer_2" and not xl:
            continue
        if given is False:
            kw[name] = None
        elif given is not None:
            kw[name] = _tokenizer_from(given)
        elif not (p / name / "vocab.json").is_file() and not (p / name / "tokenizer.json").is_file():
            kw[name] = resolve_tokenizer("sdxl" if xl else "sd1", which=2 if name == "tokenizer_2" else 1)
    try:
        kw.update(_checked_models(p, json.loads(index.read_text()), kw, torch_dtype))
        with _loading_bar(log.isEnabledFor(logging.DEBUG)):
            pipe = cls.from_pretrained(str(p), **kw)
    except FileFormatError:
        raise
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{p}: cannot load the diffusers pipeline offline: {exc}") from None
    if prediction_type is not None:
        pipe.scheduler.register_to_config(prediction_type=prediction_type)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def _loading_bar(show: bool) -> Iterator[None]:
    """diffusers' "Loading pipeline components" bar only when asked for (``lyco --verbose``)."""
    from diffusers.utils import logging as dlog
    was = dlog.is_progress_bar_enabled()
    if was and not show:
        dlog.disable_progress_bar()
    try:
        yield
    finally:
        if was and not show:
            dlog.enable_progress_bar()


def _checked_models(p: Path, index: dict[str, Any], given: dict[str, Any], torch_dtype: Any) -> dict[str, Any]:
    """The folder's model components (UNet, VAE, text encoders), each loaded with no weight left random."""
    out = {}
    for name, entry in index.items():
        if name.startswith("_") or name in given or not isinstance(entry, list) or None in entry:
            continue
        library, class_name = entry
        if library not in ("diffusers", "transformers"):
            continue
        cls = getattr(importlib.import_module(library), class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            continue
        dtype = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        out[name] = load_pretrained(cls, p, subfolder=name, what=name, local_files_only=True, **dtype)
    return out


def _tokenizer_from(given: Any) -> Any:
    if isinstance(given, (str, os.PathLike)):
        from transformers import CLIPTokenizer
        return CLIPTokenizer.from_pretrained(str(given), local_files_only=True)
    return given
