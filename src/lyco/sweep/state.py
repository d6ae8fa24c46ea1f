"""Where a run stands, and the lock that keeps two trainers off one run folder.

The trainer's own record decides (:func:`lyco.train.outputs.run_status`): ``finished`` (its ``finished.json``,
written last, is there), ``interrupted`` (a complete crash-safe state to resume from), ``partial`` (the trainer's
``started``: outputs but no complete state yet) and ``pending`` (its ``fresh``: nothing yet).  The sweep adds what
only it knows: ``changed`` (the run config on disk differs from what the sweep resolves now: it will not train nor
use the run until the user decides), ``running`` (a trainer holds the run's lock on this machine) and ``missing``
(finished, but an adapter the sweep asks for is not in the folder, e.g. deleted by hand).

Every run is trained with ``lyco train RUN.toml --resume latest``, which is idempotent: it starts a pending or
partial run from step 0, resumes an interrupted one and does nothing for a finished one.

Save points map to the trainer's files as it writes them: ``<name>-e0010.safetensors`` is epoch 10 (``-s00000100``
step 100 for ``save_steps``); the last point is the final ``<name>.safetensors`` (the trainer writes no ``-e`` file
for the last epoch), recognised by the epoch (or step) ``finished.json`` gives it.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..io.atomic import write_atomic
from ..train.outputs import Export, RunStatus, run_status
from .spec import RunSpec
from .tomlw import dumps

try:
    import fcntl
except ImportError:                     # no flock (Windows): one sweep at a time is the user's business
    fcntl = None  # type: ignore[assignment]

PENDING, PARTIAL, INTERRUPTED, RUNNING, FINISHED, CHANGED, MISSING = (
    "pending", "partial", "interrupted", "running", "finished", "changed", "missing")
#: the trainer's run states -> the sweep's
FROM_TRAINER = {"fresh": PENDING, "started": PARTIAL, "interrupted": INTERRUPTED, "finished": FINISHED}


@dataclass
class RunState:
    state: str
    #: save point -> adapter file (finished runs: from finished.json; others: the periodic exports written so far)
    checkpoints: dict[int, Path] = field(default_factory=dict)
    #: step of the newest complete training state (None: none)
    last_state: int | None = None
    note: str = ""


# ------------------------------------------------------------------------------------------------ files
def _export_name(run: RunSpec) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(run.name)}-(?P<kind>[se])(?P<n>\d+)\.safetensors$")


def export_point(run: RunSpec, export: Export) -> int | None:
    """The save point an adapter file of the run stands for (None: not one the sweep asked for)."""
    point: int | None
    if export.final:
        point = export.epoch if run.unit == "epoch" else export.step
    else:
        m = _export_name(run).match(export.path.name)
        point = int(m["n"]) if m and m["kind"] == run.unit[0] else None
    return point if point in run.points else None


def checkpoints(run: RunSpec, status: RunStatus) -> dict[int, Path]:
    """Save point -> adapter file.  A finished run's come from its ``finished.json``; an unfinished run has only
    its periodic exports (a final file without ``finished.json`` is not trusted: the resumed run rewrites it)."""
    if status.state == "finished":
        exports = list(status.exports)
    elif run.dir.is_dir():
        pat = _export_name(run)
        exports = [Export(p, 0, 0) for p in sorted(run.dir.iterdir()) if pat.match(p.name)]
    else:
        exports = []
    found: dict[int, Path] = {}
    for e in exports:
        if not e.path.is_file():          # listed in finished.json, deleted since
            continue
        point = export_point(run, e)
        if point is not None and (point not in found or e.final):
            found[point] = e.path
    return found


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


def write_run_config(run: RunSpec) -> None:
    """The resolved run config beside the run folder (written once; unchanged afterwards)."""
    if not run.config_file.is_file():
        write_atomic(run.config_file, resolved_text(run))


# ------------------------------------------------------------------------------------------------ the decision
def run_state(run: RunSpec, check_lock: bool = True) -> RunState:
    """Where ``run`` stands (see the module docstring).  ``check_lock=False`` when the caller holds the lock."""
    if config_changed(run):
        return RunState(CHANGED, note=f"{run.config_file} differs from the sweep's settings for this run")
    status = run_status(run.dir)
    found = checkpoints(run, status)
    if status.state == "finished":
        lost = [p for p in run.points if p not in found]
        if not lost:
            return RunState(FINISHED, found, status.step)
        return RunState(MISSING, found, status.step, f"finished, but the adapters of {run.unit}s "
                        f"{', '.join(map(str, lost))} are not in {run.dir}; restore them, or move the folder (and "
                        f"{run.config_file.name}) away to train the run again")
    if check_lock and is_locked(run):
        return RunState(RUNNING, found, status.step or None, "a trainer is working on it")
    state = FROM_TRAINER[status.state]
    note = "started, no complete state yet" if state == PARTIAL else ""
    return RunState(state, found, status.step if state == INTERRUPTED else None, note)


def train_args(run: RunSpec, st: RunState) -> list[str] | None:
    """``lyco train`` arguments that bring ``run`` to finished (None: nothing the trainer can do)."""
    if st.state in (FINISHED, CHANGED, RUNNING, MISSING):
        return None
    return ["train", str(run.config_file), "--resume", "latest"]


# ------------------------------------------------------------------------------------------------ the run lock
def _lock_path(run: RunSpec) -> Path:
    return run.config_file.with_name(f".{run.name}.lock")


def try_lock(run: RunSpec) -> IO[Any] | None:
    """Take the run's lock (an ``flock`` on a file beside the run folder); None when another process holds it.
    The trainer subprocess inherits the open file, so the lock lives as long as it does."""
    path = _lock_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    if fcntl is None:
        return f
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
