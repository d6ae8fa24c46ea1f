"""The sweep's records: ``sweep.json`` (the driver's view: per-run outcome, attempts, errors, timings; stage
records), rewritten atomically after every event, and one append-only ``logs/<run>.attempts.jsonl`` per run that
every attempt (on any machine of a cluster) appends to.  The run folders stay the truth about progress
(:func:`lyco.sweep.state.run_state`); these files say what happened."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .._version import __version__
from ..io.atomic import write_atomic

MANIFEST = "sweep.json"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class Manifest:
    """``<out>/sweep.json``, safe to update from several threads of the driver."""

    def __init__(self, out: Path, sweep_file: Path) -> None:
        self.path = out / MANIFEST
        self._lock = threading.Lock()
        data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
        data.update(version=1, lyco=__version__, sweep=str(sweep_file))
        data.setdefault("runs", {})
        data.setdefault("stages", {})
        self.data = data

    def run(self, name: str) -> dict[str, Any]:
        return self.data["runs"].get(name, {})

    def update_run(self, name: str, **fields: Any) -> None:
        with self._lock:
            rec = self.data["runs"].setdefault(name, {})
            rec.update(fields)
            rec["updated"] = now()
            self._save()

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def update_stage(self, name: str, **fields: Any) -> None:
        with self._lock:
            rec = self.data["stages"].setdefault(name, {})
            rec.update(fields)
            rec["updated"] = now()
            self._save()

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------ attempts
def attempts_file(out: Path, name: str) -> Path:
    return out / "logs" / f"{name}.attempts.jsonl"


def log_attempt(out: Path, name: str, **event: Any) -> None:
    """Append one event (``start`` / ``end``) of an attempt; one ``write`` of one line (O_APPEND)."""
    path = attempts_file(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    event = {"time": now(), "host": socket.gethostname(), "pid": os.getpid(), **event}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(event, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def read_attempts(out: Path, name: str) -> list[dict[str, Any]]:
    path = attempts_file(out, name)
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue                     # a line cut by a crash
    return events
