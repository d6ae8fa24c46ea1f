"""Dataset scanning and caption processing.

* Subsets are folders of images with same-stem caption files (``.txt`` by default).  kohya's ``N_name`` folder
  convention gives repeats (logged); an explicit ``repeats`` wins.
* Every image is opened once up front: unreadable, empty and too small files are skipped **and listed**;
  CMYK, 16-bit, palette and greyscale images are converted to RGB, RGBA is composited on the subset background,
  EXIF orientation is applied.
* Captions: missing-caption policy, ``{trigger}`` substitution (or trigger prefix), tag shuffle with kept tokens,
  tag dropout and caption dropout — deterministic given (seed, epoch, sample index).
"""
from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import UnidentifiedImageError

from ..errors import ConfigError
from ..io.images import load_rgb
from .config import DatasetConfig, SubsetConfig

log = logging.getLogger("lyco")
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
_KOHYA_DIR = re.compile(r"^(\d+)_(.+)$")


@dataclass
class ImageItem:
    path: Path
    caption: str
    size: tuple[int, int]  # (width, height)
    subset: int
    sha: str  # sha256 of the file bytes (cache key part)


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class SubsetScan:
    config: SubsetConfig
    name: str
    repeats: int
    items: list[ImageItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    captions_found: int = 0
    captions_missing: int = 0
    converted: dict[str, int] = field(default_factory=dict)


@dataclass
class DatasetScan:
    config: DatasetConfig
    subsets: list[SubsetScan]

    @property
    def items(self) -> list[ImageItem]:
        return [it for s in self.subsets for it in s.items]

    @property
    def skipped(self) -> list[Skipped]:
        return [sk for s in self.subsets for sk in s.skipped]

    def epoch_indices(self) -> list[int]:
        """Item indices of one epoch (each image repeated by its subset's repeats)."""
        out, base = [], 0
        for s in self.subsets:
            for i in range(len(s.items)):
                out.extend([base + i] * s.repeats)
            base += len(s.items)
        return out

    def summary(self) -> str:
        lines = []
        for s in self.subsets:
            conv = ", ".join(f"{k}: {v}" for k, v in s.converted.items())
            lines.append(f"  {s.name}: {len(s.items)} images × repeats {s.repeats}; {s.captions_found} captions "
                         f"({s.config.caption_extension}), {s.captions_missing} missing"
                         + (f"; converted {conv}" if conv else "")
                         + (f"; {len(s.skipped)} skipped" if s.skipped else ""))
        for sk in self.skipped:
            lines.append(f"  skipped {sk.path}: {sk.reason}")
        return "\n".join(lines)


def _scan_subset(cfg: SubsetConfig, idx: int, min_side: int, repeats_hint: int | None, name: str) -> SubsetScan:
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise ConfigError(f"dataset subset path {folder} does not exist or is not a folder")
    repeats = cfg.repeats or repeats_hint or 1
    scan = SubsetScan(cfg, name, repeats)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)
    for p in files:
        data = p.read_bytes()
        if not data:
            scan.skipped.append(Skipped(p, "empty file (0 bytes)"))
            continue
        try:
            im, note = load_rgb(p, cfg.background)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            scan.skipped.append(Skipped(p, f"unreadable image ({type(exc).__name__}: {exc})"))
            continue
        if min(im.size) < min_side:
            scan.skipped.append(Skipped(p, f"too small ({im.size[0]}x{im.size[1]} < {min_side} px)"))
            continue
        if note:
            scan.converted[note] = scan.converted.get(note, 0) + 1
        cap_path = p.with_suffix(cfg.caption_extension)
        if cap_path.is_file():
            caption = cap_path.read_text(encoding="utf-8").strip()
            scan.captions_found += 1
        else:
            scan.captions_missing += 1
            if cfg.missing_captions == "error":
                raise ConfigError(f"{p}: no caption file {cap_path.name}; add it or set missing_captions = "
                                  "'empty' | 'trigger' for this subset")
            caption = "" if cfg.missing_captions == "empty" else (cfg.trigger or "")
        scan.items.append(ImageItem(p, caption, im.size, idx, hashlib.sha256(data).hexdigest()))
    if scan.captions_found == 0 and files and cfg.missing_captions != "empty":
        log.warning("lyco: %s: found 0 captions with extension %s for %d images; set caption_extension or add "
                    "captions (using %s)", folder, cfg.caption_extension, len(files),
                    "the trigger" if cfg.trigger else "empty captions")
    elif scan.captions_missing and cfg.missing_captions == "warn":
        log.warning("lyco: %s: %d of %d images have no %s caption; using %s", folder, scan.captions_missing,
                    len(scan.items), cfg.caption_extension, "the trigger" if cfg.trigger else "empty captions")
    return scan


def _files_note(folder: Path) -> str:
    """What a folder without usable image files holds instead (for error messages)."""
    files = [p for p in folder.iterdir() if p.is_file()]
    if not files:
        return "empty folder"
    kinds = Counter(p.suffix.lower() or "(no extension)" for p in files)
    return ("no image files (" + ", ".join(sorted(IMAGE_EXT)) + "); found " +
            ", ".join(f"{n} {ext}" for ext, n in kinds.most_common(5)))


def _kohya_subsets(root: Path, notes: list[str]) -> list[tuple[SubsetConfig, int | None, str]]:
    """The ``N_name`` subfolders of a kohya folder as subsets; what was passed over goes into ``notes``."""
    if not root.is_dir():
        raise ConfigError(f"dataset folder {root} does not exist")
    out: list[tuple[SubsetConfig, int | None, str]] = []
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXT]
    if loose:
        n = len(loose)
        notes.append(f"{root}: {n} image{'s' * (n != 1)} directly in the folder not used: `folders` reads the "
                     "kohya N_name subfolders (e.g. 10_name); move them into such a subfolder, or list the folder "
                     "under `subsets` instead")
        log.warning("lyco: %s", notes[-1])
    children = sorted(c for c in root.iterdir() if c.is_dir())
    if not children and not loose:
        notes.append(f"{root}: no subfolders; {_files_note(root)}")
    for child in children:
        if not any(p.suffix.lower() in IMAGE_EXT for p in child.iterdir()):
            notes.append(f"{child}: not a subset: {_files_note(child)}")
            log.debug("lyco: %s has no images; not a subset", child)
            continue
        m = _KOHYA_DIR.match(child.name)
        if not m:
            log.warning("lyco: %s: folder name is not N_name; using repeats 1", child)
            out.append((SubsetConfig(path=str(child)), 1, child.name))
            continue
        n, concept = int(m.group(1)), m.group(2)
        log.info("lyco: %s: kohya folder name read as repeats %d, concept %r", child, n, concept)
        out.append((SubsetConfig(path=str(child), trigger=concept), n, child.name))
    return out


def scan_dataset(cfg: DatasetConfig) -> DatasetScan:
    notes: list[str] = []
    subsets: list[tuple[SubsetConfig, int | None, str]] = [(s, None, Path(s.path).name) for s in cfg.subsets]
    for folder in cfg.folders:
        subsets += _kohya_subsets(Path(folder), notes)
    scans = [_scan_subset(s, i, cfg.min_image_side, hint, name) for i, (s, hint, name) in enumerate(subsets)]
    if cfg.balance_classes:
        _balance(scans, cfg.exposures_per_epoch)
    ds = DatasetScan(cfg, scans)
    if not ds.items:
        for sc in scans:
            subset_dir = Path(sc.config.path)
            why = f"all {len(sc.skipped)} images skipped" if sc.skipped else _files_note(subset_dir)
            notes.append(f"{subset_dir}: {why}")
        detail = ds.summary() if ds.skipped else ""
        raise ConfigError("the dataset has no usable images; scanned:\n  - " + "\n  - ".join(notes)
                          + (f"\n{detail}" if detail else ""))
    return ds


def _balance(scans: list[SubsetScan], target: int | None) -> None:
    """The paper's class balancing: repeats chosen so each subset gets ≈ the same exposures per epoch."""
    sizes = [len(s.items) for s in scans if s.items]
    if not sizes:
        return
    target = target or max(len(s.items) * s.repeats for s in scans)
    for s in scans:
        if s.items:
            s.repeats = max(1, round(target / len(s.items)))
            log.info("lyco: balancing: %s gets repeats %d (%d exposures per epoch)", s.name, s.repeats,
                     s.repeats * len(s.items))


def process_caption(caption: str, sub: SubsetConfig, ds: DatasetConfig, seed: int, epoch: int, index: int) -> str:
    """Trigger substitution, tag shuffle/dropout and caption dropout; deterministic per (seed, epoch, index)."""
    rng = random.Random(f"{seed}/{epoch}/{index}")
    drop = sub.caption_dropout if sub.caption_dropout is not None else ds.caption_dropout
    if drop and rng.random() < drop:
        return ""
    if sub.trigger:
        caption = caption.replace("{trigger}", sub.trigger) if "{trigger}" in caption else (
            caption if caption.startswith(sub.trigger) else (f"{sub.trigger}, {caption}" if caption else sub.trigger))
    if not (sub.shuffle_tags or sub.tag_dropout):
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    keep, rest = tags[: sub.keep_tokens], tags[sub.keep_tokens:]
    if sub.tag_dropout:
        rest = [t for t in rest if rng.random() >= sub.tag_dropout]
    if sub.shuffle_tags:
        rng.shuffle(rest)
    return ", ".join(keep + rest)
