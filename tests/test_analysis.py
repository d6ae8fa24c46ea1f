"""``lyco analyze``: exact numbers on a constructed table, factor coding from the grid, effects, findings verdicts,
bad inputs (errors naming the file and column), outputs that never overwrite."""
from __future__ import annotations

import math

import pytest

from analysis_fixtures import read_csv, write_csv
from lyco.analysis import AnalysisOptions, analyze
from lyco.analysis.effects import Comparison, Effect, comparisons, mean_stderr
from lyco.analysis.factors import code_factors
from lyco.analysis.findings import CHECKS, judge
from lyco.analysis.table import Checkpoint, load_factor_rows
from lyco.cli import main as lyco_main
from lyco.errors import ConfigError

NO_SHAP = AnalysisOptions(shap=False, report=False)
IMSIM = ("image_similarity", "dino", "letterbox", "trigger")

# the constructed table: configs A (default) and B (higher lr), seeds 1 and 2, epochs 10 and 20
BUNNY = {("A", "1", "10"): 0.1, ("A", "2", "10"): 0.2, ("B", "1", "10"): 0.5, ("B", "2", "10"): 0.6,
         ("A", "1", "20"): 0.3, ("A", "2", "20"): 0.3, ("B", "1", "20"): 0.7, ("B", "2", "20"): 0.8}
# ranks over the 8 checkpoints (the tie 0.3/0.3 shares 3.5): score = (rank - 1) / 7
S = {("A", "1", "10"): 0 / 7, ("A", "2", "10"): 1 / 7, ("A", "1", "20"): 2.5 / 7, ("A", "2", "20"): 2.5 / 7,
     ("B", "1", "10"): 4 / 7, ("B", "2", "10"): 5 / 7, ("B", "1", "20"): 6 / 7, ("B", "2", "20"): 7 / 7}


def constructed_rows(with_base=True):
    rows = []

    def add(ck, config, seed, epoch, cls, sub, metric, value, enc="dino", resize="letterbox"):
        rows.append({"level": "leaf", "category": "toys", "class": cls, "subclass": sub, "checkpoint": ck,
                     "config": config, "seed": seed, "epoch": epoch, "metric": metric, "encoder": enc,
                     "resize": resize, "prompt_type": "trigger", "value": value})

    for (config, seed, epoch), v in BUNNY.items():
        ck = f"{config}-s{seed}-e{epoch}"
        add(ck, config, seed, epoch, "bunny", "", "image_similarity", v)
        add(ck, config, seed, epoch, "panda", "a", "image_similarity", v)
        add(ck, config, seed, epoch, "panda", "b", "image_similarity", 0.4)      # all tied: score 0.5
        add(ck, config, seed, epoch, "bunny", "", "scd", v)                        # a distance: reversed
    if with_base:
        add("base", "base", "", "", "bunny", "", "image_similarity", 0.9)
    # eval also writes class/category rows: the analysis recomputes them
    rows.append({**rows[0], "level": "class", "value": 123.0})
    return rows


FACTORS = [{"config": "A", "algo": "lora", "lr": "5e-4", "dim": "8", "alpha": "4"},
           {"config": "B", "algo": "lora", "lr": "0.001", "dim": "8", "alpha": "4"}]


@pytest.fixture()
def study(tmp_path):
    res = write_csv(tmp_path / "results.csv", constructed_rows())
    fac = write_csv(tmp_path / "factors.csv", FACTORS)
    return res, fac


def _num(s):
    return float(s)


def test_scores_exact_ranks_ties_directions_and_aggregation(study, tmp_path):
    res, fac = study
    out = analyze(res, fac, tmp_path / "out", NO_SHAP)
    rows = read_csv(out.files["scores"])
    leaf = {(r["checkpoint"], r["class"], r["subclass"], r["metric"]): r for r in rows if r["level"] == "leaf"}
    for (config, seed, epoch), s in S.items():
        ck = f"{config}-s{seed}-e{epoch}"
        assert _num(leaf[(ck, "bunny", "", "image_similarity")]["score"]) == pytest.approx(s, abs=1e-15)
        assert _num(leaf[(ck, "panda", "b", "image_similarity")]["score"]) == 0.5
        assert _num(leaf[(ck, "bunny", "", "scd")]["score"]) == pytest.approx(1 - s, abs=1e-15)
        # panda = mean of its subclasses; toys = mean of the classes bunny and panda (unweighted)
        cls = {r["class"]: r for r in rows if r["level"] == "class" and r["checkpoint"] == ck
               and r["metric"] == "image_similarity"}
        assert _num(cls["panda"]["score"]) == pytest.approx((s + 0.5) / 2, abs=1e-15)
        cat = [r for r in rows
               if r["level"] == "category" and r["checkpoint"] == ck and r["metric"] == "image_similarity"]
        assert len(cat) == 1 and _num(cat[0]["score"]) == pytest.approx(0.75 * s + 0.125, abs=1e-15)
        assert _num(cat[0]["value"]) == pytest.approx((BUNNY[(config, seed, epoch)] * 1.5 + 0.4 / 2) / 2)
    base = leaf[("base", "bunny", "", "image_similarity")]
    assert base["score"] == "nan" and _num(base["value"]) == 0.9      # the base model is not in the pool
    assert {r["level"] for r in rows} == {"leaf", "class", "category"}
    assert not any(r["value"] == "123.0" for r in rows)               # input aggregates are recomputed
    assert list(rows[0]) == ["level", "category", "class", "subclass", "checkpoint", "config", "seed", "epoch",
                             "metric", "encoder", "resize", "prompt_type", "value", "score"]


def test_include_base_ranks_it_and_exclude_drops_configs(study, tmp_path):
    res, fac = study
    got = analyze(res, fac, None, AnalysisOptions(shap=False, include_base=True))
    base = [r for r in got.scores if r.checkpoint == "base" and r.level == "leaf"]
    assert base[0].score == 1.0                                         # 0.9 is the best of 9 values
    got = analyze(res, None, None, AnalysisOptions(shap=False, exclude=("B",)))
    scored = {r.checkpoint for r in got.scores if r.level == "leaf" and not math.isnan(r.score)}
    assert scored == {f"A-s{s}-e{e}" for s in "12" for e in ("10", "20")}
    a = {r.checkpoint: r.score for r in got.scores if r.level == "leaf" and r.class_ == "bunny"
         and r.metric == "image_similarity"}
    assert a["A-s1-e10"] == 0.0 and a["A-s2-e10"] == 1 / 3 and a["A-s1-e20"] == pytest.approx(2.5 / 3)


def test_effects_exact(study, tmp_path):
    res, fac = study
    out = analyze(res, fac, tmp_path / "out", NO_SHAP)
    rows = read_csv(out.files["effects"])
    assert list(rows[0]) == ["category", "algo", "factor", "from", "to", "config_from", "config_to", "metric",
                             "encoder", "resize", "prompt_type", "delta", "stderr", "n"]
    got = {(r["factor"], r["config_from"], r["from"], r["to"], r["metric"]): r for r in rows}
    # lr 5e-4 -> 1e-3 (A -> B), matched over (seed, epoch); category score = 0.75 s + 0.125
    lr = got[("lr", "A", "0.0005", "0.001", "image_similarity")]
    d = [0.75 * (S[("B", s, e)] - S[("A", s, e)]) for s in "12" for e in ("10", "20")]
    mean = sum(d) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 3) / 2
    assert (lr["algo"], lr["config_to"], lr["n"]) == ("lora", "B", "4")
    assert _num(lr["delta"]) == pytest.approx(3 / 7) and _num(lr["delta"]) == pytest.approx(mean)
    assert _num(lr["stderr"]) == pytest.approx(se) and se == pytest.approx(0.75 * math.sqrt(0.5 / 3) / 7 / 2)
    scd = got[("lr", "A", "0.0005", "0.001", "scd")]
    assert _num(scd["delta"]) == pytest.approx(-4 / 7)                 # the distance's score falls
    # epochs 10 -> 20 of A, matched over seeds: s-differences 2.5/7 and 1.5/7
    ep = got[("epoch", "A", "10", "20", "image_similarity")]
    assert ep["config_to"] == "A" and ep["n"] == "2"
    assert _num(ep["delta"]) == pytest.approx(0.75 * 2 / 7)
    assert _num(ep["stderr"]) == pytest.approx(0.75 * (math.sqrt(0.5) / 7) / math.sqrt(2))
    epb = got[("epoch", "B", "10", "20", "image_similarity")]
    assert _num(epb["delta"]) == pytest.approx(0.75 * 2 / 7) and _num(epb["stderr"]) == pytest.approx(0, abs=1e-15)
    assert len(rows) == 3 * 2                                            # (lr, epoch A, epoch B) x 2 metrics
    # findings: F2 and F1 fidelity agree in toys (only ImSim(trigger) is there), the rest has no data
    f = {(r["check"], r["category"]): r for r in read_csv(out.files["findings"])}
    assert f[("F2 fidelity", "toys")]["verdict"] == "agree" and f[("F2 fidelity", "toys")]["n_effects"] == "1"
    f1 = f[("F1 fidelity", "toys")]
    assert f1["verdict"] == "agree" and f1["n_agree"] == "2" and f1["n"] == "2"     # units: (seed, epoch 10)
    assert _num(f1["delta"]) == pytest.approx(0.75 * 2 / 7) and _num(f1["stderr"]) == pytest.approx(0.75 * 0.25 / 7)
    assert f[("F1 fidelity", "all")]["verdict"] == "agree"
    assert f[("F5 capacity fidelity", "toys")]["verdict"] == "no data"
    assert "A epoch 10→20 image_similarity(trigger): agree" in f[("F1 fidelity", "toys")]["effects"]


def test_without_factors_only_epochs(study):
    res, _ = study
    got = analyze(res, None, None, NO_SHAP)
    assert {e.factor for e in got.effects} == {"epoch"}
    assert any("no factors table" in n for n in got.notes)
    assert got.table1 == [] and got.shap == []


# ------------------------------------------------------------------------------------------------ factors
PAPER = [  # config, algo, preset, lr, dim, alpha, factor (docs/ANALYSIS.md §2.1)
    ("1001", "lora", "attn-mlp", "5e-4", "8", "4", ""), ("1002", "lora", "attn-mlp", "5e-4", "32", "16", ""),
    ("1003", "lora", "attn-mlp", "5e-4", "32", "1", ""), ("1004", "lora", "full", "5e-4", "8", "4", ""),
    ("1005", "lora", "attn-only", "5e-4", "8", "4", ""), ("1006", "lora", "attn-mlp", "1e-4", "8", "4", ""),
    ("1008", "lora", "attn-mlp", "1e-3", "8", "4", ""),
    ("1011", "loha", "attn-mlp", "5e-4", "4", "2", ""), ("1012", "loha", "attn-mlp", "5e-4", "16", "8", ""),
    ("1013", "loha", "attn-mlp", "5e-4", "16", "1", ""), ("1014", "loha", "full", "5e-4", "4", "2", ""),
    ("1015", "loha", "attn-only", "5e-4", "4", "2", ""), ("1016", "loha", "attn-mlp", "1e-3", "4", "2", ""),
    ("1018", "loha", "attn-mlp", "1e-4", "4", "2", ""),
    ("1021", "lokr", "attn-mlp", "5e-4", "10000", "1", "8"), ("1022", "lokr", "attn-mlp", "5e-4", "10000", "1", "4"),
    ("1023", "lokr", "attn-mlp", "5e-4", "10000", "1", "12"), ("1024", "lokr", "full", "5e-4", "10000", "1", "8"),
    ("1025", "lokr", "attn-only", "5e-4", "10000", "1", "8"), ("1026", "lokr", "attn-mlp", "1e-3", "10000", "1", "8"),
    ("1028", "lokr", "attn-mlp", "1e-4", "10000", "1", "8"),
    ("1031", "full", "attn-mlp", "1e-6", "", "", ""), ("1032", "full", "full", "1e-6", "", "", ""),
    ("1033", "full", "attn-only", "1e-6", "", "", ""), ("1034", "full", "attn-mlp", "5e-6", "", "", ""),
    ("1035", "full", "attn-mlp", "5e-7", "", "", ""),
]


def paper_factors(extra=None):
    cols = ("config", "algo", "preset", "lr", "dim", "alpha", "factor")
    return load_factor_rows([dict(zip(cols, row)) | (extra or {}).get(row[0], {}) for row in PAPER])


def test_paper_grid_coding_derived_from_the_grid():
    f = code_factors(paper_factors())
    assert dict(f.defaults) == {"lora": "1001", "loha": "1011", "lokr": "1021", "full": "1031"}
    assert f.compared == ("preset", "lr", "capacity", "scale")
    assert f.derived == ("lr_level", "capacity", "scale")
    lvl = {c: f.get(c, "lr_level") for c in f.configs}
    assert [lvl[c] for c in ("1006", "1001", "1008", "1018", "1016", "1028", "1026", "1035", "1031", "1034")] == \
        ["-1", "0", "1", "-1", "1", "-1", "1", "-1", "0", "1"]
    cap = {c: f.get(c, "capacity") for c in f.configs}
    assert [cap[c] for c in ("1001", "1002", "1003", "1011", "1012", "1023", "1021", "1022", "1031")] == \
        ["0", "1", "1", "0", "1", "-1", "0", "1", ""]
    assert f.get("1001", "scale") == "0.5" and f.get("1003", "scale") == "0.03125"
    assert f.get("1013", "scale") == "0.0625"
    assert f.get("1031", "scale") == "" and f.get("1001", "lr") == "0.0005"
    pairs = {(c.config_from, c.config_to, c.factor, c.from_, c.to)
             for c in comparisons(f, [Checkpoint(c, c, "", "") for c in f.configs]) if c.algo == "lora"}
    assert pairs == {("1001", "1002", "capacity", "0", "1"), ("1003", "1002", "scale", "0.03125", "0.5"),
                     ("1005", "1001", "preset", "attn-only", "attn-mlp"),
                     ("1001", "1004", "preset", "attn-mlp", "full"),
                     ("1005", "1004", "preset", "attn-only", "full"), ("1006", "1001", "lr", "0.0001", "0.0005"),
                     ("1001", "1008", "lr", "0.0005", "0.001"), ("1006", "1008", "lr", "0.0001", "0.001")}
    algo = [(c.from_, c.to) for c in comparisons(f, [Checkpoint(c, c, "", "") for c in f.configs])
            if c.factor == "algo"]
    assert algo == [("full", "loha"), ("full", "lokr"), ("full", "lora"), ("loha", "lokr"), ("loha", "lora"),
                    ("lokr", "lora")]
    assert f.variant_factor("1001") == "" and f.variant_factor("1002") == "capacity"
    assert f.variant_factor("1003") is None                               # capacity and scale both change


def test_explicit_default_column_and_given_levels():
    raw = paper_factors({"1002": {"default": "yes"}, "1011": {"default": "1"}, "1021": {"default": "true"},
                         "1031": {"default": "default"}})
    f = code_factors(raw)
    assert f.defaults["lora"] == "1002" and f.get("1001", "capacity") == "-1" and f.get("1002", "capacity") == "0"
    raw = load_factor_rows([{"config": "a", "algo": "x", "capacity": "1", "lr_level": "2"},
                            {"config": "b", "algo": "x", "capacity": "2", "lr_level": "2"}])
    f = code_factors(raw)
    assert f.compared == ("capacity", "lr_level") and f.derived == ()
    with pytest.raises(ConfigError, match="marks 2 configs of algorithm 'lora'"):
        code_factors(paper_factors({"1001": {"default": "1"}, "1002": {"default": "1"}}))


def test_lokr_factor_minus_one_is_smallest_capacity():
    raw = load_factor_rows([{"config": c, "algo": "lokr", "dim": "10000", "factor": f}
                            for c, f in (("a", "8"), ("b", "8"), ("c", "-1"), ("d", "4"))])
    f = code_factors(raw)
    assert [f.get(c, "capacity") for c in "abcd"] == ["0", "0", "-1", "1"]


# ------------------------------------------------------------------------------------------------ findings
def _effect(factor, frm, to, diffs, cat="toys", column=IMSIM, algo="lora"):
    """An effect with matched differences at units (seed '1', epoch '10'), (seed '2', epoch '10'), …"""
    keyed = tuple(((str(i + 1), "10"), d) for i, d in enumerate(diffs))
    mean, se = mean_stderr(diffs)
    return Effect(cat, Comparison(algo, factor, frm, to, "x", "y"), column, mean, se, len(diffs), keyed)


TEXT = ("text_similarity", "clip", "", "alter")
TARGETS = {"imsim_trigger": IMSIM, "textsim_alter": TEXT}
UP, DOWN = [0.3, 0.31, 0.29], [-0.3, -0.31, -0.29]


@pytest.mark.parametrize("effects, check, verdict", [
    ([_effect("lr", "1", "2", UP)], "F2 fidelity", "agree"),
    ([_effect("lr", "1", "2", DOWN)], "F2 fidelity", "disagree"),
    ([_effect("lr", "1", "2", [0.3, -0.1, 0.1])], "F2 fidelity", "not significant"),   # |delta| within 2 stderr
    ([_effect("lr", "1", "2", [0.3])], "F2 fidelity", "not significant"),               # one unit: no stderr
    ([_effect("lr", "1", "2", DOWN, column=TEXT)], "F2 controllability", "agree"),
    ([_effect("lr", "1", "2", UP), _effect("lr", "2", "3", DOWN)], "F2 fidelity", "not significant"),
    ([_effect("lr", "1", "2", UP), _effect("lr", "2", "3", UP), _effect("lr", "1", "3", DOWN)], "F2 fidelity",
     "agree"),
    ([_effect("preset", "attn-only", "attn-mlp", UP)], "F4 attn-only fidelity", "agree"),
    ([_effect("preset", "attn-only", "full", DOWN, column=TEXT)], "F4 attn-only controllability", "agree"),
    ([_effect("preset", "attn-mlp", "full", [0.05, -0.05, 0.0])], "F4 conv fidelity", "agree"),   # no change
    ([_effect("preset", "attn-mlp", "full", UP)], "F4 conv fidelity", "disagree"),
    ([_effect("capacity", "0", "1", UP)], "F5 capacity fidelity", "agree"),
    ([_effect("scale", "0.03125", "0.5", DOWN)], "F5 scale fidelity", "disagree"),
    ([_effect("epoch", "10", "30", UP)], "F2 fidelity", "no data"),
])
def test_findings_verdicts(effects, check, verdict):
    got = {(v.check.name, v.category): v for v in judge(effects, TARGETS, ["toys"])}
    assert got[(check, "toys")].verdict == verdict


def test_findings_pool_effects_per_matched_unit():
    """Two lr effects: per (seed, epoch) the mean of their differences, then mean ± stderr over the units."""
    e1 = Effect("toys", Comparison("lora", "lr", "1", "2", "a", "b"), IMSIM, 0.3, 0.1, 2,
                ((("1", "10"), 0.2), (("2", "10"), 0.4)))
    e2 = Effect("toys", Comparison("lora", "lr", "2", "3", "b", "c"), IMSIM, 0.1, 0.1, 2,
                ((("1", "10"), 0.0), (("2", "10"), 0.2)))
    v = next(v for v in judge([e1, e2], TARGETS, ["toys"]) if v.check.name == "F2 fidelity" and v.category == "toys")
    assert (v.delta, v.n) == (pytest.approx(0.2), 2) and v.stderr == pytest.approx(0.1)   # units 0.1 and 0.3
    assert v.verdict == "not significant"                                                  # 0.2 is not > 2 x 0.1
    d = v.as_dict()
    assert d["n_effects"] == 2 and d["n_agree"] == 1 and d["n_not_significant"] == 1        # each on its own
    assert d["effects"] == ("a→b (lr 1→2) image_similarity(trigger): agree; "
                            "b→c (lr 2→3) image_similarity(trigger): not significant")


def test_f3_algorithm_order_adjacent_pairs_and_overall():
    # fidelity lokr > lora > loha > native; effects run from the alphabetically first algorithm to the second
    eff = [_effect("algo", a, b, [d, d + 0.01, d - 0.01], cat=cat, algo="")
           for cat in ("toys", "scenes")
           for a, b, d in (("lokr", "lora", -0.2), ("loha", "lora", 0.2), ("full", "loha", 0.2),
                           ("full", "lokr", -0.5))]   # full-lokr is not adjacent: ignored
    eff.append(_effect("algo", "lokr", "lora", DOWN, column=TEXT, algo=""))        # controllability: lora > lokr
    got = {(v.check.name, v.category): v for v in judge(eff, TARGETS, ["toys", "scenes"])}
    v = got[("F3 fidelity", "toys")]
    assert v.verdict == "agree" and v.as_dict()["n_effects"] == 3 and v.delta == pytest.approx(0.2)
    assert got[("F3 controllability", "toys")].verdict == "disagree"
    assert got[("F3 controllability", "scenes")].verdict == "no data"
    assert got[("F3 fidelity", "all")].verdict == "agree" and got[("F3 fidelity", "all")].as_dict()["n_agree"] == 2
    assert got[("F3 controllability", "all")].verdict == "disagree"                 # the only category with data
    assert {c.finding for c in CHECKS} == {"F1", "F2", "F3", "F4", "F5"}


@pytest.mark.parametrize("verdicts, want", [
    (["agree", "agree", "disagree"], "agree"), (["agree", "disagree", "not significant"], "mixed"),
    (["not significant", "not significant", "agree"], "not significant"), (["no data", "disagree"], "disagree"),
    (["no data", "no data"], "no data")])
def test_overall_verdict_is_the_majority_of_categories(verdicts, want):
    from lyco.analysis.findings import Verdict, overall
    per = [Verdict(CHECKS[0], f"c{i}", v, 0.1, 0.01, 3, ()) for i, v in enumerate(verdicts)]
    assert overall(CHECKS[0], per).verdict == want


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("mutate, match", [
    (lambda rows: [{k: v for k, v in r.items() if k != "value"} for r in rows], r"results\.csv: .*column 'value'"),
    (lambda rows: [{k: v for k, v in r.items() if k != "metric"} for r in rows], r"results\.csv: .*column 'metric'"),
    (lambda rows: [dict(rows[0], value="abc")] + rows[1:], r"results\.csv, line 2: column 'value' is 'abc'"),
    (lambda rows: [dict(rows[0], checkpoint="")] + rows[1:], r"results\.csv, line 2: column 'checkpoint' is empty"),
    (lambda rows: rows + [rows[0]], r"results\.csv: two rows for checkpoint 'A-s1-e10'"),
    (lambda rows: [dict(rows[0], epoch="99")] + rows[1:], r"checkpoint 'A-s1-e10' has different config/seed/epoch"),
    (lambda rows: [dict(r, metric="clip_score") if r["metric"] == "scd" else r for r in rows],
     r"results\.csv: column 'metric' has 'clip_score'.*--higher-is-better"),
])
def test_bad_result_tables(tmp_path, mutate, match):
    rows = mutate(constructed_rows())
    path = write_csv(tmp_path / "results.csv", rows, columns=list(dict.fromkeys(k for r in rows for k in r)))
    with pytest.raises(ConfigError, match=match):
        analyze(path, None, None, NO_SHAP)


def test_empty_and_missing_tables(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("level,category,class,subclass,checkpoint,metric,value\n")
    with pytest.raises(ConfigError, match=r"results\.csv: the result table has no leaf rows"):
        analyze(path, None, None, NO_SHAP)
    with pytest.raises(ConfigError, match=r"nothere\.csv: no such file"):
        analyze(tmp_path / "nothere.csv", None, None, NO_SHAP)
    rows = [r for r in constructed_rows() if r["checkpoint"].startswith("A-s1-e10") or r["checkpoint"] == "base"]
    with pytest.raises(ConfigError, match="1 checkpoint.*at least two"):
        analyze(write_csv(tmp_path / "one.csv", rows), None, None, NO_SHAP)


@pytest.mark.parametrize("factors, match", [
    (FACTORS + [{"config": "C", "algo": "lora"}], r"factors\.csv: column 'config' has 'C', not in the result table"),
    (FACTORS[:1], r"factors\.csv: column 'config' lacks 'B'"),
    ([{k: v for k, v in r.items() if k != "config"} | {"cfg": r["config"]} for r in FACTORS],
     r"factors\.csv: the factors table has no column 'config'"),
    (FACTORS + [FACTORS[0]], r"factors\.csv, line 4: config 'A' appears twice"),
    ([dict(FACTORS[0], lr="fast"), FACTORS[1]], r"factors\.csv: column 'lr' of config 'A' is 'fast', not a number"),
    ([dict(r, epoch="10") for r in FACTORS], r"factors\.csv: column 'epoch' does not belong"),
])
def test_bad_factor_tables(study, tmp_path, factors, match):
    res, _ = study
    fac = write_csv(tmp_path / "factors.csv", factors, columns=list(dict.fromkeys(k for r in factors for k in r)))
    with pytest.raises(ConfigError, match=match):
        analyze(res, fac, None, NO_SHAP)


def test_bad_options(study):
    res, fac = study
    with pytest.raises(ConfigError, match="exclude: config 'Z' is not in"):
        analyze(res, fac, None, AnalysisOptions(shap=False, exclude=("Z",)))
    with pytest.raises(ConfigError, match="encoder 'dinov2': no metric column of .*results.csv.*did you mean 'dino'"):
        analyze(res, fac, None, AnalysisOptions(shap=False, encoder="dinov2"))


def test_outputs_never_overwritten_unless_asked(study, tmp_path):
    res, fac = study
    out = tmp_path / "out"
    analyze(res, fac, out, NO_SHAP)
    before = (out / "scores.csv").read_bytes()
    (out / "effects.csv").write_text("mine")
    with pytest.raises(ConfigError, match="already holds an analysis.*--overwrite"):
        analyze(res, fac, out, NO_SHAP)
    assert (out / "effects.csv").read_text() == "mine"
    analyze(res, fac, out, AnalysisOptions(shap=False, report=False, overwrite=True))
    assert (out / "scores.csv").read_bytes() == before and (out / "effects.csv").read_text() != "mine"
    assert oct((out / "scores.csv").stat().st_mode & 0o777) != oct(0o600)         # umask, not mkstemp's 0600
    with pytest.raises(ConfigError, match="is one of the inputs"):
        analyze(out / "scores.csv", None, out, AnalysisOptions(shap=False, overwrite=True))


def test_cli(study, tmp_path, capsys):
    res, fac = study
    assert lyco_main(["analyze", str(res), "--factors", str(fac), "--out", str(tmp_path / "o"), "--no-shap"]) == 0
    out = capsys.readouterr().out
    assert "F2 fidelity" in out and f"report: {tmp_path / 'o' / 'report.html'}" in out
    assert (tmp_path / "o" / "findings.csv").is_file()
    assert lyco_main(["analyze", str(res), "--factors", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "p")]) == 1
    assert "lyco analyze: error:" in capsys.readouterr().err and not (tmp_path / "p").exists()
    assert lyco_main(["analyze", str(res), "--no-shap"]) == 0                   # default folder: next to RESULTS
    assert (res.parent / "analysis" / "scores.csv").is_file()


def test_analysis_doc_describes_the_checks_and_settings():
    """docs/ANALYSIS.md §4 names every check's finding and factor; §5.1 states the CatBoost settings in use."""
    from pathlib import Path

    from lyco.analysis import ShapSettings
    doc = (Path(__file__).resolve().parent.parent / "docs" / "ANALYSIS.md").read_text(encoding="utf-8")
    findings, shap = doc[doc.index("## 4. "):doc.index("## 5. ")], doc[doc.index("## 5. "):doc.index("## 6. ")]
    for check in CHECKS:
        assert f"| {check.finding}" in findings and f"`{check.factor}`" in findings, check.name
    s = ShapSettings()
    for text in (f"{s.iterations} iterations", f"learning rate {s.learning_rate}", f"`random_seed` {s.random_seed}",
                 f"`nan_mode` {s.nan_mode}", f"`--shap-subset {s.subset}` (the default)"):
        assert text in shap, text
