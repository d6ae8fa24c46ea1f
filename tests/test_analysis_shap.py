"""SHAP in ``lyco analyze``: CatBoost with the paper's settings, SHAP values that add up to the prediction, the
paper's subset (α = 1 and below-default capacity dropped, native capacity folded into algo), the leave-one-config-out
R², the seed spread, and a clean skip without catboost."""
from __future__ import annotations

import math
import sys
from collections import defaultdict

import numpy as np
import pytest

from analysis_fixtures import GRID, LEAVES, factor_rows, read_csv, study_rows
from lyco.analysis import AnalysisOptions, ShapSettings, analyze, explain

SMALL = [g for g in GRID if g[0] in ("101", "102", "103", "104", "105", "106", "121", "124", "125", "131", "133")]
FAST = ShapSettings(holdout=False, threads=1)


@pytest.fixture(scope="module")
def rows():
    keep = [leaf for leaf in LEAVES if leaf[0] == "character"]
    out = study_rows(SMALL, epochs=(10, 30))
    return [r for r in out if (r["category"], r["class"], r["subclass"]) in keep]


@pytest.fixture(scope="module")
def outcome(rows, tmp_path_factory):
    pytest.importorskip("catboost")
    return analyze(rows, factor_rows(SMALL), tmp_path_factory.mktemp("shap") / "out",
                   AnalysisOptions(report=False, shap_settings=FAST))


def test_paper_settings_are_the_default():
    pytest.importorskip("catboost")
    params = explain._regressor(ShapSettings()).get_params()
    assert (params["iterations"], params["learning_rate"], params["random_seed"], params["nan_mode"]) == \
        (300, 0.1, 123, "Min")
    assert ShapSettings().subset == "paper" and ShapSettings().holdout


def test_shap_values_add_up_and_paper_subset(outcome):
    models = outcome.shap
    assert [m.target for m in models] == ["imsim_alter", "imsim_trigger", "imsim_train", "textsim_alter",
                                          "vendi_trigger", "preservation_style"]
    for m in models:
        assert np.allclose(m.shap.sum(axis=1) + m.expected_value, m.prediction, atol=1e-9)
        assert m.r2_train == pytest.approx(1 - ((m.y - m.prediction) ** 2).sum() / ((m.y - m.y.mean()) ** 2).sum())
    d = models[0].design
    # scale is constant within each algorithm once the α = 1 variant is gone: it is not a feature
    assert d.features == ["algo", "preset", "epoch", "capacity", "lr_level"] and d.categorical == ["algo", "preset"]
    configs = {c.config for c in d.checkpoints}
    assert configs == {"101", "102", "103", "104", "106", "121", "124", "131", "133"}    # 105 (α = 1), 125 (f12) out
    assert len(d.checkpoints) == 9 * 2 * 2                                               # seeds are not averaged
    ic = d.features.index("capacity")
    native = [j for j, c in enumerate(d.checkpoints) if c.config in ("131", "133")]
    assert all(d.folded[j] for j in native) and not any(d.folded[j] for j in range(len(d.folded)) if j not in native)
    assert all(d.X[j][ic] == 2.0 for j in native)         # fitted as the most capacity (adapters: 0 and 1)
    assert np.all(models[0].shap[native, ic] == 0.0)      # ... and its SHAP value moved into algo


def test_shap_csvs_agree(outcome):
    summary = read_csv(outcome.files["shap"])
    values = read_csv(outcome.files["shap_values"])
    acc = defaultdict(list)
    for r in values:
        acc[(r["target"], r["feature"])].append(abs(float(r["shap"])))
        if r["feature"] == "capacity" and r["config"] in ("131", "133"):
            assert r["value"] == "nan"                     # native has no capacity of its own
    for r in summary:
        assert float(r["mean_abs_shap"]) == pytest.approx(np.mean(acc[(r["target"], r["feature"])]))
        assert r["n_rows"] == "36" and r["n_configs"] == "9" and r["n_seeds"] == "2" and r["r2_holdout"] == "nan"
        assert float(r["spread"]) >= 0
    for cat_target in {(r["category"], r["target"]) for r in summary}:
        assert (outcome.files["shap"].parent / f"shap/{cat_target[0]}-{cat_target[1]}.png").is_file()


def test_spread_is_the_std_over_per_seed_models(outcome):
    m = outcome.shap[0]
    d = explain.build_design(outcome.study.pool, outcome.study.factors, FAST)
    scores = {r.checkpoint: r.score for r in outcome.category_rows if r.column == m.column}
    per_seed = []
    for seed in ("1", "2"):
        rows = [i for i, c in enumerate(d.checkpoints) if c.seed == seed]
        shap, _, _ = explain._shap_values(d, rows, np.array([scores[d.checkpoints[i].name] for i in rows]), FAST)
        per_seed.append(np.abs(shap).mean(axis=0))
    want = np.std(per_seed, axis=0, ddof=1)
    assert [row["spread"] for row in m.summary] == pytest.approx(list(want))


def test_all_subset_keeps_every_config(outcome):
    d = explain.build_design(outcome.study.pool, outcome.study.factors, ShapSettings(subset="all"))
    assert {c.config for c in d.checkpoints} >= {"105", "125"} and "scale" in d.features
    ic = d.features.index("capacity")
    assert all(math.isnan(x[ic]) for x, c in zip(d.X, d.checkpoints) if c.config == "131")   # nan_mode Min
    assert not any(d.folded)


def test_holdout_r2_is_leave_one_config_out(monkeypatch):
    """With a stand-in model that predicts the training mean, the held-out R² has a closed form."""
    seen = []

    def mean_model(design, train, y, test, settings):
        seen.append({design.checkpoints[i].config for i in test})
        assert not seen[-1] & {design.checkpoints[i].config for i in train}     # the config is never seen
        return np.full(len(test), float(np.mean(y)))

    monkeypatch.setattr(explain, "_fit_predict", mean_model)
    cks = [explain.Checkpoint(f"{c}-{s}", c, s, "10") for c in ("a", "b", "c") for s in ("1", "2")]
    design = explain.Design(["x"], [], cks, [[float(i)] for i in range(6)], [False] * 6)
    y = np.array([0.1, 0.3, 0.5, 0.4, 0.9, 0.8])
    got = explain.holdout_r2(design, list(range(6)), y, ShapSettings())
    pred = np.array([np.mean(y[2:]), np.mean(y[2:]), np.mean(y[[0, 1, 4, 5]]), np.mean(y[[0, 1, 4, 5]]),
                     np.mean(y[:4]), np.mean(y[:4])])
    assert got == pytest.approx(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert sorted(map(sorted, seen)) == [["a"], ["b"], ["c"]]


def test_real_holdout_is_below_in_sample(outcome):
    m = outcome.shap[0]
    settings = ShapSettings(threads=1, iterations=60)
    d = explain.build_design(outcome.study.pool, outcome.study.factors, settings)
    scores = {r.checkpoint: r.score for r in outcome.category_rows if r.column == m.column}
    got = explain.fit_target(d, scores, m.category, m.target, m.column, settings)
    assert -1 < got.r2_holdout < got.r2_train <= 1


def test_without_catboost_everything_else_is_written(rows, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "catboost", None)          # import catboost -> ImportError
    got = analyze(rows, factor_rows(SMALL), tmp_path / "out", AnalysisOptions())
    assert got.shap == [] and "pip install 'lyco[analysis]'" in got.shap_skipped
    assert {"scores", "effects", "findings", "table1", "best", "factors", "report"} <= set(got.files)
    assert "shap" not in got.files and not (tmp_path / "out" / "shap.csv").exists()
    assert "lyco[analysis]" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
