"""``lyco train CONFIG.toml [--set key=value ...] [--resume latest|PATH] [--verbose]``.

Ctrl-C (or SIGTERM) saves a training state at the next step and prints the command that resumes the run; a
second Ctrl-C aborts at once.  ``--resume latest`` can be given from the start: it starts a new run (no state
yet), continues an interrupted one, or does nothing for a finished one — so a scheduler may relaunch the same
command after a preemption.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..console import configure_output, verbose_requested
from .config import load_train_config
from .outputs import finished_run
from .signals import TrainingInterrupted


def resume_command(argv: Sequence[str], cfg_output_dir: str, out_dir: Any) -> str:
    """The command line that continues this run: the same arguments with ``--resume latest`` (and the folder the
    run really went to, when it was auto-suffixed)."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            args.append(a)
    if Path(out_dir).resolve() != Path(cfg_output_dir).resolve():
        args += ["--set", f"output_dir={_toml_str(str(out_dir))}"]
    launcher = "lyco train" if int(os.environ.get("WORLD_SIZE", "1")) == 1 else "<launcher> -m lyco train"
    return f"{launcher} {shlex.join([*args, '--resume', 'latest'])}"


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv: list[str] | None = None, callbacks: tuple = ()) -> int:
    """``callbacks``: see :data:`lyco.train.loop.Callback` (tests use them to interrupt a run at a given step)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="lyco train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="TOML run file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one value (repeatable)")
    ap.add_argument("--resume", help="'latest' (idempotent: start, continue or nothing to do) or a state folder")
    ap.add_argument("--verbose", "-v", action="store_true",
                    help="also show the warnings and loading bars of transformers / diffusers, and debug messages")
    a = ap.parse_args(argv)
    cfg = load_train_config(a.config, a.set)
    verbose = verbose_requested(a.verbose)
    configure_output(verbose)
    path = finished_run(cfg, a.resume)   # a finished run: nothing to do (before the heavy imports)
    if path is not None:
        print(f"final adapter: {path}")
        return 0
    from .loop import train
    try:
        path = train(cfg, resume=a.resume, callbacks=tuple(callbacks))
    except TrainingInterrupted as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"lyco train: {exc}; resume with: {resume_command(argv, cfg.output_dir, exc.out_dir)}",
                  file=sys.stderr, flush=True)
        return 128 + exc.signum
    except KeyboardInterrupt:  # before training started: nothing to save
        print("lyco train: interrupted before training started; nothing to resume (run the same command to start "
              "it)", file=sys.stderr, flush=True)
        return 130
    print(f"final adapter: {path}")
    return 0
