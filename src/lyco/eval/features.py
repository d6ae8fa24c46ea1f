"""Batched, cached feature extraction.

Features are cached per image on disk, keyed by (image file sha256, backbone id, preprocessing mode, dtype)
(docs/EVALUATION.md §4): ``<cache>/features/<backbone id>-<dtype>/<mode>/<sha[:2]>/<sha>.npy``.  The backbone id
fingerprints the weights and settings, so changed weights never reuse stale features.
"""
from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io.atomic import atomic_open
from ..io.images import load_rgb
from .backbones import Backbone

log = logging.getLogger("lyco")


def file_sha256(path: Path, memo: dict[tuple, str] | None = None) -> str:
    """sha256 of a file's bytes (memoised on (path, size, mtime) when ``memo`` is given)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if memo is not None and key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo is not None:
        memo[key] = digest
    return digest


class FeatureCache:
    """Per-image feature files.  ``enabled=False`` keeps nothing on disk (everything is recomputed)."""

    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled

    def path(self, backbone_key: str, mode: str, sha: str) -> Path:
        return self.root / backbone_key / mode / sha[:2] / f"{sha}.npy"

    def get(self, backbone_key: str, mode: str, sha: str) -> np.ndarray | None:
        if not self.enabled:
            return None
        p = self.path(backbone_key, mode, sha)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            log.warning("feature cache: %s is unreadable; recomputing", p)
            return None

    def put(self, backbone_key: str, mode: str, sha: str, value: np.ndarray) -> None:
        if self.enabled:
            # atomic (safe with concurrent ranks), not fsynced: a lost entry is recomputed
            with atomic_open(self.path(backbone_key, mode, sha), "wb", durable=False) as f:
                np.save(f, value, allow_pickle=False)


def extract(backbone: Backbone, items: Iterable[tuple[Path, str]], cache: FeatureCache, *, batch_size: int = 16,
            memo: dict[tuple, str] | None = None, progress: bool = True, desc: str = "",
            keep: bool = True) -> dict[str, np.ndarray | None]:
    """Features of (image path, preprocessing mode) items → {``sha:mode``: float32 vector} (``keep=False``: the
    vectors are only written to the cache and the values are None, to bound memory).

    Items are taken in windows of ``batch_size``; in each window the cached features are read and the rest are
    encoded under no_grad, one batch per input size, and cached.  Batches therefore depend only on the item list,
    not on which process runs a window (so sharded runs give the same numbers).
    """
    out: dict[str, np.ndarray | None] = {}
    items = [(Path(p), m) for p, m in items]
    bkey = backbone.cache_key
    keep = keep or not cache.enabled            # nothing on disk: the caller needs the vectors
    bar = tqdm(total=len(items), desc=desc or f"features {backbone.kind}", unit="img", disable=not progress,
               leave=False)
    for start in range(0, len(items), batch_size):
        todo: dict[str, tuple[Path, str, str]] = {}
        for path, mode in items[start:start + batch_size]:
            sha = file_sha256(path, memo)
            key = f"{sha}:{mode}"
            if key in out or key in todo:
                continue
            if keep:
                hit = cache.get(bkey, mode, sha)
                cached = hit is not None
            else:                                   # only make sure the file exists
                hit, cached = None, cache.path(bkey, mode, sha).is_file()
            if cached:
                out[key] = hit
            else:
                todo[key] = (path, mode, sha)
        groups: dict[tuple, list[tuple[str, torch.Tensor]]] = defaultdict(list)
        for key, (path, mode, _) in todo.items():
            img, _ = load_rgb(Path(path))       # the trainer's reader: EXIF orientation, alpha, 16-bit, palettes
            t = backbone.preprocess(img, mode)
            groups[tuple(t.shape)].append((key, t))
        for batch in groups.values():
            feats = backbone.encode_image(torch.stack([t for _, t in batch])).cpu().numpy().astype(np.float32)
            for (key, _), f in zip(batch, feats):
                _, mode, sha = todo[key]
                cache.put(bkey, mode, sha, f)
                out[key] = f if keep else None
        bar.update(min(batch_size, len(items) - start))
    bar.close()
    return out


def feature_key(path: Path, mode: str, memo: dict[tuple, str] | None = None) -> str:
    return f"{file_sha256(Path(path), memo)}:{mode}"
