"""Concept datasets in the kohya folder layout, plus their evaluation prompt sets.  Byte-identical for a seed.

Layout written by :func:`write_dataset` (``OUT`` for concept ``olis``)::

    OUT/10_olis creature/0000.png, 0000.txt, ...   images and captions ("olis creature, large, left, ...")
    OUT/prompts/train.txt trigger.txt content.txt style.txt   one prompt a line
    OUT/prompts.json      every prompt with its set and the attributes an image made from it should show
    OUT/concept.json      the concept's metadata (trigger, class, category, counts, seed, image size)

``write_dataset("base", ...)`` writes base-world images with plain descriptions (e.g. regularisation images).
``write_all(OUT)`` writes every held-out concept at once for one multi-concept adapter: ``OUT/<name>/`` as above,
with the folder repeats chosen by the paper's class balancing (≈ the same exposures per concept and epoch), and
``OUT/concepts.json`` listing them.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError
from . import render as R
from .concepts import CONCEPTS, Concept, PromptSpec, get_concept, hash_name

BASE_NAME = "base"


def png_bytes(img: np.ndarray) -> bytes:
    """PNG encoding with no metadata (no timestamps, no text chunks): same pixels, same bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img), mode="RGB").save(buf, format="PNG", compress_level=9, optimize=False)
    return buf.getvalue()


def _dump_json(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=True) + "\n").encode()


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    root: str
    image_dir: str
    n_images: int
    captions: tuple[str, ...]


def concept_items(concept: Concept, seed: int = 0, size: int = 32,
                  n: int | None = None) -> list[tuple[np.ndarray, str, R.Scene]]:
    """(image, caption, scene) for each training image of ``concept``."""
    items = []
    stream = hash_name(concept.name)
    for i in range(concept.n_images if n is None else n):
        scene = concept.sample_scene(R.scene_rng(seed, i, stream))
        cap = concept.caption(scene, R.scene_rng(seed, i, stream + 1))
        items.append((R.render(scene, size), cap, scene))
    return items


def base_items(seed: int = 0, size: int = 32, n: int = 100) -> list[tuple[np.ndarray, str, R.Scene]]:
    items = []
    for i in range(n):
        scene = R.sample_scene(R.scene_rng(seed, i, 7))
        items.append((R.render(scene, size), R.caption(scene, R.scene_rng(seed, i, 8)), scene))
    return items


def write_dataset(name: str, out: str | os.PathLike[str], seed: int = 0, size: int = 32,
                  n: int | None = None, overwrite: bool = False) -> DatasetInfo:
    """Write concept ``name`` (or ``"base"``) as a kohya dataset with prompt sets under ``out``."""
    if size < 32 or size % 16:
        raise ConfigError(f"image size must be a multiple of 16 and >= 32, got {size}")
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise ConfigError(f"{root} exists and is not empty; choose another folder or pass overwrite=True (--force)")
    if name == BASE_NAME:
        count = 100 if n is None else n
        items = base_items(seed, size, count)
        folder, meta = f"1_{BASE_NAME}", {"name": BASE_NAME, "category": "base", "n_images": count}
        sets: dict[str, list[PromptSpec]] = {"train": [PromptSpec(c, "train") for _, c, _ in items]}
    else:
        concept = get_concept(name)
        items = concept_items(concept, seed, size, n)
        folder = concept.folder
        meta = {k: v for k, v in asdict(concept).items() if k not in ("content_prompts", "style_prompts")}
        meta["n_images"] = len(items)
        sets = concept.prompt_sets([(c, scene) for _, c, scene in items])
    meta.update({"seed": seed, "image_size": size, "folder": folder})
    img_dir = root / folder
    img_dir.mkdir(parents=True, exist_ok=True)
    for i, (img, cap, _) in enumerate(items):
        (img_dir / f"{i:04d}.png").write_bytes(png_bytes(img))
        (img_dir / f"{i:04d}.txt").write_bytes((cap + "\n").encode())
    pdir = root / "prompts"
    pdir.mkdir(exist_ok=True)
    for kind, specs in sets.items():
        (pdir / f"{kind}.txt").write_bytes("".join(s.prompt + "\n" for s in specs).encode())
    prompts = {kind: [{"prompt": s.prompt, **s.attributes()} for s in specs] for kind, specs in sets.items()}
    (root / "prompts.json").write_bytes(_dump_json(prompts))
    (root / "concept.json").write_bytes(_dump_json(meta))
    return DatasetInfo(name, str(root), str(img_dir), len(items), tuple(c for _, c, _ in items))


ALL_NAME = "all"


def balanced_repeats(n_images: int, exposures: int) -> int:
    """The paper's class balancing: each image repeated so a concept gets ≈ ``exposures`` samples per epoch."""
    return max(1, round(exposures / n_images))


def write_all(out: str | os.PathLike[str], seed: int = 0, size: int = 32, exposures: int | None = None,
              overwrite: bool = False) -> list[DatasetInfo]:
    """Every held-out concept under ``out/<name>/`` (each as :func:`write_dataset` writes it) with balanced folder
    repeats: ≈ ``exposures`` samples per concept per epoch (default: the largest concept's image count, so no
    image is seen less than once)."""
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise ConfigError(f"{root} exists and is not empty; choose another folder or pass overwrite=True (--force)")
    target = exposures or max(c.n_images for c in CONCEPTS.values())
    infos, listing = [], {}
    for name, concept in CONCEPTS.items():
        sub = root / name
        if sub.is_dir():                        # overwrite: no image folder of an earlier balancing may stay
            for old in sub.glob(f"*_{concept.descriptor}"):
                if old.is_dir() and old.name.split("_", 1)[0].isdigit():
                    shutil.rmtree(old)
        info = write_dataset(name, sub, seed=seed, size=size, overwrite=overwrite)
        reps = balanced_repeats(info.n_images, target)
        folder = f"{reps}_{concept.descriptor}"
        if folder != concept.folder:
            os.replace(sub / concept.folder, sub / folder)
            meta = json.loads((sub / "concept.json").read_text())
            meta.update(repeats=reps, folder=folder)
            (sub / "concept.json").write_bytes(_dump_json(meta))
        infos.append(DatasetInfo(name, str(sub), str(sub / folder), info.n_images, info.captions))
        listing[name] = {"folder": name, "category": concept.category, "n_images": info.n_images, "repeats": reps,
                         "exposures_per_epoch": reps * info.n_images}
    (root / "concepts.json").write_bytes(_dump_json({"seed": seed, "image_size": size, "balanced_to": target,
                                                     "concepts": listing}))
    return infos


def read_prompts(root: str | os.PathLike[str]) -> dict[str, list[PromptSpec]]:
    """The prompt sets written by :func:`write_dataset`, as PromptSpecs."""
    path = Path(root) / "prompts.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found: is {root} a dataset written by 'lyco world make-dataset'?")
    data = json.loads(path.read_text())
    out = {}
    for kind, rows in data.items():
        out[kind] = [PromptSpec(kind=kind, **row) for row in rows]
    return out


def dataset_names() -> list[str]:
    return list(CONCEPTS) + [BASE_NAME, ALL_NAME]
