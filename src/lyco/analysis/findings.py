"""The paper's findings F1–F5 (spec §7) as checks on the effects.

Each check names a factor, a criterion (fidelity = ImSim on train/trigger/alter, controllability = TextSim(alter),
diversity = Vendi(trigger), preservation = the style-loss score) and the expected sign of every effect it reads.
An effect *agrees* when it is significant (|delta| > 2 stderr) with the expected sign, *disagrees* when
significant with the other sign, and is *not significant* otherwise; for "no change" statements a significant
effect disagrees and any other agrees.  Per category, the verdict is the majority of the agreeing and disagreeing
effects (``agree`` / ``disagree``; ``mixed`` on a tie; ``not significant`` when none is significant; ``no data``
when the grid has no such comparison).  The ``all`` rows apply the same rule to the category verdicts.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .effects import Effect
from .factors import LAYER_ORDER
from .targets import CRITERIA, TARGETS, Column

COLUMNS = ("finding", "check", "category", "factor", "criterion", "statement", "verdict", "n_effects", "n_agree",
           "n_disagree", "n_not_significant", "support", "effects")

#: "more fitting" direction: fidelity up, everything else down
FITTING = {"fidelity": 1, "controllability": -1, "diversity": -1, "preservation": -1}
ARROW = {1: "↑", -1: "↓", 0: "unchanged"}
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
                         f"smaller LoKr factor) behaves like a higher lr: {CRITERION_TEXT[crit]} {ARROW[FITTING[crit]]}"))
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
    n_agree: int
    n_disagree: int
    n_not_significant: int
    support: float
    effects: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        c = self.check
        return {"finding": c.finding, "check": c.name, "category": self.category, "factor": c.factor,
                "criterion": c.criterion, "statement": c.statement, "verdict": self.verdict,
                "n_effects": self.n_agree + self.n_disagree + self.n_not_significant, "n_agree": self.n_agree,
                "n_disagree": self.n_disagree, "n_not_significant": self.n_not_significant, "support": self.support,
                "effects": "; ".join(self.effects)}


def majority(n_agree: int, n_disagree: int, n_total: int) -> str:
    if n_total == 0:
        return "no data"
    if n_agree == n_disagree == 0:
        return "not significant"
    if n_agree == n_disagree:
        return "mixed"
    return "agree" if n_agree > n_disagree else "disagree"


def outcome(effect: Effect, expected: int) -> str:
    if expected == 0:
        return "disagree" if effect.significant else "agree"
    if not effect.significant:
        return "not significant"
    return "agree" if (effect.delta > 0) == (expected > 0) else "disagree"


def judge(effects: Sequence[Effect], columns: Mapping[str, Column], categories: Sequence[str]) -> list[Verdict]:
    """Verdicts per check and category, then per check over categories (category 'all').  ``columns``: the
    resolved targets (target key -> metric column)."""
    crit_cols = {crit: {columns[t.key] for t in TARGETS if t.criterion == crit and t.key in columns}
                 for crit in CRITERIA}
    out = []
    for check in CHECKS:
        per_cat = []
        for cat in categories:
            used = [(e, x) for e in effects if e.category == cat and e.column in crit_cols[check.criterion]
                    for x in [check.expected(e)] if x is not None]
            got = [outcome(e, x) for e, x in used]
            n_a, n_d = got.count("agree"), got.count("disagree")
            aligned = [e.delta * x for e, x in used if x != 0]
            support = float(np.mean(aligned)) if aligned else float("nan")
            v = Verdict(check, cat, majority(n_a, n_d, len(got)), n_a, n_d, len(got) - n_a - n_d, support,
                        tuple(f"{e.label}: {o}" for (e, _), o in zip(used, got)))
            per_cat.append(v)
        verdicts = [v.verdict for v in per_cat if v.verdict != "no data"]
        n_a, n_d = verdicts.count("agree"), verdicts.count("disagree")
        supports = [v.support for v in per_cat if v.support == v.support]
        out += per_cat
        out.append(Verdict(check, "all", majority(n_a, n_d, len(verdicts)), n_a, n_d, len(verdicts) - n_a - n_d,
                           float(np.mean(supports)) if supports else float("nan"),
                           tuple(f"{v.category}: {v.verdict}" for v in per_cat)))
    return out
