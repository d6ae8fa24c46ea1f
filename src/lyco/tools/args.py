"""Command-line options the tools share, spelled the same way everywhere."""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_common", "add_option"]


def add_option(ap: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """``--some-name`` (shown in --help) plus the kohya spelling ``--some_name`` as a hidden alias."""
    dest = kw.pop("dest", name.lstrip("-").replace("-", "_"))
    ap.add_argument(name, dest=dest, **kw)
    alias = name.replace("-", "_").replace("__", "--", 1)
    if alias != name:
        hidden = {k: v for k, v in kw.items() if k in ("type", "action", "choices", "nargs")}
        ap.add_argument(alias, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **hidden)


def add_common(ap: argparse.ArgumentParser, *, unmatched: bool = True) -> None:
    """``--overwrite`` and (for tools that load adapters onto a model) ``--ignore-unmatched``."""
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing output (never an input: that is always refused)")
    if unmatched:
        ap.add_argument("--ignore-unmatched", action="store_true",
                        help="load the adapter modules that match the model and warn about the rest (default: "
                             "an adapter module with no matching layer is an error)")
