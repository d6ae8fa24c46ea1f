"""The paper's findings F1–F5 (docs/ANALYSIS.md §4) as checks on the effects.

Each check names a factor, a criterion (fidelity = ImSim on train/trigger/alter, controllability = TextSim(alter),
diversity = Vendi(trigger), preservation = the style-loss score) and the expected sign of every effect it reads
(+1 or −1; 0 for "no discernible change").  Per category, the check pools its effects: at every matched
(seed, epoch) the mean of the effects' differences, each multiplied by its expected sign, so that a positive
``delta`` goes the paper's way (for "no change" checks the plain differences); ``delta`` and ``stderr`` are the mean
and standard error over those n matched units.  The verdict: ``agree`` when delta > 2 stderr, ``disagree`` when
delta < −2 stderr, ``not significant`` in between (|delta| within 2 stderr, or a single unit); a "no change" check
agrees when |delta| is within 2 stderr and disagrees otherwise; ``no data`` when the grid has no such comparison.
Each effect's own outcome (same rule on its own delta and stderr) is listed beside it.  The ``all`` rows: the
verdict that holds in the majority of the categories with data (``mixed`` when none does); their counts and
``effects`` are of categories.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .effects import Effect, mean_stderr
from .factors import LAYER_ORDER
from .targets import CRITERIA, TARGETS, Column

COLUMNS = ("finding", "check", "category", "factor", "criterion", "statement", "verdict", "delta", "stderr", "n",
           "n_effects", "n_agree", "n_disagree", "n_not_significant", "effects")

#: "more fitting" direction: fidelity up, everything else down
FITTING = {"fidelity": 1, "controllability": -1, "diversity": -1, "preservation": -1}
ARROW = {1: "↑", -1: "↓", 0: "unchanged"}
NAN = float("nan")
CRITERION_TEXT = {"fidelity": "ImSim", "controllability": "TextSim (alter)", "diversity": "Vendi (trigger)",
                  "preservation": "style preservation"}
#: algorithm names of the paper's Table 1 (lyco names and common aliases)
ALIASES = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr", "full": "native", "native": "native",
           "diff": "native"}
#: Table 1 at defaults, best first (native = native fine-tuning at its default lr 1e-6)
ORDERS = {"fidelity": ("lokr", "lora", "loha", "native"),
          "controllability": ("native", "loha", "lora", "lokr"),
          "diversity": ("native", "loha", "lora", "lokr")}


@dataclass(frozen=True)
class Check:
    finding: str
    name: str
    factor: str
    criterion: str
    statement: str
    #: for F4: "attn-only" (attention only vs more layers) or "conv" (adding conv layers)
    kind: str = ""

    def expected(self, effect: Effect) -> int | None:
        """Expected sign of ``effect.delta`` (0: no change), or None when the effect does not test this check."""
        c = effect.comparison
        if c.factor != self.factor:
            return None
        if self.factor in ("epoch", "lr", "capacity", "scale"):
            return FITTING[self.criterion]
        if self.factor == "preset":
            lo, hi = _layers(c.from_), _layers(c.to)
            if lo is None or hi is None or lo == hi:
                return None
            if self.kind == "attn-only":
                return FITTING[self.criterion] if lo == 1 else None
            return 0 if lo >= 2 else None
        if self.factor == "algo":
            order = ORDERS[self.criterion]
            a, b = ALIASES.get(c.from_.lower()), ALIASES.get(c.to.lower())
            if a not in order or b not in order or abs(order.index(a) - order.index(b)) != 1:
                return None
            return 1 if order.index(b) < order.index(a) else -1
        return None


def _layers(preset: str) -> int | None:
    return LAYER_ORDER.get(preset)


def _checks() -> list[Check]:
    """Every check, grouped by finding (F1 … F5), criteria in the order of CRITERIA."""
    out = []
    for crit in CRITERIA:
        out.append(Check("F1", f"F1 {crit}", "epoch", crit, f"More epochs behave like more fitting: "
                                                             f"{CRITERION_TEXT[crit]} {ARROW[FITTING[crit]]} (the "
                                                             "paper's exceptions: scenes and toys lose ImSim late; "
                                                             "anime gains TextSim)"))
    for crit in CRITERIA:
        out.append(Check("F2", f"F2 {crit}", "lr", crit,
                         f"A higher learning rate ≈ more epochs: {CRITERION_TEXT[crit]} {ARROW[FITTING[crit]]}"))
    for crit, order in ORDERS.items():
        out.append(Check("F3", f"F3 {crit}", "algo", crit, f"At defaults, {crit}: {' > '.join(order)} "
                                                           "(Table 1; adjacent pairs tested)"))
    for crit in CRITERIA:
        out.append(Check("F4", f"F4 attn-only {crit}", "preset", crit, "Training attention only (vs attn-mlp or "
                         f"full): {CRITERION_TEXT[crit]} {ARROW[-FITTING[crit]]}", "attn-only"))
    for crit in CRITERIA:
        out.append(Check("F4", f"F4 conv {crit}", "preset", crit, "Adding conv layers (full vs attn-mlp): "
                         f"{CRITERION_TEXT[crit]} shows no discernible change", "conv"))
    for crit in CRITERIA:
        out.append(Check("F5", f"F5 capacity {crit}", "capacity", crit, "More capacity (higher dim at fixed dim/α, "
                         "smaller LoKr factor) behaves like a higher lr: "
                         f"{CRITERION_TEXT[crit]} {ARROW[FITTING[crit]]}"))
    for crit in CRITERIA:
        out.append(Check("F5", f"F5 scale {crit}", "scale", crit, "A lower scale α/dim (the α = 1 variants) is less "
                         "fitting, which can reverse the capacity effect: with a higher scale, "
                         f"{CRITERION_TEXT[crit]} {ARROW[FITTING[crit]]}"))
    return out


CHECKS = tuple(_checks())


@dataclass(frozen=True)
class Verdict:
    check: Check
    category: str
    verdict: str
    delta: float
    stderr: float
    n: int
    #: each effect's own outcome, or (category 'all') each category's verdict
    outcomes: tuple[tuple[str, str], ...]

    def as_dict(self) -> dict[str, object]:
        c = self.check
        got = [o for _, o in self.outcomes]
        return {"finding": c.finding, "check": c.name, "category": self.category, "factor": c.factor,
                "criterion": c.criterion, "statement": c.statement, "verdict": self.verdict, "delta": self.delta,
                "stderr": self.stderr, "n": self.n, "n_effects": len(got), "n_agree": got.count("agree"),
                "n_disagree": got.count("disagree"), "n_not_significant": len(got) - got.count("agree")
                - got.count("disagree") - got.count("no data"),
                "effects": "; ".join(f"{label}: {o}" for label, o in self.outcomes)}


def outcome(delta: float, stderr: float, n: int, expected: int) -> str:
    """agree / disagree / not significant for a delta (aligned with the expectation when it is ±1)."""
    significant = n >= 2 and not math.isnan(stderr) and abs(delta) > 2 * stderr
    if expected == 0:
        return "disagree" if significant else "agree"
    if not significant:
        return "not significant"
    return "agree" if (delta > 0) == (expected > 0) else "disagree"


def pooled(used: Sequence[tuple[Effect, int]]) -> tuple[float, float, int]:
    """Mean and standard error over the matched units of the per-unit mean of the (sign-aligned) differences."""
    units: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e, x in used:
        for key, d in e.diffs:
            units[key].append(d * x if x != 0 else d)
    if not units:
        return NAN, NAN, 0
    mean, stderr = mean_stderr([float(np.mean(v)) for v in units.values()])
    return mean, stderr, len(units)


def overall(check: Check, per_cat: Sequence[Verdict]) -> Verdict:
    """The verdict that holds in the majority of the categories with data."""
    with_data = [v for v in per_cat if v.verdict != "no data"]
    counts = {k: sum(v.verdict == k for v in with_data) for k in ("agree", "disagree", "not significant")}
    verdict = next((k for k, n in counts.items() if n * 2 > len(with_data)), "mixed") if with_data else "no data"
    deltas = [v.delta for v in with_data if not math.isnan(v.delta)]
    mean, stderr = mean_stderr(deltas) if deltas else (NAN, NAN)
    return Verdict(check, "all", verdict, mean, stderr, len(deltas), tuple((v.category, v.verdict) for v in per_cat))


def judge(effects: Sequence[Effect], columns: Mapping[str, Column], categories: Sequence[str]) -> list[Verdict]:
    """Verdicts per check and category, then per check over the categories (category 'all').  ``columns``: the
    resolved targets (target key -> metric column)."""
    crit_cols = {crit: {columns[t.key] for t in TARGETS if t.criterion == crit and t.key in columns}
                 for crit in CRITERIA}
    by_cat: dict[str, list[Effect]] = defaultdict(list)
    for e in effects:
        by_cat[e.category].append(e)
    out = []
    for check in CHECKS:
        per_cat = []
        for cat in categories:
            used = [(e, x) for e in by_cat[cat] if e.column in crit_cols[check.criterion]
                    for x in [check.expected(e)] if x is not None]
            expect = 0 if used and all(x == 0 for _, x in used) else 1
            delta, stderr, n = pooled(used)
            verdict = outcome(delta, stderr, n, expect) if used else "no data"
            per_cat.append(Verdict(check, cat, verdict, delta, stderr, n, tuple(
                (e.label, outcome(e.delta, e.stderr, e.n, x)) for e, x in used)))
        out += per_cat
        out.append(overall(check, per_cat))
    return out
