"""``lyco analyze``'s report.html: self-contained, every number equal to the CSVs, and — in a real headless Chromium —
it renders and every image (plots, beeswarms, contact sheets) loads.

The browser test is skipped when no chromium is installed, except in CI (CI=1 or LYCO_REQUIRE_BROWSER=1), where
a missing browser is a failure (.ci/run installs Debian's ``chromium``)."""
from __future__ import annotations

import html.parser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import browser
from analysis_fixtures import GRID, factor_rows, read_csv, study_rows, write_csv
from lyco.analysis import AnalysisOptions, ShapSettings, analyze
from lyco.analysis.report import KEYS
from lyco.eval.report import KEY_FIELDS, fmt

SMALL = [g for g in GRID if g[0] in ("101", "102", "104", "106", "121", "124", "131", "133")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rows = study_rows(SMALL, epochs=(10, 30))
    results = write_csv(root / "results.csv", rows)
    factors = write_csv(root / "factors.csv", factor_rows(SMALL))
    # images.csv as lyco eval writes it: one tiny image per checkpoint for one leaf and prompt type
    images, cks = [], sorted({(r["checkpoint"], r["config"], r["seed"], r["epoch"]) for r in rows})
    (root / "img").mkdir()
    for i, (ck, config, seed, epoch) in enumerate(cks):
        path = root / "img" / f"{ck}.png"
        Image.fromarray(np.full((16, 16, 3), (i * 9) % 255, dtype=np.uint8)).save(path)
        images.append({"checkpoint": ck, "config": config, "seed": seed, "epoch": epoch, "category": "character",
                       "class": "olis", "subclass": "", "prompt_type": "alter", "k": 0, "image_seed": 1000,
                       "prompt": "olis creature on a beach", "path": f"img/{ck}.png"})
    write_csv(root / "images.csv", images)
    settings = ShapSettings(holdout=False, threads=1, iterations=50)
    outcome = analyze(results, factors, root / "out", AnalysisOptions(shap_settings=settings, thumb_size=24))
    return outcome


def csv_values(files: dict[str, Path]) -> dict[tuple[str, str, str], str]:
    """(table, data-key, field) -> the CSV's text, for every CSV the report cites."""
    out = {}
    for table, kind in (("scores", "scores"), ("effects", "effects"), ("findings", "findings"), ("shap", "shap"),
                        ("table1", "table1"), ("best", "best")):
        if kind not in files:
            continue
        fields = KEY_FIELDS if table == "scores" else KEYS[table]
        for row in read_csv(files[kind]):
            key = "|".join(row[k] for k in fields)
            for field, value in row.items():
                out[(table, key, field)] = value
    return out


def shown(value: str) -> str:
    """How the report prints a CSV value."""
    try:
        int(value)
        return value
    except ValueError:
        pass
    try:
        return fmt(float(value))
    except ValueError:
        return value


def check_cells(cells, files) -> int:
    truth = csv_values(files)
    for table, key, field, value, text in cells:
        assert (table, key, field) in truth, (table, key, field)
        assert value == truth[(table, key, field)], (table, key, field)
        assert text.strip() == shown(value), (table, key, field, text)
    return len(cells)


class Parsed(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.sources, self.ids, self._cur = [], [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        for attr in ("src", "href"):
            if attr in a:
                self.sources.append(a[attr])
        if "data-value" in a:
            self._cur = [a["data-table"], a["data-key"], a["data-field"], a["data-value"], ""]

    def handle_data(self, data):
        if self._cur is not None:
            self._cur[4] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cur is not None:
            self.cells.append(tuple(self._cur))
            self._cur = None


def test_report_is_self_contained_and_equals_the_csvs(report):
    p = Parsed()
    p.feed(report.files["report"].read_text(encoding="utf-8"))
    assert p.sources and all(s.startswith("data:image/png;base64,") for s in p.sources)   # nothing external
    assert {"findings", "table1", "best", "plots", "effects", "scores", "images", "factors"} <= set(p.ids)
    assert ("shap" in p.ids) and check_cells(p.cells, report.files) > 500
    tables = {c[0] for c in p.cells}
    assert tables == {"scores", "effects", "findings", "table1", "best"} | ({"shap"} if report.shap else set())
    thumbs = 8 * 2                                   # contact sheet: configs x epochs
    plots = 2 * 3 * 3                                # categories x factors with variants (preset, lr, capacity) x 3
    assert len(p.sources) == thumbs + plots + len(report.shap)


def test_report_in_a_headless_browser(report):
    if browser.find_chromium() is None:
        if browser.required():
            pytest.fail("chromium is required here (CI=1 or LYCO_REQUIRE_BROWSER=1) but not installed: "
                        "apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI runs this test")
    with browser.Browser() as b:
        b.open(report.files["report"])
        got = b.evaluate("""(() => {
            const imgs = [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]);
            const cells = [...document.querySelectorAll('[data-value]')].map(e =>
                [e.dataset.table, e.dataset.key, e.dataset.field, e.dataset.value, e.textContent]);
            const sections = [...document.querySelectorAll('h2')].map(h => h.id);
            return {imgs, cells, sections, height: document.body.scrollHeight, title: document.title};
        })()""")
        png = b.screenshot()
    assert got["title"] == "lyco analysis" and got["height"] > 2000
    assert got["sections"][:3] == ["findings", "table1", "best"] and "images" in got["sections"]
    p = Parsed()
    p.feed(report.files["report"].read_text(encoding="utf-8"))
    assert len(got["imgs"]) == len(p.sources) > 10
    assert all(complete and w > 0 and h > 0 for complete, w, h in got["imgs"])     # every image decoded
    assert check_cells([tuple(c) for c in got["cells"]], report.files) == len(p.cells)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_contact_sheet_picks_one_image_per_config_and_epoch(report):
    from lyco.analysis.images import contact_sheets
    sheets = contact_sheets(report.study.images, report.study.pool, report.study.factors)
    (s,) = sheets
    assert (s.category, s.leaf, s.prompt_type, s.k, s.seed, s.epochs) == \
        ("character", ("character", "olis", ""), "alter", 0, "1", ["10", "30"])
    assert list(s.cells) == [c for c in report.study.factors.configs]
    assert s.cells["101"]["30"].name == "101-s1-e30.png"
