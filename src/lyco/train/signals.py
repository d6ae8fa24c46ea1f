"""Ctrl-C and SIGTERM during training: stop at the next optimizer step, save a state, say how to resume.

The first SIGINT or SIGTERM only sets a flag; the loop reads it after each optimizer step (under several processes
the flag is reduced over all of them, so every process stops at the same step).  A second SIGINT aborts at once
(``KeyboardInterrupt``); a SIGTERM after the first signal is ignored (launchers such as torchrun forward the
user's Ctrl-C to their workers as SIGTERM).
"""
from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

import torch

from ..errors import LycoError

NAMES: dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class TrainingInterrupted(LycoError):
    """Training stopped on a signal; ``state`` is the state to resume from (None when stopped before any step)."""

    def __init__(self, signum: int, step: int, total: int, out_dir: Any, state: Any, aborted: bool = False) -> None:
        self.signum, self.step, self.total, self.out_dir, self.state = signum, step, total, out_dir, state
        if aborted:
            what = f"aborted by a second Ctrl-C at step {step} of {total}; the last saved state is {state or 'none'}"
        else:
            where = f"state saved in {state}" if state else "no state yet (the next run starts from step 0)"
            what = f"interrupted by {NAMES.get(signum, signum)} at step {step} of {total}; {where}"
        super().__init__(what)


class StopOnSignal:
    """A context that turns SIGINT / SIGTERM into a stop request for the training loop."""

    def __init__(self, announce: bool = True) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}
        self._group: Any = None

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in NAMES:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        if self.announce:
            os.write(2, f"\nlyco train: {NAMES[signum]} received; stopping after this step to save a state "
                        "(Ctrl-C again aborts at once)\n".encode())

    def requested(self, acc: Any) -> int | None:
        """The signal to stop on, agreed by every process (a collective call when there are several; on the CPU,
        through a gloo group, so that asking every step does not wait for the GPU)."""
        flag = self.signum or 0
        if acc.num_processes > 1:
            dist = torch.distributed
            if self._group is None:
                self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
            t = torch.tensor([flag])
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._group)
            flag = int(t.item())
        return flag or None
