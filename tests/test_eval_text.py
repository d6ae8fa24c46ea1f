"""Prompt processing for text–image similarity (docs/EVALUATION.md §5.4) on the paper's examples."""
from __future__ import annotations

import pytest

from lyco.errors import ConfigError
from lyco.eval.textproc import TextProcessor, build_processor, paper_rows

LEGACY = build_processor("paper", legacy=True)
WORD = build_processor("paper", legacy=False)


@pytest.mark.parametrize("raw,expected", [
    ("whoo anime girl, toid outfit", "anime girl,"),                 # the newline keeps the trailing comma
    ("olis stuffed toy, pink robe", "bunny stuffed toy, pink robe"),
    ("pgs style", ""),                                               # styles lose trigger and class
    ("pgs style\n", ""),
    ("cae man, realistic", "man, realistic"),
    ("adl scene", "castle scene"),
    ("pgs style of a city skyline during sunset", "a city skyline during sunset"),   # leading "of " removed
    ("whoo anime girl, toid outfit, smile, looking at viewer", "anime girl, smile, looking at viewer"),   # ", , "
    ("waj stuffed toy", "waj stuffed toy"),                          # the table says 'wai': tortoise never replaced
    ("lunch with olis", "lobsterch with bunny"),                     # plain replace hits substrings
    ("  fck   man,  bald, 3d ", "man, bald, 3d"),
])
def test_paper_examples_legacy(raw, expected):
    assert LEGACY(raw) == expected


def test_word_boundary_variant():
    assert WORD("whoo anime girl, toid outfit") == "anime girl"     # no trailing comma
    assert WORD("lunch with olis") == "lunch with bunny"            # whole words only
    assert WORD("olis stuffed toy, pink robe") == "bunny stuffed toy, pink robe"
    assert WORD("pgs style") == ""


def test_table_is_the_papers():
    rows = paper_rows()
    assert rows[0] == ("olis", "bunny") and ("wai", "tortoise") in rows
    assert rows[-1] == ("sura style", "") and len(rows) == 32


def test_concept_rows_and_modes():
    p = build_processor("concepts", [("olis", "")])
    assert p("olis creature on a red background") == "creature on a red background"
    assert build_processor("none")("olis creature,") == "olis creature"
    assert TextProcessor((("olis", "teal ghost"),))("olis creature") == "teal ghost creature"
    with pytest.raises(ConfigError):
        build_processor("papers")
    with pytest.raises(ConfigError):
        TextProcessor((("", "x"),))
