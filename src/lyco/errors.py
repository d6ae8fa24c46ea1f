"""Exceptions raised by lyco.

Every error lyco raises on purpose is a :class:`LycoError`.  Messages name the file, key or module involved
and say what to do about it.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class LycoError(Exception):
    """Base class of every error lyco raises on purpose."""


class ConfigError(LycoError, ValueError):
    """An invalid configuration: unknown key or algorithm, bad value, impossible combination."""


class TargetError(LycoError, ValueError):
    """Target selection matched nothing, or matched something lyco cannot adapt."""


class FileFormatError(LycoError, ValueError):
    """An adapter file cannot be read or does not fit the model."""


class MissingTokenizerError(FileFormatError):
    """A tokenizer a Stable Diffusion pipeline needs is not available offline (argument, env var or HF cache)."""


class StateError(LycoError, RuntimeError):
    """An operation is not allowed in the current state (e.g. unmerge out of order)."""


class TrainingError(LycoError, RuntimeError):
    """Training cannot continue (e.g. the loss became NaN); the message says where the last good checkpoint is."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choices, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)
    if not close:
        return ""
    if len(close) == 1:
        return f" (did you mean {close[0]!r}?)"
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def short_list(items: Iterable[str], limit: int = 12) -> str:
    """Comma-separated list, truncated with a count."""
    items = list(items)
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown
