"""``lyco eval`` end to end on a tiny random SD pipeline with an adapter whose effect is known.

The concept's "training images" are exactly what the adapted model draws for the trigger prompt with the
evaluation's seeds 1000+k (made through lyco's own generation path): so the adapter's ``<trigger>`` images *are*
the dataset (SCD 0, higher image similarity than the base model), and a multiplier of 0 *is* the base model (style
loss 0, identical numbers).  The report is parsed: images present as data URIs, every number equal to the CSV.
"""
from __future__ import annotations

import csv
import html.parser
import logging
import math
from pathlib import Path

import pytest

from eval_fixtures import GEN, TRIGGER_PROMPT, make_world, to_toml
from lyco.eval import evaluate, load_eval_config
from lyco.eval.config import EvalConfig
from lyco.eval.report import fmt, row_key


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("evalworld"), GEN)


def config(world, out: Path, **over) -> EvalConfig:
    data = dict(
        base=world["model"], out=str(out),
        checkpoints=[{"name": "lora", "adapter": world["adapter"], "multiplier": [1.0, 0.0], "config": "lora",
                      "seed": 23, "epoch": 10}],
        concepts=[
            {"category": "character", "class": "olis", "descriptor": TRIGGER_PROMPT, "dataset": world["data"],
             "prompts": {"alter": "plushie"}},
            {"category": "styles", "class": "pgs", "descriptor": "pgs style", "dataset": world["data"],
             "prompts": {"alter": "style", "train": "none", "agnostic": "none", "agnostic_class": "none"}},
        ],
        generation=GEN,
        backbones={"dino": world["dino"], "clip": world["clip"], "vgg": world["vgg"], "image_size": 32},
        metrics={"dataset_resize": ["letterbox", "resize"]},
        report={"grid_images": 3, "thumb_size": 32, "title": "tiny eval"},
    )
    data.update(over)
    return EvalConfig(**data)


class _Cells(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.images, self._cur = [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "td" and "data-key" in a:
            self._cur = [a["data-key"], a["data-field"], a["data-value"], ""]

    def handle_data(self, data):
        if self._cur is not None:
            self._cur[3] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cur is not None:
            self.cells.append(tuple(self._cur))
            self._cur = None


@pytest.fixture(scope="module")
def outcome(world):
    return evaluate(config(world, world["root"] / "out"), progress=False)


def _value(outcome, checkpoint, metric, ptype, leaf="olis", encoder=None, resize=None):
    rows = [r for r in outcome.rows if r.checkpoint == checkpoint and r.metric == metric and r.prompt_type == ptype
            and r.class_ == leaf and (encoder is None or r.encoder == encoder)
            and (resize is None or r.resize == resize)]
    assert len(rows) == 1, (checkpoint, metric, ptype, rows)
    return rows[0].value


def test_adapter_fidelity_and_known_effects(outcome):
    names = [v.name for v in outcome.plan.variants]
    assert names == ["base", "lora@1", "lora@0"]
    # the adapter's trigger images are the dataset (up to batch-composition rounding): SCD ~0, far below the base
    # model's, and a higher image similarity
    assert _value(outcome, "lora@1", "scd", "trigger", resize="letterbox") < 1e-4
    assert (_value(outcome, "base", "scd", "trigger", resize="letterbox")
            > 20 * _value(outcome, "lora@1", "scd", "trigger", resize="letterbox"))
    assert (_value(outcome, "lora@1", "image_similarity", "trigger", resize="letterbox")
            > _value(outcome, "base", "image_similarity", "trigger", resize="letterbox"))
    # multiplier 0 is the base model: same images, zero style loss, identical numbers
    assert _value(outcome, "lora@0", "style_loss", "style") == 0.0
    assert _value(outcome, "lora@0", "preservation_similarity", "agnostic") == pytest.approx(1.0)
    assert _value(outcome, "lora@1", "style_loss", "style") > 0
    by = lambda ck: {(r.class_, r.metric, r.encoder, r.resize, r.prompt_type): r.value      # noqa: E731
                     for r in outcome.rows if r.checkpoint == ck}
    base, off = by("base"), by("lora@0")
    assert base and all(off[k] == v for k, v in base.items())
    # which metrics exist where
    metrics = {(r.class_, r.metric, r.prompt_type) for r in outcome.rows}
    assert ("pgs", "style_similarity", "trigger") in metrics and ("olis", "style_similarity", "trigger") not in metrics
    assert ("pgs", "style_loss", "style") not in metrics                       # no <style> set for style leaves
    assert {("olis", "text_similarity", t) for t in ("train", "trigger", "alter")} <= metrics
    assert {("olis", "vendi", t) for t in ("train", "trigger", "alter")} <= metrics
    # rank pool = the two checkpoints; base keeps raw values only
    assert all(math.isnan(r.score) for r in outcome.rows if r.checkpoint == "base")
    scored = [r.score for r in outcome.rows
              if r.checkpoint != "base" and r.metric == "scd" and r.prompt_type == "trigger" and r.class_ == "olis"]
    assert sorted(scored) == [0.0, 0.0, 1.0, 1.0]                              # two resize modes x two checkpoints
    levels = {r.level for r in outcome.aggregates}
    assert levels == {"class", "category"}


def test_report_matches_csv(outcome):
    files = outcome.files
    assert set(files) == {"csv", "json", "manifest", "images", "html"}
    with open(files["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["level", "category", "class", "subclass"]
    csv_by_key = {row_key(r): r for r in rows}
    assert len(csv_by_key) == len(rows)
    parser = _Cells()
    parser.feed(Path(files["html"]).read_text(encoding="utf-8"))
    assert len(parser.cells) > 50
    for key, field, value, text in parser.cells:
        expected = float(csv_by_key[key][field])
        got = float(value)
        assert (math.isnan(got) and math.isnan(expected)) or got == expected, key
        assert text == fmt(expected)
    pngs = [s for s in parser.images if s.startswith("data:image/png;base64,")]
    assert len(pngs) == len(parser.images)                                   # self-contained
    # grids: 3 images per prompt set and variant; dataset rows; plus the scatter plots
    n_sets = sum(len(leaf.prompt_sets) for leaf in outcome.plan.leaves)
    assert len(pngs) >= n_sets * 3 * 3
    html_text = Path(files["html"]).read_text(encoding="utf-8")
    assert "Trade-offs" in html_text and "lora@1" in html_text and "seed 1000" in html_text
    import json
    manifest = json.loads(Path(files["manifest"]).read_text())
    assert manifest["settings"]["sampler"] == "ddim" and manifest["seeds"]["first"] == 1000
    assert manifest["vgg_taps"] == "relu"


def test_images_csv_feeds_lyco_analyze(outcome, tmp_path):
    """images.csv lists the first images of every set; ``lyco analyze`` reads results.csv and images.csv as they are."""
    from lyco.analysis import AnalysisOptions, analyze
    with open(outcome.files["images"], newline="") as f:
        images = list(csv.DictReader(f))
    sets = {(r["checkpoint"], r["class"], r["prompt_type"]) for r in images}
    assert len(sets) == len(outcome.plan.sets) and all(Path(r["path"]).is_file() for r in images)
    trig = [r for r in images if (r["checkpoint"], r["class"], r["prompt_type"]) == ("lora@1", "olis", "trigger")]
    assert [(r["k"], r["image_seed"], r["config"], r["seed"], r["epoch"]) for r in trig] == \
        [(str(k), str(1000 + k), "lora@1", "23", "10") for k in range(3)]
    got = analyze(outcome.files["csv"], None, tmp_path / "analysis", AnalysisOptions(shap=False, thumb_size=16))
    assert {c.name for c in got.study.pool} == {"lora@1", "lora@0"}                # the base model is not ranked
    scd = {r.checkpoint: r.score for r in got.scores if r.level == "leaf" and r.class_ == "olis"
           and r.metric == "scd" and r.prompt_type == "trigger" and r.resize == "letterbox"}
    assert scd["lora@1"] == 1.0 and scd["lora@0"] == 0.0                           # the adapter's images are the data
    page = (tmp_path / "analysis" / "report.html").read_text(encoding="utf-8")
    assert "Contact sheets" in page and page.count("alt=\"lora@") == 2 * 2            # 2 configs x 2 categories


def test_rerun_uses_cache_and_gives_same_numbers(world, outcome, monkeypatch, caplog):
    import lyco.eval.generate as G

    def no_generation(*a, **k):
        raise AssertionError("everything is cached")
    monkeypatch.setattr(G, "generate_jobs", no_generation)
    with caplog.at_level(logging.INFO, logger="lyco"):
        again = evaluate(config(world, world["root"] / "out"), progress=False, report=False)
    assert "0 to generate" in caplog.text
    assert _same(again.rows, outcome.rows) and _same(again.aggregates, outcome.aggregates)


def _same(a, b) -> bool:
    eq = lambda x, y: (math.isnan(x) and math.isnan(y)) or x == y      # noqa: E731
    return len(a) == len(b) and all(row_key(r) == row_key(q) and eq(r.value, q.value) and eq(r.score, q.score)
                                    for r, q in zip(a, b))


def test_cli_dry_run_and_determinism_from_scratch(world, tmp_path, capsys):
    """Same config, fresh caches, one run through the API and one through ``lyco eval``: same numbers."""
    from lyco.cli import main

    small = dict(checkpoints=[{"name": "lora", "adapter": world["adapter"]}],
                 concepts=[{"category": "character", "class": "olis", "descriptor": TRIGGER_PROMPT,
                            "dataset": world["data"], "prompts": {"train": "none", "agnostic": "none",
                                                                  "agnostic_class": "none"}}],
                 generation={**GEN, "images": 2}, metrics={"names": ["image_similarity", "vendi", "style_loss"]},
                 report={"grid_images": 1, "plots": False})
    first = evaluate(config(world, tmp_path / "a", **small), progress=False)
    toml = tmp_path / "eval.toml"
    # the CLI run keeps no VGG Grams on disk (they are gathered in memory instead): same numbers
    toml.write_text(to_toml(config(world, tmp_path / "unused", **{
        **small, "metrics": {**small["metrics"], "cache_gram": False}})))
    assert main(["eval", str(toml), "--dry-run"]) == 0
    assert "8 images (8 to generate)" in capsys.readouterr().out
    assert main(["eval", str(toml), "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert (tmp_path / "b" / "report.html").is_file()
    kinds = lambda root: {p.name.split("-")[0] for p in (root / "cache" / "features").iterdir()}  # noqa: E731
    assert kinds(tmp_path / "a") == {"dino", "vgg"} and kinds(tmp_path / "b") == {"dino"}
    with open(first.files["csv"]) as fa, open(tmp_path / "b" / "results.csv") as fb:
        assert fa.read() == fb.read()
    assert load_eval_config(toml).out == str(tmp_path / "unused")
