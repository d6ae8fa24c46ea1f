"""Prompt processing for text–image similarity (docs/EVALUATION.md §5.4).

Before a prompt is encoded by CLIP, the concept's rare trigger tokens are removed or replaced by a plain word, so the
metric asks "does the image show what the *words* say" rather than "does CLIP know the token ``whoo``":

1. each (key → value) row of an ordered replacement table is applied;
2. leading/trailing spaces and commas are stripped;
3. a leading ``of `` is removed;
4. whitespace runs collapse to one space;
5. ``, , `` becomes ``, ``.

``legacy=True`` reproduces the reference code bit for bit: plain substring replacement (it also hits substrings of
other words), and each prompt is treated as a file line *with its trailing newline*, which stops the trailing strip
of step 2 so a trailing comma survives (``whoo anime girl, toid outfit`` → ``anime girl,``).  The default
(``legacy=False``) matches keys on word boundaries and strips trailing commas too.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources

from ..errors import ConfigError

Row = tuple[str, str]


def paper_rows() -> tuple[Row, ...]:
    """The paper's replacement table (``lyco/data/eval/paper_text_table.json``), in order."""
    text = resources.files("lyco").joinpath("data/eval/paper_text_table.json").read_text(encoding="utf-8")
    return tuple((str(k), str(v)) for k, v in json.loads(text)["rows"])


def _word_pattern(key: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(key) + r"(?!\w)")


@dataclass(frozen=True)
class TextProcessor:
    """Callable prompt processor: ``TextProcessor(rows)(prompt) -> processed prompt``."""

    rows: tuple[Row, ...] = ()
    legacy: bool = False
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rows = tuple((str(k), str(v)) for k, v in self.rows)
        for k, _ in rows:
            if not k:
                raise ConfigError("text replacement table: a row has an empty key; remove it")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "_patterns", tuple(_word_pattern(k) for k, _ in rows))

    def replace(self, text: str) -> str:
        """Step 1 only: apply the replacement rows in order."""
        for (key, value), pat in zip(self.rows, self._patterns):
            if self.legacy:
                text = text.replace(key, value)
            else:
                text = pat.sub(value, text)
        return text

    def __call__(self, prompt: str) -> str:
        text = prompt
        if self.legacy and not text.endswith("\n"):
            text += "\n"          # the reference reads prompts as file lines, newline included
        text = self.replace(text)
        text = text.strip(" ,")
        if text.startswith("of "):
            text = text[3:]
        text = " ".join(text.split())
        text = text.replace(", , ", ", ")
        if not self.legacy:
            text = text.strip(" ,")
        return text

    def process(self, prompts: Iterable[str]) -> list[str]:
        return [self(p) for p in prompts]


def build_processor(table: str, concept_rows: Sequence[Row] = (), legacy: bool = False) -> TextProcessor:
    """``table``: ``"paper"`` (the paper's rows, then the concepts'), ``"concepts"`` (only the rows the evaluated
    concepts declare, by default "remove the trigger word"), or ``"none"``."""
    if table == "paper":
        rows = paper_rows() + tuple(concept_rows)
    elif table == "concepts":
        rows = tuple(concept_rows)
    elif table == "none":
        rows = ()
    else:
        raise ConfigError(f"metrics.text_table = {table!r}: expected 'paper', 'concepts' or 'none'")
    seen: set[Row] = set()
    unique = []
    for r in rows:
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return TextProcessor(tuple(unique), legacy=legacy)
