"""The ``lyco`` command line: ``lyco <verb> ...``."""
from __future__ import annotations

import importlib
import logging
import sys

from .errors import LycoError

#: verb -> (module, help).  Each module has ``main(argv) -> int``.
VERBS = {
    "train": ("lyco.train.cli", "train an adapter from a TOML run file (accelerate-ready)"),
    "demo": ("lyco.demo", "train several adapters on a toy task, save, reload, print a table"),
    "inspect": ("lyco.tools.inspect", "show what an adapter file contains and which UIs load it"),
    "merge": ("lyco.tools.merge", "bake adapters into a checkpoint, or merge adapters into one"),
    "extract": ("lyco.tools.extract", "extract a LoCon from a fine-tuned model by SVD"),
    "resize": ("lyco.tools.resize", "change the rank of a LoRA/LoCon by SVD"),
    "convert": ("lyco.tools.convert", "convert between kohya, PEFT, diffusers and ui-safe files"),
    "eval": ("lyco.eval.cli", "evaluate base model and adapters as the paper does; HTML report"),
    "world": ("lyco.world.cli", "the embedded micro-world: render scenes, write concept datasets"),
    "sweep": ("lyco.sweep.cli", "the paper's study: train a grid x seeds, evaluate the pool, analyse"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lyco <command> [options]\n\ncommands:")
        for verb, (_, help_) in VERBS.items():
            print(f"  {verb:<10} {help_}")
        print("\n'lyco <command> --help' for the options of a command; 'lyco --version' for the version.")
        return 0
    if argv[0] == "--version":
        from . import __version__
        print(f"lyco {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        from .errors import did_you_mean
        print(f"lyco: unknown command {verb!r}{did_you_mean(verb, VERBS)}; see 'lyco --help'", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    mod = importlib.import_module(VERBS[verb][0])
    try:
        return int(mod.main(rest) or 0)
    except LycoError as exc:
        print(f"lyco {verb}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
