"""What lyco's commands print: quiet by default (lyco's own messages, no third-party warnings or loading bars),
everything with ``--verbose``.  One function for every command (the top-level CLI and ``lyco train``)."""
from __future__ import annotations

import logging
import os
import sys
import warnings

#: environment that keeps the Hugging Face libraries quiet (read when they are imported; user settings win)
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "DIFFUSERS_NO_ADVISORY_WARNINGS": "1",
             "TOKENIZERS_PARALLELISM": "false"}
#: set by ``lyco --verbose`` so that the command (and processes it starts) see it
VERBOSE_ENV = "LYCO_VERBOSE"
THIRD_PARTY = ("transformers", "diffusers", "accelerate", "huggingface_hub", "torch", "PIL", "matplotlib")


def verbose_requested(flag: bool = False) -> bool:
    """A command's own ``--verbose`` or the top-level one."""
    return flag or os.environ.get(VERBOSE_ENV) == "1"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (not the stream of when it was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(sys.stderr, "closed", False):   # interpreter shutdown after stderr was closed
            super().emit(record)


def install_handler() -> None:
    """Print log messages as plain lines on stderr (the commands' entry point calls it once)."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))


def configure_output(verbose: bool) -> None:
    """Quiet: lyco's INFO messages, third-party messages at ERROR, their warnings and loading bars off.  Verbose:
    lyco's DEBUG messages, third-party warnings and loading bars back on.  Idempotent both ways."""
    logging.getLogger("lyco").setLevel(logging.DEBUG if verbose else logging.INFO)
    level = logging.WARNING if verbose else logging.ERROR   # WARNING: the libraries' own default verbosity
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(level)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        for k, v in QUIET_ENV.items():      # a quiet environment inherited from a parent lyco command
            if os.environ.get(k) == v:
                del os.environ[k]
        warnings.filterwarnings("default")
    else:
        for k, v in QUIET_ENV.items():
            os.environ.setdefault(k, v)
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"lyco(\.|$)")
    for lib in ("transformers", "diffusers"):  # already imported (in-process callers): tell them directly
        mod = sys.modules.get(f"{lib}.utils.logging")
        if mod is None:
            continue
        mod.set_verbosity(level)
        (mod.enable_progress_bar if verbose else mod.disable_progress_bar)()
