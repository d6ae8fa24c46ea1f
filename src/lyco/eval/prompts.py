"""Leaves and their prompt sets (docs/EVALUATION.md §2): training captions, trigger only, content alteration,
style alteration and concept-agnostic prompts, from files, built-in template groups, inline lists or the micro-world.

A prompt set of ``n`` images repeats its ``p`` prompts with the reference code's rule (:func:`expand`): the first
``n mod p`` prompts get ⌈n/p⌉ images, the rest ⌊n/p⌋; with ``p ≥ n`` the first ``n`` prompts get one each.  Image
``k`` of every set has seed ``seed_start + k``, for the base model and every checkpoint alike.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean
from ..io.atomic import atomic_dir
from ..world.dataset import write_dataset
from .config import Concept, EvalConfig
from .metrics import AGNOSTIC, AGNOSTIC_CLASS, ALTER, PROMPT_TYPES, STYLE, TRAIN, TRIGGER
from .textproc import TextProcessor

log = logging.getLogger("lyco")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_EXTENSIONS = (".txt", ".caption")
NONE = "none"


def template_groups() -> list[str]:
    """Names of the built-in ``<alter>`` template groups (``lyco/data/eval/alter/*.txt``)."""
    folder = resources.files("lyco").joinpath("data/eval/alter")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


def _data_lines(rel: str) -> list[str]:
    text = resources.files("lyco").joinpath(rel).read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if ln.strip()]


def fill(template: str, descriptor: str) -> str:
    """``{}`` → descriptor (plain replacement: other braces stay)."""
    return template.replace("{}", descriptor)


def expand(n_prompts: int, n_images: int) -> list[int]:
    """The prompt index of each image k = 0…n_images−1 (the reference code's repeat rule)."""
    if n_prompts <= 0:
        return []
    if n_prompts >= n_images:
        return list(range(n_images))
    q, r = divmod(n_images, n_prompts)
    out: list[int] = []
    for i in range(n_prompts):
        out += [i] * (q + (1 if i < r else 0))
    return out


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one leaf and prompt type, and which prompt each image k uses."""

    prompt_type: str
    prompts: tuple[str, ...]
    n_images: int

    @property
    def index(self) -> list[int]:
        return expand(len(self.prompts), self.n_images)

    def image_prompts(self) -> list[str]:
        """Prompt of image k, for k = 0…n−1."""
        return [self.prompts[i] for i in self.index]


@dataclass
class Leaf:
    """One evaluation unit (category, class, subclass)."""

    category: str
    class_: str
    subclass: str
    descriptor: str
    trigger: str
    class_words: str
    style_concept: bool
    images: list[Path] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    prompt_sets: dict[str, PromptSet] = field(default_factory=dict)
    text_rows: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        return "/".join(p for p in (self.category, self.class_, self.subclass) if p)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.category, self.class_, self.subclass)

    def matches(self, selector: str) -> bool:
        names = {self.class_, self.id, f"{self.class_}/{self.subclass}" if self.subclass else self.class_}
        return selector in names


# ------------------------------------------------------------------------------------------------ sources
def read_dataset(folder: Path) -> tuple[list[Path], list[str]]:
    """Images (recursively, sorted by relative path) and their same-stem captions ('' when missing)."""
    if not folder.is_dir():
        raise ConfigError(f"dataset {folder}: no such folder (give the folder of the concept's training images)")
    images = sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                    key=lambda p: p.relative_to(folder).as_posix())
    if not images:
        raise ConfigError(f"dataset {folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    captions, missing = [], 0
    for img in images:
        cap = next((img.with_suffix(ext) for ext in CAPTION_EXTENSIONS if img.with_suffix(ext).is_file()), None)
        if cap is None:
            missing += 1
            captions.append("")
        else:
            captions.append(cap.read_text(encoding="utf-8").strip().splitlines()[0] if cap.stat().st_size else "")
    if missing:
        log.warning("dataset %s: %d of %d images have no caption file", folder, missing, len(images))
    return images, captions


def _read_prompt_file(path: Path) -> list[str]:
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = data.get("prompts", data)
        if not isinstance(data, list) or not all(isinstance(x, (str, dict)) for x in data):
            raise ConfigError(f"{path}: expected a JSON list of prompts (strings, or objects with 'prompt')")
        return [x if isinstance(x, str) else str(x["prompt"]) for x in data]
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def resolve_source(source: str | list[str], prompt_type: str, cfg: EvalConfig, where: str) -> list[str]:
    """Lines (templates or prompts) of a prompt source."""
    if isinstance(source, list):
        return [str(s) for s in source]
    path = cfg.path(source)
    if path.is_file():
        return _read_prompt_file(path)
    if prompt_type == STYLE and source == "paper":
        return _data_lines("data/eval/style_alter.txt")
    groups = template_groups()
    if prompt_type != STYLE and source in groups:
        return _data_lines(f"data/eval/alter/{source}.txt")
    choices = ["paper"] if prompt_type == STYLE else groups
    raise ConfigError(f"{where}: {source!r} is neither a prompt file (looked at {path}) nor a built-in template "
                      f"group{did_you_mean(source, choices)}; groups: {', '.join(choices)}")


def _replace_concept(prompt: str, descriptor: str, trigger: str, by: str) -> str:
    if descriptor and descriptor in prompt:
        return prompt.replace(descriptor, by)
    return re.sub(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)", by, prompt) if trigger else prompt


def derive_agnostic(alter: Sequence[str], descriptor: str, trigger: str, class_words: str) -> dict[str, list[str]]:
    """Concept-agnostic prompt sets from the ``<alter>`` prompts: the descriptor dropped (``agnostic``) or replaced
    by the class words (``agnostic_class``, only when the concept has class words)."""
    clean = TextProcessor(())
    out = {AGNOSTIC: [clean(_replace_concept(p, descriptor, trigger, "")) for p in alter]}
    if class_words:
        out[AGNOSTIC_CLASS] = [clean(_replace_concept(p, descriptor, trigger, class_words)) for p in alter]
    return {k: [p for p in v if p] for k, v in out.items()}


#: prompt files of a dataset folder (``<dataset>/prompts/<name>.txt``, as ``lyco world make-dataset`` writes them)
DATASET_PROMPT_FILES = {TRAIN: ("train",), TRIGGER: ("trigger",), ALTER: ("alter", "content"), STYLE: ("style",),
                        AGNOSTIC: ("agnostic",), AGNOSTIC_CLASS: ("agnostic_class",)}


def ensure_world_dataset(name: str, folder: Path) -> Path:
    """The micro-world dataset of concept ``name`` in ``folder``, written (deterministically) when missing."""
    if (folder / "concept.json").is_file():
        return folder
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()                   # an empty folder is simply filled
    try:
        with atomic_dir(folder) as tmp:
            write_dataset(name, tmp)
    except FileExistsError:
        if (folder / "concept.json").is_file():
            return folder                # another process finished first: theirs is byte-identical
        raise ConfigError(f"{folder} exists but is not a micro-world dataset (no concept.json); remove it or give "
                          f"concept {name!r} another dataset folder") from None
    log.info("wrote the micro-world dataset %r to %s", name, folder)
    return folder


def _dataset_meta(folder: Path | None) -> dict[str, Any]:
    """``concept.json`` of a dataset written by the micro-world (trigger, class word, category, name)."""
    if folder is None or not (folder / "concept.json").is_file():
        return {}
    meta = json.loads((folder / "concept.json").read_text(encoding="utf-8"))
    return meta if isinstance(meta, dict) else {}


def _dataset_prompts(folder: Path | None, ptype: str) -> list[str] | None:
    if folder is None:
        return None
    for name in DATASET_PROMPT_FILES[ptype]:
        f = folder / "prompts" / f"{name}.txt"
        if f.is_file():
            return _read_prompt_file(f)
    return None


def build_leaf(c: Concept, cfg: EvalConfig) -> Leaf:
    """Resolve one concept entry: descriptor, dataset, prompt sets, text-processing rows.

    Defaults come from, in order: the entry's own keys; the dataset's ``concept.json`` and ``prompts/*.txt``
    (written by ``lyco world make-dataset``; with ``world = NAME`` and no dataset, it is written into the cache);
    the paper's templates (``<style>``) and the dataset captions (``<train>``)."""
    folder = cfg.path(c.dataset) if c.dataset else None
    if c.world:
        folder = ensure_world_dataset(c.world, folder or cfg.cache_dir / "datasets" / c.world)
    meta = _dataset_meta(folder)
    if meta and not c.descriptor:
        descriptor = f"{meta.get('trigger', '')} {meta.get('class_word', '')}".strip()
    else:
        descriptor = c.descriptor or ""
    if not descriptor:
        raise ConfigError(f"concept {c.class_ or c.world or '?'}: no descriptor (give 'descriptor', e.g. "
                          "\"whoo anime girl\")")
    trigger = c.trigger or str(meta.get("trigger") or descriptor.split()[0])
    if c.class_words is not None:
        class_words = c.class_words
    elif meta.get("class_word") and not c.descriptor:
        class_words = str(meta["class_word"])
    else:
        rest = descriptor[len(trigger):] if descriptor.startswith(trigger) else descriptor
        class_words = " ".join(rest.replace(",", " , ").split()).replace(" ,", ",").strip(" ,")
    category = c.category or str(meta.get("category", ""))
    class_ = c.class_ or str(meta.get("name", "")) or trigger
    style_concept = c.style_concept if c.style_concept is not None else category in cfg.metrics.style_categories
    where = f"concept {class_}{'/' + c.subclass if c.subclass else ''}"
    if not category:
        raise ConfigError(f"{where}: no category (give 'category')")

    images: list[Path] = []
    captions: list[str] = []
    if folder is not None:
        images, captions = read_dataset(folder)

    lines: dict[str, list[str]] = {}
    for ptype in PROMPT_TYPES:
        src = getattr(c.prompts, ptype)
        if src == NONE:
            continue
        if src is not None:
            lines[ptype] = [fill(t, descriptor) for t in resolve_source(src, ptype, cfg, f"{where}: prompts.{ptype}")]
            continue
        from_files = _dataset_prompts(folder, ptype)
        if from_files:
            lines[ptype] = [fill(t, descriptor) for t in from_files]
        elif ptype == TRAIN and any(captions):
            lines[ptype] = [cap for cap in captions if cap]
        elif ptype == TRIGGER:
            lines[ptype] = [descriptor]
        elif ptype == STYLE and not style_concept:
            lines[ptype] = [fill(t, descriptor) for t in _data_lines("data/eval/style_alter.txt")]
    if c.leak and lines.get(ALTER):
        derived = derive_agnostic(lines[ALTER], descriptor, trigger, class_words)
        for ptype, prompts in derived.items():
            if ptype not in lines and getattr(c.prompts, ptype) is None and prompts:
                lines[ptype] = prompts
    if TRAIN not in lines and c.prompts.train != NONE:
        log.info("%s: no dataset captions and no prompts.train; the <train> set is skipped", where)

    sets = {}
    for ptype in PROMPT_TYPES:
        if lines.get(ptype):
            n = cfg.generation.images_per_type.get(ptype, cfg.generation.images)
            sets[ptype] = PromptSet(ptype, tuple(lines[ptype]), n)
    if c.text_replace is not None:
        rows = tuple(tuple(r) for r in c.text_replace)
    else:
        rows = ((trigger, ""),) if trigger else ()
    return Leaf(category=category, class_=class_, subclass=c.subclass, descriptor=descriptor, trigger=trigger,
                class_words=class_words, style_concept=style_concept, images=images, captions=captions,
                prompt_sets=sets, text_rows=rows)  # type: ignore[arg-type]


def build_leaves(cfg: EvalConfig) -> list[Leaf]:
    leaves = [build_leaf(c, cfg) for c in cfg.concepts]
    ids = [leaf.id for leaf in leaves]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"concepts: repeated leaves {', '.join(dup)}; give each (category, class, subclass) once")
    for ck in cfg.checkpoints:
        for sel in ck.concepts or ():
            if not any(leaf.matches(sel) for leaf in leaves):
                raise ConfigError(f"checkpoint {ck.name!r}: concepts entry {sel!r} matches no concept"
                                  f"{did_you_mean(sel, [leaf.class_ for leaf in leaves] + ids)}")
    return leaves
