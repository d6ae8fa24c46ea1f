"""Where the generated images are, for the report's contact sheets (config × epoch, same prompt and seed).

``lyco eval`` writes ``images.csv`` next to ``results.csv``: the first images of every prompt set, with the columns
``checkpoint``, ``category``, ``class``, ``subclass``, ``prompt_type``, ``k`` (the image's index in its prompt set,
seed = first seed + k), ``prompt`` and ``path`` (absolute, or relative to the CSV's folder).  The analysis reads it
when it is given (``--images``) or lies next to the result table; without it the report has no contact sheets.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .factors import Factors
from .table import Checkpoint, natural_key

REQUIRED = ("checkpoint", "category", "class", "subclass", "prompt_type", "k", "path")
PREFERRED_TYPES = ("alter", "trigger", "train", "style")


@dataclass(frozen=True)
class Image:
    checkpoint: str
    leaf: tuple[str, str, str]
    prompt_type: str
    k: int
    prompt: str
    path: Path


def read_images(path: Path) -> list[Image]:
    if not path.is_file():
        raise ConfigError(f"images table {path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in REQUIRED:
            if col not in header:
                raise ConfigError(f"{path}: the images table has no column {col!r}; required: {', '.join(REQUIRED)}")
        out = []
        for i, d in enumerate(reader):
            try:
                k = int(d["k"])
            except ValueError:
                raise ConfigError(f"{path}, line {i + 2}: column 'k' is {d['k']!r}, not an integer") from None
            p = Path(d["path"])
            out.append(Image(d["checkpoint"], (d["category"], d["class"], d["subclass"]), d["prompt_type"], k,
                             d.get("prompt", ""), p if p.is_absolute() else path.parent / p))
    return out


@dataclass
class Sheet:
    """One contact sheet: rows = configs, columns = epochs, all at one leaf, prompt type, image index and seed."""

    category: str
    leaf: tuple[str, str, str]
    prompt_type: str
    k: int
    prompt: str
    seed: str
    epochs: list[str]
    cells: dict[str, dict[str, Path | None]] = field(default_factory=dict)


def contact_sheets(images: Sequence[Image], checkpoints: Sequence[Checkpoint], factors: Factors | None,
                   prompt_type: str | None = None, k: int = 0) -> list[Sheet]:
    """One sheet per category: its first leaf with images, the given (or first available of alter, trigger,
    train, style) prompt type, image ``k``, and each config's first seed."""
    by_ck = {c.name: c for c in checkpoints}
    index = {(im.checkpoint, im.leaf, im.prompt_type, im.k): im for im in images if im.checkpoint in by_ck}
    seeds = sorted({c.seed for c in checkpoints}, key=natural_key)
    seed = seeds[0] if seeds else ""
    epochs = sorted({c.epoch for c in checkpoints}, key=natural_key)
    order = list(factors.values) if factors is not None else []
    configs = sorted({c.config for c in checkpoints}, key=lambda c: (order.index(c) if c in order else len(order),
                                                                     natural_key(c)))
    sheets = []
    for cat in sorted({im.leaf[0] for im in images if im.checkpoint in by_ck}):
        leaves = sorted({im.leaf for im in index.values() if im.leaf[0] == cat})
        types = [prompt_type] if prompt_type else list(PREFERRED_TYPES)
        have = {(key[1], key[2]) for key in index if key[3] == k}
        pick = next(((leaf, t) for leaf in leaves for t in types if (leaf, t) in have), None)
        if pick is None:
            continue
        leaf, ptype = pick
        sheet = Sheet(cat, leaf, ptype, k, "", seed, epochs)
        for config in configs:
            row: dict[str, Path | None] = {}
            for e in epochs:
                ck = next((c.name for c in checkpoints if c.config == config and c.epoch == e and c.seed == seed), None)
                im = index.get((ck, leaf, ptype, k)) if ck else None
                row[e] = im.path if im is not None and im.path.is_file() else None
                if im is not None and not sheet.prompt:
                    sheet.prompt = im.prompt
            if any(p is not None for p in row.values()):
                sheet.cells[config] = row
        if sheet.cells:
            sheets.append(sheet)
    return sheets
