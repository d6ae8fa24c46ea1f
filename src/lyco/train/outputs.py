"""A run's output folder: where a new run goes, what becomes of an old one, and whether a run is finished.

* A run folder is created only after the run has been validated (config, datasets, model, adapters): a run that
  fails early leaves nothing behind.
* ``overwrite = true`` never deletes: the previous folder is moved aside to ``<folder>.bak-<date>-<time>``.
  Without it, a non-empty folder is never reused; the run goes to ``<folder>-1`` (``-2``, ...) instead.
* ``--resume latest`` is idempotent: no complete state yet → start from step 0 in the folder; a complete state →
  continue from it; a finished run → nothing to do.
* A finished run has ``finished.json`` (written last): the final adapter and every adapter export in the folder
  with its step and epoch.  :func:`run_status` reads a folder's state for tools that drive many runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from ..io.atomic import write_atomic
from ..io.files import read_metadata
from .checkpoint import MARKER, find_state
from .config import TrainConfig

log = logging.getLogger("lyco")
FINISHED = "finished.json"
RESOLVED = "config.resolved.json"


@dataclass(frozen=True)
class Export:
    """One adapter file of a run: ``step`` and ``epoch`` are the optimizer steps and full epochs done."""

    path: Path
    step: int
    epoch: int
    final: bool = False


@dataclass(frozen=True)
class RunStatus:
    """``fresh``: no folder or an empty one; ``started``: outputs but no complete state (stopped before the first);
    ``interrupted``: a complete state to resume from; ``finished``: ``finished.json`` is there."""

    folder: Path
    state: Literal["fresh", "started", "interrupted", "finished"]
    step: int = 0
    final: Path | None = None
    exports: tuple[Export, ...] = field(default_factory=tuple)


def config_hash(cfg: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.resolved(), sort_keys=True).encode()).hexdigest()[:16]


def latest_state(folder: Path) -> Path | None:
    root = folder / "state"
    done = sorted(p for p in root.glob("step-*") if (p / MARKER).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def run_status(folder: str | Path) -> RunStatus:
    """What a run folder holds (cheap: reads no weights)."""
    folder = Path(folder)
    marker = folder / FINISHED
    if marker.is_file():
        info = json.loads(marker.read_text())
        exports = tuple(Export(folder / e["file"], int(e["step"]), int(e["epoch"]), bool(e.get("final")))
                        for e in info["exports"])
        return RunStatus(folder, "finished", int(info["step"]), folder / info["final"], exports)
    if not folder.is_dir() or not any(folder.iterdir()):
        return RunStatus(folder, "fresh")
    state = latest_state(folder)
    if state is None:
        return RunStatus(folder, "started")
    return RunStatus(folder, "interrupted", int(state.name.removeprefix("step-")))


def finished_run(cfg: TrainConfig, resume: str | None) -> Path | None:
    """Before building anything: a bad ``--resume PATH`` is an error; ``--resume latest`` on a finished run is a
    no-op that returns its final adapter."""
    if resume not in (None, "latest"):
        find_state(Path(cfg.output_dir), resume)
    if resume != "latest":
        return None
    status = run_status(cfg.output_dir)
    if status.state != "finished":
        return None
    if os.environ.get("RANK", "0") == "0":
        info = json.loads((status.folder / FINISHED).read_text())
        if info.get("config_hash") != config_hash(cfg):
            log.warning("lyco: the config changed since %s finished; to train with the new settings use another "
                        "output_dir (or overwrite = true without --resume)", status.folder)
        log.info("lyco: %s is finished (step %d, final adapter %s); nothing to do", status.folder, status.step,
                 status.final)
    return status.final


def _backup(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, k = Path(f"{path}.bak-{stamp}"), 1
    while dest.exists():
        dest, k = Path(f"{path}.bak-{stamp}-{k}"), k + 1
    try:
        os.replace(path, dest)
    except OSError as exc:
        raise ConfigError(f"overwrite = true: cannot move the previous outputs {path} aside to {dest} ({exc}); "
                          "move or delete them yourself, or set another output_dir") from None
    return dest


def prepare_output_dir(path: Path, overwrite: bool, resuming: bool) -> Path:
    """The folder this run writes to, created now (call it only once the run is validated).

    Resuming uses ``path`` as it is (created when missing: nothing to resume starts from step 0).  Otherwise a
    non-empty folder is moved aside (``overwrite``) or left alone for an auto-suffixed new one."""
    if resuming:
        path.mkdir(parents=True, exist_ok=True)
        return path
    if path.exists() and any(path.iterdir()):
        if overwrite:
            dest = _backup(path)
            log.warning("lyco: overwrite = true: moved the previous contents of %s to %s (nothing was deleted; "
                        "remove that folder when you no longer need it)", path, dest)
        else:
            k = 1
            while Path(f"{path}-{k}").exists():
                k += 1
            new = Path(f"{path}-{k}")
            log.warning("lyco: %s exists and is not empty; writing this run to %s (set overwrite = true to replace "
                        "it, or --resume latest to continue it)", path, new)
            path = new
    path.mkdir(parents=True, exist_ok=True)
    return path


_EXPORT = r"^{name}(?:-(?P<kind>[se])(?P<n>\d+))?\.safetensors$"


def list_exports(folder: Path, name: str) -> list[Export]:
    """The run's adapter files (``name-sXXXXXXXX``, ``name-eXXXX``, ``name``), in step order, with step and epoch
    from their metadata."""
    pat = re.compile(_EXPORT.format(name=re.escape(name)))
    out = []
    for p in sorted(folder.iterdir()):
        m = pat.match(p.name)
        if not m:
            continue
        meta = read_metadata(p)
        out.append(Export(p, int(meta.get("ss_steps", 0)), int(meta.get("ss_epoch", 0)), m.group("kind") is None))
    return sorted(out, key=lambda e: (e.step, e.epoch, e.final))


def write_finished(folder: Path, name: str, final: Path, config_hash: str) -> Path:
    """``finished.json``, written last (temp file + rename) so that its presence means the run is complete."""
    exports = list_exports(folder, name)
    last = next(e for e in exports if e.path == final)
    info = {"name": name, "final": final.name, "step": last.step, "epoch": last.epoch, "config_hash": config_hash,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "exports": [{"file": e.path.name, "step": e.step, "epoch": e.epoch, "final": e.final} for e in exports]}
    write_atomic(folder / FINISHED, json.dumps(info, indent=2))
    return folder / FINISHED
