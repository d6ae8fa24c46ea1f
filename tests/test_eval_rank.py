"""Rank normalisation and aggregation (docs/EVALUATION.md §6) as pure functions of the result table."""
from __future__ import annotations

import math

import pytest

from lyco.eval.metrics import higher_is_better
from lyco.eval.rank import Row, aggregate, average_ranks, normalized_scores, rank_normalize, seed_summary

NAN = float("nan")


def row(ck, value, metric="image_similarity", cat="toys", cls="bunny", sub="", ptype="trigger", seed="", config=""):
    return Row(cat, cls, sub, ck, metric, "dino", "letterbox", ptype, value, config=config or ck, seed=seed)


def test_average_ranks_with_ties():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]


def test_scores_ascending_descending_ties_nan():
    assert normalized_scores([0.1, 0.3, 0.2], True) == [0.0, 1.0, 0.5]
    assert normalized_scores([0.1, 0.3, 0.2], False) == [1.0, 0.0, 0.5]     # distances: lower is better
    assert normalized_scores([1.0, 1.0, 0.0], True) == [0.75, 0.75, 0.0]
    s = normalized_scores([0.5, NAN, 0.7], True)
    assert s[0] == 0.0 and math.isnan(s[1]) and s[2] == 1.0                  # N counts the values present
    assert all(math.isnan(x) for x in normalized_scores([0.5, NAN], True))   # one value: no score


def test_rank_normalize_groups_pool_and_direction():
    rows = [row("a", 0.5), row("b", 0.6), row("c", 0.7), row("base", 0.9),
            row("a", 0.1, metric="scd"), row("b", 0.3, metric="scd"), row("c", 0.2, metric="scd"),
            row("a", 0.9, cls="panda"), row("b", 0.8, cls="panda"), row("c", NAN, cls="panda")]
    out = rank_normalize(rows, higher_is_better, pool={"a", "b", "c"})
    got = {(r.checkpoint, r.metric, r.class_): r.score for r in out}
    assert got[("a", "image_similarity", "bunny")] == 0.0 and got[("c", "image_similarity", "bunny")] == 1.0
    assert math.isnan(got[("base", "image_similarity", "bunny")])            # not in the pool
    assert got[("a", "scd", "bunny")] == 1.0 and got[("b", "scd", "bunny")] == 0.0
    assert got[("a", "image_similarity", "panda")] == 1.0 and math.isnan(got[("c", "image_similarity", "panda")])
    assert [r.value for r in out] == [r.value for r in rows]                  # raw values kept


def test_aggregate_subclass_class_category_unweighted():
    rows = [row("a", 0.2, cls="abukuma", sub="toid"), row("a", 0.4, cls="abukuma", sub="onex"),
            row("a", 0.9, cls="kirei"), row("a", 0.5, cat="scenes", cls="castle")]
    rows = [r.__class__(**{**r.__dict__, "score": r.value}) for r in rows]
    agg = aggregate(rows)
    cls = {(r.category, r.class_): r.value for r in agg if r.level == "class"}
    cat = {r.category: r for r in agg if r.level == "category"}
    assert cls[("toys", "abukuma")] == pytest.approx(0.3)
    assert cat["toys"].value == pytest.approx((0.3 + 0.9) / 2)               # mean of class means, not of leaves
    assert cat["toys"].score == pytest.approx((0.3 + 0.9) / 2)
    assert cat["scenes"].value == 0.5 and len(cat) == 2                      # no cross-category aggregate


def test_seed_summary_standard_error():
    rows = [row("cfg-s23", 0.2, seed="23", config="cfg"), row("cfg-s24", 0.4, seed="24", config="cfg"),
            row("cfg-s23", 0.6, seed="23", config="cfg", cls="panda"),
            row("cfg-s24", 0.8, seed="24", config="cfg", cls="panda")]
    rows = [r.__class__(**{**r.__dict__, "score": r.value}) for r in rows]
    classes = [r for r in aggregate(rows) if r.level == "class"]
    pts = seed_summary(classes, "score")
    (key, p), = pts.items()
    assert key[1] == "cfg" and p.n == 4
    assert p.mean == pytest.approx(0.5)
    assert p.sem == pytest.approx(0.2581988897 / 2)


def test_row_dict_round_trip():
    r = row("a", 0.25, sub="toid")
    d = r.as_dict()
    assert d["class"] == "bunny" and list(d)[:4] == ["level", "category", "class", "subclass"]
    back = Row.from_dict({k: str(v) for k, v in d.items()})
    assert back.value == 0.25 and back.class_ == "bunny" and math.isnan(back.score)
