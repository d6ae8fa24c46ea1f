"""The ``lyco`` command line: ``lyco [--verbose] <verb> ...``."""
from __future__ import annotations

import importlib
import re
import sys

from ._version import __version__
from .console import configure_output, install_handler
from .errors import LycoError, did_you_mean

#: verb -> (module, help).  Each module has ``main(argv) -> int``.
VERBS = {
    "train": ("lyco.train.cli", "train an adapter from a TOML run file (accelerate-ready)"),
    "generate": ("lyco.generate", "generate images with a model and adapters (A1111-style PNG parameters)"),
    "eval": ("lyco.eval.cli", "evaluate base model and adapters as the paper does; HTML report"),
    "demo": ("lyco.demo", "teach builtin:tiny a held-out concept with LoRA and evaluate it (--toy: a toy model)"),
    "inspect": ("lyco.tools.inspect", "show what an adapter file contains and which UIs load it"),
    "merge": ("lyco.tools.merge", "bake adapters into a checkpoint, or merge adapters into one"),
    "extract": ("lyco.tools.extract", "extract a LoCon from a fine-tuned model by SVD"),
    "resize": ("lyco.tools.resize", "change the rank of an adapter by SVD"),
    "convert": ("lyco.tools.convert", "convert between kohya, PEFT, diffusers and ui-safe files"),
    "analyze": ("lyco.analysis.cli", "the paper's analysis of evaluated checkpoints: ranks, effects, SHAP, findings"),
    "world": ("lyco.world.cli", "the embedded micro-world: render scenes, write concept datasets"),
    "sweep": ("lyco.sweep.cli", "the paper's study: train a grid x seeds, evaluate the pool, analyse"),
}

#: Python-API advice in error messages -> what a command-line user passes instead
CLI_HINTS = {
    "pass strict=False to load the rest": "pass --ignore-unmatched to load the rest",
    "pass overwrite=True to replace it": "pass --overwrite to replace it",
}
#: (pattern, replacement) for advice with no command-line equivalent (the missing-tokenizer message's API options)
CLI_REWRITES = [
    (re.compile(r"Provide it in one of three ways:\n  1\. argument: [^\n]*\n  2\. (?P<env>[^\n]*)\n  3\. "),
     "Provide it in one of two ways:\n  1. \\g<env>\n  2. "),
    (re.compile(r"\nTo load without tokenizers \([^)]*\), pass \w+=False\."), ""),
]


def cli_message(exc: LycoError) -> str:
    """The error text with Python-API advice replaced by what works on the command line."""
    msg = str(exc)
    for api, flag in CLI_HINTS.items():
        msg = msg.replace(api, flag)
    for pattern, repl in CLI_REWRITES:
        msg = pattern.sub(repl, msg)
    return msg


def usage() -> str:
    lines = ["usage: lyco [--verbose] <command> [options]", "", "commands:"]
    lines += [f"  {verb:<10} {help_}" for verb, (_, help_) in VERBS.items()]
    lines += ["", "options:", "  --verbose  show third-party warnings, loading bars and lyco's debug messages",
              "  --version  print the version", "",
              "'lyco <command> --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    verbose = "--verbose" in argv[:cut]
    argv = [a for i, a in enumerate(argv) if not (a == "--verbose" and i < cut)]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"lyco {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"lyco: unknown command {verb!r}{did_you_mean(verb, VERBS)}; see 'lyco --help'", file=sys.stderr)
        return 2
    install_handler()
    configure_output(verbose)
    mod = importlib.import_module(VERBS[verb][0])
    try:
        return int(mod.main(rest) or 0)
    except LycoError as exc:
        print(f"lyco {verb}: error: {cli_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
