"""Run ``lyco train ARGS...`` in this process with a test callback installed (the trainer's test hook):

    python tests/train_driver.py HOOK ARGS...

HOOK is ``none``, or ``EVENT:STEP:ACTION[:RANK]``: when the trainer emits EVENT (``step``, ``state``, ``epoch``) at
optimizer step STEP, do ACTION — ``kill`` (SIGKILL: a crash), ``int`` (one SIGINT: Ctrl-C), ``int2`` (two SIGINTs:
Ctrl-C twice), ``term`` (SIGTERM) — in every process, or only in process RANK of a distributed run.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from lyco.errors import LycoError

ACTIONS = {"kill": [signal.SIGKILL], "int": [signal.SIGINT], "int2": [signal.SIGINT, signal.SIGINT],
           "term": [signal.SIGTERM]}


def hook(spec: str):
    if spec == "none":
        return ()
    event, step, action, *rank = spec.split(":")

    def callback(ev, trainer, progress) -> None:
        if ev == event and progress.step == int(step) and (not rank or trainer.acc.process_index == int(rank[0])):
            for s in ACTIONS[action]:
                os.kill(os.getpid(), s)

    return (callback,)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from lyco.train.cli import main
    try:
        sys.exit(main(sys.argv[2:], callbacks=hook(sys.argv[1])))
    except LycoError as exc:
        print(f"lyco train: error: {exc}", file=sys.stderr)
        sys.exit(1)
