"""``builtin:`` ids: the model and the evaluation backbones shipped inside the package (under ``lyco/data``).

This module is the one place that turns a ``builtin:`` id into a folder.  It is a leaf (it imports only
:mod:`lyco.errors`), so the library layers resolve ``builtin:tiny`` without importing the micro-world that made the
files::

    resolve("builtin:tiny")               # the lyco-tiny diffusers folder (a Stable Diffusion 1.x pipeline)
    resolve("builtin:vgg", kind="vgg")    # the tiny VGG-19 of the micro-world
    is_builtin("models/sd15")             # False: any other string is a path (or hub id) the caller handles

The files themselves come from the micro-world's scripts (``scripts/pretrain_tiny.py``,
``scripts/train_backbones.py``); ``lyco.world`` uses them through this module like everybody else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .errors import LycoError, did_you_mean

PREFIX = "builtin:"
#: the package's data folder (shipped configs, models, backbones, prompt files)
DATA_DIR = Path(__file__).resolve().parent / "data"


class BuiltinNotFoundError(LycoError, FileNotFoundError):
    """A ``builtin:`` id names nothing shipped, something of another kind, or files that are missing."""


class ModelNotFoundError(BuiltinNotFoundError):
    """A ``builtin:`` model id (``builtin:tiny``) cannot be resolved."""


class BackboneNotFoundError(BuiltinNotFoundError):
    """A ``builtin:`` backbone id (``builtin:clip`` / ``dino`` / ``vgg``), or a backbone's weights, cannot be found."""


@dataclass(frozen=True)
class Builtin:
    """One shipped folder: what it is, where it lives, which file proves it is complete and what rebuilds it."""

    name: str
    kind: str          #: "model" (a diffusers pipeline folder) or the backbone kind: "clip" | "dino" | "vgg"
    folder: Path
    marker: str        #: a file the folder must contain
    remedy: str        #: what to do when the files are missing

    @property
    def id(self) -> str:
        return PREFIX + self.name


_BACKBONE_REMEDY = "run scripts/train_backbones.py"
BUILTINS: MappingProxyType[str, Builtin] = MappingProxyType({
    "tiny": Builtin("tiny", "model", DATA_DIR / "tiny", "model_index.json",
                    "reinstall lyco or run scripts/pretrain_tiny.py"),
    "clip": Builtin("clip", "clip", DATA_DIR / "backbones" / "clip", "model.safetensors", _BACKBONE_REMEDY),
    "dino": Builtin("dino", "dino", DATA_DIR / "backbones" / "dino", "model.safetensors", _BACKBONE_REMEDY),
    "vgg": Builtin("vgg", "vgg", DATA_DIR / "backbones" / "vgg", "model.safetensors", _BACKBONE_REMEDY),
})


def is_builtin(name: object) -> bool:
    """Whether ``name`` is a ``builtin:`` id (a string or path-like starting with ``builtin:``)."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    return isinstance(name, str) and name.startswith(PREFIX)


def _error(kind: str) -> type[BuiltinNotFoundError]:
    return ModelNotFoundError if kind == "model" else BackboneNotFoundError


def _what(kind: str) -> str:
    return "model" if kind == "model" else "backbone"


def _describe(kind: str) -> str:
    return "a model" if kind == "model" else f"a {kind} backbone"


def folders(kind: str | None = None) -> dict[str, Path]:
    """``{id: folder}`` of every shipped item (of ``kind`` when given), e.g. ``{"builtin:tiny": ...}``."""
    return {b.id: b.folder for b in BUILTINS.values() if kind is None or b.kind == kind}


def resolve(name: str | os.PathLike[str], kind: str = "model") -> Path:
    """The shipped folder of the ``builtin:`` id ``name``, which must be of ``kind``.

    Raises :class:`ModelNotFoundError` / :class:`BackboneNotFoundError` (both :class:`BuiltinNotFoundError`) for an
    unknown id, an id of another kind, or a folder whose files are missing.
    """
    text = os.fspath(name)
    err, what = _error(kind), _what(kind)
    if not is_builtin(text):
        raise err(f"{text!r} is not a {PREFIX} id; built-in {what}s: {', '.join(folders(kind))}")
    short = text[len(PREFIX):]
    item = BUILTINS.get(short)
    if item is None:
        same_kind = [b.name for b in BUILTINS.values() if b.kind == kind]
        raise err(f"unknown built-in {what} {text!r}{did_you_mean(short, same_kind)}; "
                  f"built-ins: {', '.join(folders(kind))}")
    if item.kind != kind:
        raise err(f"{text!r} is {_describe(item.kind)}, not {_describe(kind)}")
    if not (item.folder / item.marker).is_file():
        raise err(f"the built-in {what} {text!r} is missing its files at {item.folder}; {item.remedy}")
    return item.folder
