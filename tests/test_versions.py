"""The declared lower bounds are the versions the minimum-versions environment tests (``make test-min``)."""
from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PINS_FILE = ROOT / ".ci" / "min-versions.txt"


def declared() -> dict[str, Version]:
    """name -> lower bound of lyco's runtime dependencies (core + the ``sd`` extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for req in project["dependencies"] + project["optional-dependencies"]["sd"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", req.strip())
        assert m, f"pyproject.toml: {req!r} has no plain >= lower bound"
        out[m.group(1).lower()] = Version(m.group(2))
    return out


def pins() -> dict[str, Version]:
    out = {}
    for line in PINS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, v = line.partition("==")
            out[name.strip().lower()] = Version(v.strip())
    return out


def test_every_lower_bound_is_pinned_in_the_minimum_environment():
    d, p = declared(), pins()
    assert sorted(set(d) - set(p)) == []
    assert {k: str(v) for k, v in d.items() if v != p[k]} == {}  # 0.30 == 0.30.0


@pytest.mark.skipif(os.environ.get("LYCO_TEST_MIN") != "1", reason="only in the minimum-versions venv (make test-min)")
def test_installed_versions_are_the_minimums():
    installed = {k: Version(metadata.version(k)) for k in pins()}
    wrong = {k: f"{installed[k]} (pinned {v})" for k, v in pins().items() if installed[k].release != v.release}
    assert not wrong
