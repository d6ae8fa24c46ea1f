"""The paper's grid (arXiv 2309.14859, App. D.2) and the factor labels of a sweep's configurations.

``PAPER_GRID`` lists the 26 evaluated configurations with their ids: one default per algorithm (LoRA 1001, LoHa
1011, LoKr 1021, native fine-tuning 1031) and one-factor-at-a-time variations around it.  Each entry only says
what it sets on top of the base run (``network.*`` and ``train.lr``); the factors are derived from what the
configurations set, never from hard-coded lists:

* ``algo``, ``preset``, ``lr``, ``dim``, ``alpha``, ``factor``: the resolved settings (``dim``/``alpha``/``factor``
  empty where the algorithm has none);
* ``lr_level`` and ``capacity``: ordinals **within each algorithm**, anchored at its default configuration
  (2 = the default, 3 = one step above, 1 = one step below) — the paper's coding (capacity: factor-12 = 1,
  default 2, larger 3); native fine-tuning has no capacity (empty, as in the paper's SHAP);
* ``alpha1``: α = 1 where the algorithm's default has another α (LoRA/LoHa; LoKr's full factors ignore α).

The default configuration of an algorithm is the one marked ``default = true``, else the centre of the star: the
configuration whose settings are each the most common among that algorithm's configurations.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: the factor columns every sweep writes (user labels come after them)
FACTOR_COLUMNS = ("algo", "preset", "lr", "lr_level", "dim", "alpha", "factor", "capacity", "alpha1")

#: algorithms whose adapter has no rank / capacity knob
NO_CAPACITY = {"full", "ia3"}


def _lora(dim: int, alpha: float, lr: float = 5e-4, preset: str = "attn-mlp", conv: int = 0,
          conv_alpha: float = 1.0, norm: bool = False) -> dict[str, Any]:
    return {"network": {"algo": "lora", "dim": dim, "alpha": alpha, "conv_dim": conv, "conv_alpha": conv_alpha,
                        "factor": -1, "preset": preset, "train_norm": norm}, "train": {"lr": lr}}


def _loha(dim: int, alpha: float, lr: float = 5e-4, preset: str = "attn-mlp", conv: int = 0,
          conv_alpha: float = 1.0, norm: bool = False) -> dict[str, Any]:
    d = _lora(dim, alpha, lr, preset, conv, conv_alpha, norm)
    d["network"]["algo"] = "loha"
    return d


def _lokr(factor: int = 8, lr: float = 5e-4, preset: str = "attn-mlp", conv: int = 0,
          norm: bool = False) -> dict[str, Any]:
    return {"network": {"algo": "lokr", "dim": 10000, "alpha": 1.0, "conv_dim": conv, "conv_alpha": 1.0,
                        "factor": factor, "preset": preset, "train_norm": norm}, "train": {"lr": lr}}


def _full(lr: float = 1e-6, preset: str = "attn-mlp", norm: bool = False) -> dict[str, Any]:
    return {"network": {"algo": "full", "preset": preset, "train_norm": norm}, "train": {"lr": lr}}


@dataclass(frozen=True)
class GridEntry:
    id: str
    label: str
    set: Mapping[str, Any]


#: the paper's 26 evaluated configurations (1007, 1017, 1027 and 1036–1038 were trained but excluded)
PAPER_GRID: tuple[GridEntry, ...] = (
    GridEntry("1001", "LoRA default (dim 8, α 4)", _lora(8, 4.0)),
    GridEntry("1002", "LoRA dim 32 α 16", _lora(32, 16.0)),
    GridEntry("1003", "LoRA dim 32 α 1", _lora(32, 1.0)),
    GridEntry("1004", "LoRA full layers", _lora(8, 4.0, preset="full", conv=8, conv_alpha=4.0, norm=True)),
    GridEntry("1005", "LoRA attn-only", _lora(8, 4.0, preset="attn-only")),
    GridEntry("1006", "LoRA lr 1e-4", _lora(8, 4.0, lr=1e-4)),
    GridEntry("1008", "LoRA lr 1e-3", _lora(8, 4.0, lr=1e-3)),
    GridEntry("1011", "LoHa default (dim 4, α 2)", _loha(4, 2.0)),
    GridEntry("1012", "LoHa dim 16 α 8", _loha(16, 8.0)),
    GridEntry("1013", "LoHa dim 16 α 1", _loha(16, 1.0)),
    GridEntry("1014", "LoHa full layers", _loha(4, 2.0, preset="full", conv=4, conv_alpha=2.0, norm=True)),
    GridEntry("1015", "LoHa attn-only", _loha(4, 2.0, preset="attn-only")),
    GridEntry("1016", "LoHa lr 1e-3", _loha(4, 2.0, lr=1e-3)),
    GridEntry("1018", "LoHa lr 1e-4", _loha(4, 2.0, lr=1e-4)),
    GridEntry("1021", "LoKr default (factor 8, full dim)", _lokr(8)),
    GridEntry("1022", "LoKr factor 4", _lokr(4)),
    GridEntry("1023", "LoKr factor 12", _lokr(12)),
    GridEntry("1024", "LoKr full layers", _lokr(8, preset="full", conv=10000, norm=True)),
    GridEntry("1025", "LoKr attn-only", _lokr(8, preset="attn-only")),
    GridEntry("1026", "LoKr lr 1e-3", _lokr(8, lr=1e-3)),
    GridEntry("1028", "LoKr lr 1e-4", _lokr(8, lr=1e-4)),
    GridEntry("1031", "native default (lr 1e-6)", _full()),
    GridEntry("1032", "native full layers", _full(preset="full", norm=True)),
    GridEntry("1033", "native attn-only", _full(preset="attn-only")),
    GridEntry("1034", "native lr 5e-6", _full(lr=5e-6)),
    GridEntry("1035", "native lr 5e-7", _full(lr=5e-7)),
)

GRIDS: dict[str, tuple[GridEntry, ...]] = {"paper": PAPER_GRID}


# ------------------------------------------------------------------------------------------------ factors
@dataclass(frozen=True)
class Settings:
    """The resolved settings of one configuration that its factors are read from."""

    id: str
    algo: str
    preset: str
    lr: float
    dim: int | None
    alpha: float | None
    factor: int | None
    default: bool | None = None   # explicitly marked default (None: not said)

    @classmethod
    def from_train(cls, cid: str, train: Mapping[str, Any], default: bool | None = None) -> Settings:
        """From a resolved ``lyco train`` config (as a dict)."""
        net, algo = train["network"], str(train["network"]["algo"])
        ranked = algo not in NO_CAPACITY
        alpha = net.get("alpha")
        dim = net.get("dim")
        preset = net.get("preset") or ("custom" if net.get("target_modules") or net.get("target_names") else "attn-mlp")
        if str(preset).endswith(".toml"):           # a preset file: its name
            preset = str(preset).replace("\\", "/").rsplit("/", 1)[-1][:-5]
        return cls(cid, algo, str(preset), float(train["train"]["lr"]),
                   int(dim) if ranked and dim is not None else None,
                   (float(alpha) if alpha else float(dim)) if ranked and dim is not None else None,
                   int(net.get("factor", -1)) if algo == "lokr" else None, default)

    def capacity_key(self) -> tuple[float, float]:
        """Orders configurations of one algorithm by adapter size: LoKr by factor (smaller = larger adapter;
        -1 = as balanced as possible = smallest), then dim; the others by dim."""
        if self.algo == "lokr":
            f = math.inf if self.factor in (None, -1) else float(self.factor)
            return (-f, float(self.dim or 0))
        return (float(self.dim or 0), 0.0)


def find_default(group: Sequence[Settings]) -> Settings:
    """The algorithm's default: the configuration marked so, else the one closest to the per-setting modes."""
    marked = [s for s in group if s.default]
    if marked:
        return marked[0]
    fields = ("preset", "lr", "dim", "alpha", "factor")
    modes = {f: Counter(getattr(s, f) for s in group).most_common(1)[0][0] for f in fields}
    return max(group, key=lambda s: sum(getattr(s, f) == modes[f] for f in fields))   # first on ties


def _anchored(values: Sequence[Any], default: Any) -> dict[Any, int]:
    """Ordinal levels of the distinct ``values`` with ``default`` at 2."""
    order = sorted(set(values))
    at = order.index(default)
    return {v: 2 + i - at for i, v in enumerate(order)}


def derive_factors(settings: Sequence[Settings]) -> dict[str, dict[str, Any]]:
    """Factor labels (``FACTOR_COLUMNS``) of every configuration, keyed by id; ``None`` = not applicable."""
    out: dict[str, dict[str, Any]] = {}
    by_algo: dict[str, list[Settings]] = {}
    for s in settings:
        by_algo.setdefault(s.algo, []).append(s)
    for group in by_algo.values():
        d = find_default(group)
        lr_level = _anchored([s.lr for s in group], d.lr)
        cap = None if d.algo in NO_CAPACITY else _anchored([s.capacity_key() for s in group], d.capacity_key())
        for s in group:
            out[s.id] = {
                "algo": s.algo, "preset": s.preset, "lr": s.lr, "lr_level": lr_level[s.lr],
                "dim": s.dim, "alpha": s.alpha, "factor": s.factor,
                "capacity": cap[s.capacity_key()] if cap else None,
                "alpha1": (s.alpha == 1.0 and d.alpha != 1.0) if s.alpha is not None else None,
                "_default": s.id == d.id,
            }
    return out


def varies(factors: Mapping[str, Mapping[str, Any]], cid: str) -> str:
    """Which setting a configuration changes relative to its algorithm's default ('' for the default itself;
    several joined with '+')."""
    me = factors[cid]
    d = next(f for f in factors.values() if f["algo"] == me["algo"] and f["_default"])
    keys = [("lr", "lr"), ("preset", "preset"), ("capacity", "capacity"), ("alpha1", "alpha")]
    return "+".join(name for key, name in keys if me[key] != d[key])
