"""Offline CLIP tokenizers for Stable Diffusion pipelines.

lyco never downloads anything.  :func:`resolve_tokenizer` looks, in order, at

1. an explicit tokenizer object or folder,
2. the environment variable ``LYCO_TOKENIZER_PATH`` (text encoder 1) / ``LYCO_TOKENIZER_2_PATH`` (SDXL's 2),
3. local folders the caller knows about (e.g. the ``tokenizer/`` of a diffusers config folder),
4. the local Hugging Face cache (``local_files_only=True``) for the usual repositories,

and raises :class:`~lyco.errors.MissingTokenizerError` saying which tokenizer is missing and how to provide it.

SD1 and SDXL's first encoder pad with ``<|endoftext|>``; SD2 and SDXL's second (OpenCLIP) encoder pad with ``!``.
Tokenizers found in a plain CLIP repository are given the pad token of the model they serve.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ..errors import ConfigError, MissingTokenizerError

log = logging.getLogger("lyco")

FAMILIES = ("sd1", "sd2", "sdxl")
ENV_VARS = {1: "LYCO_TOKENIZER_PATH", 2: "LYCO_TOKENIZER_2_PATH"}
PARAMS = {1: "tokenizer", 2: "tokenizer_2"}
_EOT = "<|endoftext|>"


@dataclass(frozen=True)
class CacheSource:
    """A repository (and subfolder) of the Hugging Face cache that may hold the tokenizer."""

    repo_id: str
    subfolder: str | None = None
    #: pad token the served model was trained with, forced when it differs from the repo's (plain CLIP repos)
    pad_token: str | None = None

    def describe(self) -> str:
        return f"{self.repo_id}" + (f" (subfolder {self.subfolder})" if self.subfolder else "")


_SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
_SD21 = "stabilityai/stable-diffusion-2-1"
_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
_CLIP_L = "openai/clip-vit-large-patch14"
_CLIP_G = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"

#: cache search order per (family, which); the first entry is the one the error message suggests downloading
CACHE_SOURCES: dict[tuple[str, int], tuple[CacheSource, ...]] = {
    ("sd1", 1): (CacheSource(_SD15, "tokenizer"), CacheSource("runwayml/stable-diffusion-v1-5", "tokenizer"),
                 CacheSource(_CLIP_L, pad_token=_EOT)),
    ("sd2", 1): (CacheSource(_SD21, "tokenizer"), CacheSource(_SD21 + "-base", "tokenizer"),
                 CacheSource("stabilityai/stable-diffusion-2", "tokenizer"), CacheSource(_CLIP_L, pad_token="!")),
    ("sdxl", 1): (CacheSource(_SDXL, "tokenizer"), CacheSource(_CLIP_L, pad_token=_EOT)),
    ("sdxl", 2): (CacheSource(_SDXL, "tokenizer_2"), CacheSource(_CLIP_G, pad_token="!"),
                  CacheSource(_CLIP_L, pad_token="!")),
}

_DESCRIPTIONS = {
    ("sd1", 1): "the SD1 text encoder (CLIP ViT-L/14)",
    ("sd2", 1): "the SD2 text encoder (OpenCLIP ViT-H/14)",
    ("sdxl", 1): "SDXL text encoder 1 (CLIP ViT-L/14)",
    ("sdxl", 2): "SDXL text encoder 2 (OpenCLIP ViT-bigG/14)",
}


def _check(family: str, which: int) -> None:
    if (family, which) not in CACHE_SOURCES:
        if family not in FAMILIES:
            raise ConfigError(f"unknown Stable Diffusion family {family!r}; expected one of {', '.join(FAMILIES)}")
        raise ConfigError(f"{family} has no tokenizer {which} (only SDXL has a second tokenizer)")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _tokenizer_files_in(folder: Path) -> bool:
    bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    return bpe or (folder / "tokenizer.json").is_file()


def _tokenizer_folder(path: Path, which: int) -> Path | None:
    """``path`` itself when it holds tokenizer files, else its ``tokenizer``/``tokenizer_2`` subfolder."""
    if _tokenizer_files_in(path):
        return path
    sub = path / PARAMS[which]
    return sub if _tokenizer_files_in(sub) else None


def _load_folder(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    if len(tok) <= 2:  # transformers 5 builds an empty tokenizer from a folder without usable files
        raise MissingTokenizerError(f"{folder}: the tokenizer loaded from here is empty (check vocab.json)")
    return tok


def _load_required(path: Path, family: str, which: int, origin: str) -> Any:
    folder = _tokenizer_folder(path, which)
    if folder is None:
        raise MissingTokenizerError(
            f"{origin} points at {path}, which holds no tokenizer for {_DESCRIPTIONS[family, which]}: expected "
            f"vocab.json + merges.txt (or tokenizer.json) there or in its {PARAMS[which]}/ subfolder")
    try:
        return _load_folder(folder)
    except Exception as exc:  # noqa: BLE001 - re-raised as a lyco error naming the folder
        raise MissingTokenizerError(f"{origin}: cannot load a CLIP tokenizer from {folder} ({exc})") from None


def _cached_folder(src: CacheSource, cache_dir: Path) -> Path | None:
    """The snapshot folder holding ``src``'s tokenizer files in the local cache, or None.

    Looked up file by file: transformers 5 builds an *empty* tokenizer instead of failing when files are absent.
    """
    from huggingface_hub import try_to_load_from_cache

    sub = f"{src.subfolder}/" if src.subfolder else ""
    found = [try_to_load_from_cache(src.repo_id, sub + name, cache_dir=str(cache_dir))
             for name in ("vocab.json", "merges.txt")]
    if not all(isinstance(f, str) for f in found):
        return None
    return Path(cast(str, found[0])).parent


def _from_cache(src: CacheSource, cache_dir: Path) -> Any:
    """The tokenizer of ``src`` from the local cache, or None when the cache does not hold it."""
    folder = _cached_folder(src, cache_dir)
    if folder is None:
        return None
    tok = _load_folder(folder)
    if src.pad_token and tok.pad_token != src.pad_token:
        log.info("tokenizer from %s: using pad token %r (as the model was trained) instead of %r",
                 src.describe(), src.pad_token, tok.pad_token)
        tok.pad_token = src.pad_token
    return tok


def missing_tokenizer_message(family: str, which: int, searched: Sequence[str]) -> str:
    """The error text for a tokenizer found nowhere: what is missing and the three ways to provide it."""
    param, env = PARAMS[which], ENV_VARS[which]
    suggest = CACHE_SOURCES[family, which][0]
    cache = hf_cache_dir()
    repo_dir = "models--" + suggest.repo_id.replace("/", "--")
    include = f"{suggest.subfolder}/*" if suggest.subfolder else "*"
    return (
        f"no tokenizer found for {_DESCRIPTIONS[family, which]} (`{param}`); lyco works offline and never "
        f"downloads.  Provide it in one of three ways:\n"
        f"  1. argument: load_single_file(..., {param}='/path/to/folder') (a folder with vocab.json + merges.txt, "
        f"or a diffusers model folder with a {param}/ subfolder), or a CLIPTokenizer object\n"
        f"  2. environment variable: {env}=/path/to/folder\n"
        f"  3. Hugging Face cache: on a machine with internet run\n"
        f"       huggingface-cli download {suggest.repo_id} --include '{include}'\n"
        f"     then copy its cache folder ({repo_dir}) into {cache} on this machine "
        f"(or point HF_HUB_CACHE at a copy)\n"
        f"Searched: {'; '.join(searched) or 'nothing'}.\n"
        f"To load without tokenizers (cached text embeddings, merging), pass {param}=False."
    )


def resolve_tokenizer(family: str, which: int = 1, explicit: Any = None, *,
                      local_dirs: Sequence[str | os.PathLike] = ()) -> Any:
    """The CLIP tokenizer for text encoder ``which`` (1 or 2) of a ``family`` ("sd1", "sd2", "sdxl") model.

    ``explicit``: a tokenizer object (returned as is) or a folder (loaded, errors are not skipped); ``False``
    returns None (no tokenizer wanted).  Otherwise the env var, ``local_dirs`` (diffusers model folders or
    tokenizer folders) and the local Hugging Face cache are tried in that order.
    """
    _check(family, which)
    if explicit is False:
        return None
    if explicit is not None:
        if isinstance(explicit, (str, os.PathLike)):
            return _load_required(Path(explicit).expanduser(), family, which, f"argument {PARAMS[which]}")
        return explicit
    env = ENV_VARS[which]
    if os.environ.get(env):
        return _load_required(Path(os.environ[env]).expanduser(), family, which, f"environment variable {env}")
    searched = [f"${env} (not set)"]
    for d in local_dirs:
        folder = _tokenizer_folder(Path(d), which)
        if folder is not None:
            log.debug("tokenizer %d for %s from %s", which, family, folder)
            return _load_folder(folder)
        searched.append(f"{d} (no {PARAMS[which]}/)")
    cache_dir = hf_cache_dir()
    for src in CACHE_SOURCES[family, which]:
        try:
            tok = _from_cache(src, cache_dir)
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry: note it and try the next source
            log.warning("tokenizer %d for %s: %s is in the cache but cannot be loaded: %s", which, family,
                        src.describe(), exc)
            searched.append(f"HF cache {cache_dir}: {src.describe()} (unreadable: {exc})")
            continue
        if tok is None:
            searched.append(f"HF cache {cache_dir}: {src.describe()} (not found)")
            continue
        log.info("tokenizer %d for %s: %s from the local Hugging Face cache", which, family, src.describe())
        return tok
    raise MissingTokenizerError(missing_tokenizer_message(family, which, searched))
