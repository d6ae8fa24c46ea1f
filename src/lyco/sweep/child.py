"""The process a sweep job runs in: ``python -m lyco.sweep.child <lyco command line>``.

It dies with its parent (Linux: a SIGTERM when the process that started it goes away, e.g. a killed Ray worker,
so no orphan keeps training a run that is being retried), takes its thread budget from ``LYCO_NUM_THREADS`` and
then runs the ``lyco`` command line — or ``_eval-shard SHARD.toml [--with-base]`` (see :mod:`.evalshard`).
"""
from __future__ import annotations

import os
import signal
import sys


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent exits (Linux only; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    expected = os.environ.get("LYCO_SWEEP_PARENT")
    if expected and os.getppid() != int(expected):     # the parent died before prctl: do not run
        sys.exit(75)


def set_threads() -> None:
    n = os.environ.get("LYCO_NUM_THREADS")
    if n:
        import torch
        torch.set_num_threads(int(n))


def main(argv: list[str]) -> int:
    die_with_parent()
    set_threads()
    if argv and argv[0] == "_eval-shard":
        import logging
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from .evalshard import prepare_shard
        return prepare_shard(argv[1], with_base="--with-base" in argv[2:])
    from ..cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
