"""Crash-safe training states and adapter exports with rotation.

A state is written to ``state/tmp-<step>/``, fsynced, renamed to ``state/step-XXXXXXXX/`` and only then marked
with a ``COMPLETE`` file.  Resume picks the newest state with a marker; incomplete ones are ignored with a warning.
"""
from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import StateError
from ..io.atomic import publish_dir, write_atomic

log = logging.getLogger("lyco")
MARKER = "COMPLETE"


def rng_state(noise_gen: torch.Generator) -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
          "noise": noise_gen.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any], noise_gen: torch.Generator) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    noise_gen.set_state(st["noise"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_state(state_root: Path, step: int, payload: dict[str, Any], per_rank: dict[str, Any], rank: int,
               is_main: bool, barrier, keep: int) -> Path:
    """Write one state (main writes the shared payload, every rank its own RNG file)."""
    final = state_root / f"step-{step:08d}"
    state_root.mkdir(parents=True, exist_ok=True)
    tmp = state_root / f"tmp-{step:08d}"  # the same on every rank; renamed only when complete
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        torch.save(payload, tmp / "state.pt")
        with open(tmp / "config.json", "w") as f:
            json.dump(payload.get("config", {}), f, indent=2)
    barrier()
    torch.save(per_rank, tmp / f"rng-rank{rank}.pt")
    barrier()
    if is_main:
        if final.exists():
            shutil.rmtree(final)
        publish_dir(tmp, final)             # fsynced, normal permissions, renamed in one step
        write_atomic(final / MARKER, str(step))
        _rotate(state_root, keep)
    barrier()
    return final


def _rotate(state_root: Path, keep: int) -> None:
    done = sorted(p for p in state_root.glob("step-*") if (p / MARKER).is_file())
    for p in done[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def find_state(output_dir: Path, resume: str) -> Path:
    if resume != "latest":
        p = Path(resume)
        if not (p / MARKER).is_file():
            raise StateError(f"{p} is not a complete training state (no {MARKER} marker)")
        return p
    root = output_dir / "state"
    cands = sorted(root.glob("step-*")) if root.is_dir() else []
    complete = [p for p in cands if (p / MARKER).is_file()]
    for p in cands:
        if p not in complete:
            log.warning("lyco: ignoring incomplete state %s (no %s marker: the run stopped while saving)", p, MARKER)
    for p in root.glob("tmp-*") if root.is_dir() else []:
        log.warning("lyco: ignoring unfinished state %s", p)
    if not complete:
        raise StateError(f"--resume latest: no complete state under {root}")
    return complete[-1]


def load_state(path: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    payload = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    rng_file = path / f"rng-rank{rank}.pt"
    per_rank = torch.load(rng_file, map_location="cpu", weights_only=False) if rng_file.is_file() else {}
    return payload, per_rank


def rotate_exports(out_dir: Path, name: str, keep: int | None) -> None:
    if not keep:
        return
    pat = re.compile(rf"^{re.escape(name)}-[se]\d+\.safetensors$")
    files = sorted((p for p in out_dir.iterdir() if pat.match(p.name)), key=lambda p: p.stat().st_mtime)
    for p in files[:-keep]:
        p.unlink(missing_ok=True)
