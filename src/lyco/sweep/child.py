"""The process a sweep job runs in: ``python -m lyco.sweep.child VERB ARGS...``.

It dies with its parent (Linux: a SIGTERM when the process that started it goes away, e.g. a killed Ray worker,
so no orphan keeps training a run that is being retried), takes its thread budget from ``LYCO_NUM_THREADS`` and
then runs one verb's module directly: ``train`` (:func:`lyco.train.cli.main`), ``eval`` (:func:`lyco.eval.cli.main`)
or ``_eval-shard SHARD.toml [--with-base]`` (:mod:`.evalshard`).  It prints errors as the ``lyco`` command does.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

import torch

from ..console import configure_output, install_handler, verbose_requested
from ..errors import LycoError
from ..eval import cli as eval_cli
from ..train import cli as train_cli
from .evalshard import prepare_shard


def _eval_shard(argv: list[str]) -> int:
    if not argv:
        raise LycoError("_eval-shard needs the shard's eval config (SHARD.toml)")
    return prepare_shard(argv[0], with_base="--with-base" in argv[1:])


#: what a sweep job may run: verb -> main(argv)
VERBS: dict[str, Callable[[list[str]], int]] = {"train": train_cli.main, "eval": eval_cli.main,
                                                "_eval-shard": _eval_shard}


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent exits (Linux only; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
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
        torch.set_num_threads(int(n))


def main(argv: list[str]) -> int:
    die_with_parent()
    set_threads()
    if not argv or argv[0] not in VERBS:
        print(f"lyco.sweep.child: expected one of {', '.join(VERBS)}, got {argv[:1]}", file=sys.stderr)
        return 2
    install_handler()
    configure_output(verbose_requested())
    try:
        return int(VERBS[argv[0]](argv[1:]) or 0)
    except LycoError as exc:
        print(f"lyco {argv[0].lstrip('_')}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
