"""Docs that match the code: every document a source comment cites exists, with the section it names."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("examples/**/*.toml")])
CITE = re.compile(r"(docs/[A-Za-z_]+\.md)(?:,? §(\d+(?:\.\d+)?))?")


def _citations() -> list[tuple[str, str, str]]:
    out = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for doc, section in CITE.findall(text):
            out.append((str(path.relative_to(ROOT)), doc, section))
        # a bare "§N" after a cited document in the same file refers to that document
        if CITE.search(text):
            doc = CITE.search(text).group(1)
            out += [(str(path.relative_to(ROOT)), doc, s) for s in re.findall(r"\(§(\d+(?:\.\d+)?)\)", text)]
    return out


CITATIONS = _citations()


def test_no_reference_to_a_spec_outside_the_repository():
    pattern = re.compile(r"\bspec §|\bthe spec\b|spec's order")
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES
                 if p.name != Path(__file__).name and pattern.search(p.read_text(encoding="utf-8"))]
    assert not offenders, f"cite docs/*.md sections instead of an external spec: {offenders}"


@pytest.mark.parametrize("source, doc, section", CITATIONS, ids=[f"{s}->{d}§{n}" for s, d, n in CITATIONS])
def test_cited_sections_exist(source, doc, section):
    text = (ROOT / doc).read_text(encoding="utf-8")
    if section:
        top = section.split(".")[0]
        assert re.search(rf"^## {top}\. ", text, re.M), f"{source} cites {doc} §{section}: no section {top}"
        if "." in section:
            assert f"**{section} " in text, f"{source} cites {doc} §{section}: no such subsection"


def test_there_are_citations():
    assert len({d for _, d, _ in CITATIONS}) >= 1 and len(CITATIONS) >= 15
