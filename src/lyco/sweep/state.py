"""Where a run stands, read from its files (the truth survives any crash), and the lock that keeps two trainers
off one run folder.

:func:`run_state` is the one place that decides: ``finished`` (the final adapter and every requested export are
complete files), ``interrupted`` (a complete crash-safe state exists), ``partial`` (the folder exists but holds no
complete state: the run starts again from step 0), ``pending`` (nothing yet), ``running`` (a trainer holds the run's
lock on this machine) or ``changed`` (the run config on disk differs from what the sweep resolves now: the sweep will
not train it again nor use it until the user decides).  :func:`train_args` turns that into the trainer's
arguments.  Once ``lyco train --resume latest`` starts from step 0 when there is no state yet, ``train_args`` can
always pass ``--resume latest``.
"""
from __future__ import annotations

import json
import os
import re
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .spec import RunSpec
from .tomlw import dumps

STATE_MARKER = "COMPLETE"        # the trainer's completion marker of a state folder
LOCK = ".lyco-sweep.lock"

PENDING, PARTIAL, INTERRUPTED, RUNNING, FINISHED, CHANGED = (
    "pending", "partial", "interrupted", "running", "finished", "changed")


@dataclass
class RunState:
    state: str
    #: save point -> adapter file, for the points whose file is complete
    checkpoints: dict[int, Path] = field(default_factory=dict)
    #: step of the newest complete training state (None: none)
    last_state: int | None = None
    note: str = ""


# ------------------------------------------------------------------------------------------------ files
def safetensors_complete(path: Path) -> bool:
    """The file is a whole safetensors file: its header parses and the data it declares is all there."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            n = struct.unpack("<Q", head)[0]
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        return 8 + n + end <= size
    except (OSError, ValueError, KeyError, TypeError):
        return False


_EXPORT = re.compile(r"^(?P<name>.+)-(?P<unit>[es])(?P<n>\d+)\.safetensors$")


def exports(run: RunSpec) -> dict[int, Path]:
    """Save point -> adapter file of the run: the trainer's periodic exports (``<name>-e<epoch>.safetensors`` /
    ``<name>-s<step>.safetensors``, any number of digits) and, for the last point, the final ``<name>.safetensors``."""
    found: dict[int, Path] = {}
    if not run.dir.is_dir():
        return found
    unit = run.unit[0]
    for p in run.dir.iterdir():
        m = _EXPORT.match(p.name)
        if m and m["name"] == run.name and m["unit"] == unit and int(m["n"]) in run.points:
            found[int(m["n"])] = p
    final = run.dir / f"{run.name}.safetensors"
    if final.is_file():
        found[run.final] = final        # the final export is the last point (the trainer writes no -eN for it)
    return found


def last_state(run: RunSpec) -> int | None:
    root = run.dir / "state"
    if not root.is_dir():
        return None
    steps = [int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / STATE_MARKER).is_file()
             and p.name.split("-")[1].isdigit()]
    return max(steps) if steps else None


def resolved_text(run: RunSpec) -> str:
    return dumps(run.train, header=f"run {run.name}: written by lyco sweep (the resolved lyco train config)")


def config_changed(run: RunSpec) -> bool:
    """The run config on disk is not what the sweep resolves now."""
    if not run.config_file.is_file():
        return False
    try:
        on_disk = tomllib.loads(run.config_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return True
    return on_disk != tomllib.loads(resolved_text(run))


# ------------------------------------------------------------------------------------------------ the decision
def run_state(run: RunSpec, check_lock: bool = True) -> RunState:
    """Where ``run`` stands (see the module docstring).  ``check_lock=False`` when the caller holds the lock."""
    if config_changed(run):
        return RunState(CHANGED, note=f"{run.config_file} differs from the sweep's settings for this run")
    found = {p: f for p, f in exports(run).items() if safetensors_complete(f)}
    if len(found) == len(run.points):
        return RunState(FINISHED, found)
    step = last_state(run)
    if check_lock and is_locked(run):
        return RunState(RUNNING, found, step, "a trainer is working on it")
    if step is not None:
        return RunState(INTERRUPTED, found, step)
    if run.dir.is_dir() and any(run.dir.iterdir()):
        return RunState(PARTIAL, found, None, "started, no complete state yet")
    return RunState(PENDING)


def train_args(run: RunSpec, st: RunState) -> list[str] | None:
    """``lyco train`` arguments that bring ``run`` to finished (None: nothing to do)."""
    if st.state in (FINISHED, CHANGED, RUNNING):
        return None
    args = ["train", str(run.config_file)]
    if st.state == INTERRUPTED:
        args += ["--resume", "latest"]
    return args              # pending / partial: from step 0 (the run config has overwrite = true)


# ------------------------------------------------------------------------------------------------ the run lock
def _lock_path(run: RunSpec) -> Path:
    return run.config_file.with_name(f".{run.name}.lock")


def try_lock(run: RunSpec) -> IO[Any] | None:
    """Take the run's lock (an ``flock`` on a file beside the run folder); None when another process holds it.
    The trainer subprocess inherits the open file, so the lock lives as long as it does."""
    try:
        import fcntl
    except ImportError:                 # no flock (Windows): one sweep at a time is the user's business
        path = _lock_path(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+")
    path = _lock_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def is_locked(run: RunSpec) -> bool:
    if not _lock_path(run).is_file():
        return False
    f = try_lock(run)
    if f is None:
        return True
    f.close()
    return False


def write_run_config(run: RunSpec) -> None:
    """The resolved run config beside the run folder (written once; unchanged afterwards)."""
    if run.config_file.is_file():
        return
    run.config_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = run.config_file.with_name(f".{run.config_file.name}.{os.getpid()}.tmp")
    tmp.write_text(resolved_text(run), encoding="utf-8")
    os.replace(tmp, run.config_file)
