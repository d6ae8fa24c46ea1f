"""Coding the factors of a study, from the grid itself (no hard-coded lists of learning rates or dims;
docs/ANALYSIS.md §2).

The paper varies one factor at a time around one default configuration per algorithm.  From the factors table:

* **default config** of each algorithm: the rows with a true ``default`` column, else the config that takes the
  most common value of every factor within its algorithm (in a one-factor-at-a-time grid, the default's values
  are the modes).
* ``lr_level`` (from ``lr``): the position of the config's learning rate among the algorithm's learning rates,
  counted from the default's (−1 lower, 0 default, +1 higher, …).  The paper's 1/2/3 is the same order.
* ``capacity`` (from ``dim`` and ``factor``): the position of (dim, −factor) among the algorithm's values, counted
  from the default's: a higher dim, or a smaller LoKr factor (−1, "as factorised as possible", is the smallest
  capacity), is more capacity.  Algorithms without dim or factor (native fine-tuning) have none.
* ``scale`` (from ``alpha`` / ``dim``): the adapter's scale α/dim; an α = 1 variant has a lower scale than its
  algorithm's default.

Configs are compared on the *coded* factors: ``dim``, ``alpha`` and ``factor`` are replaced by ``capacity`` and
``scale`` (so LoRA dim 8 α 4 → dim 32 α 16 is one step of capacity, and dim 32 α 16 → α 1 one step of scale), and
``lr_level`` is a label of ``lr``.  Columns given in the file are used as they are (not derived again).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..errors import ConfigError
from .table import FactorRows, natural_key, parse_number

NUMERIC = ("lr", "dim", "alpha", "factor", "capacity", "lr_level", "scale")
CAPACITY_SOURCES = ("dim", "factor")
NOT_FACTORS = ("config", "algo", "default")
#: trained-layer order of lyco's presets (the paper's attn-only < attn-mlp < full)
LAYER_ORDER = MappingProxyType({"attn-only": 1, "ia3": 1, "attn-mlp": 2, "kohya": 2, "unet-transformer-only": 2,
                                "full-lin": 3, "kohya-conv": 3, "full": 3, "all": 4})
TRUE = ("1", "true", "yes", "y", "default")


def norm_number(text: str) -> str:
    """A canonical spelling of a number ('5e-4' and '0.0005' → '0.0005', '8.0' → '8'); '' stays ''."""
    v = parse_number(text)
    if v != v:
        return ""
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def order_key(column: str, value: str) -> tuple:
    """How values of one factor compare ('from' < 'to'): numbers by value, presets by trained layers, else text."""
    if value == "":
        return (-1, 0.0, "")
    if column == "preset" and value in LAYER_ORDER:
        return (0, float(LAYER_ORDER[value]), value)
    k = natural_key(value)
    return (0, k[1], "") if k[0] == 0 else (1, 0.0, value)


@dataclass(frozen=True)
class Factors:
    """The coded factors table."""

    #: every column of the coded table in display order (config and algo first)
    columns: tuple[str, ...]
    #: the factors configs are compared on (one-factor-at-a-time pairs, SHAP features)
    compared: tuple[str, ...]
    #: columns lyco computed from others
    derived: tuple[str, ...]
    values: Mapping[str, Mapping[str, str]]
    #: algo -> its default config
    defaults: Mapping[str, str]
    source: str

    @property
    def configs(self) -> list[str]:
        return list(self.values)

    def algo(self, config: str) -> str:
        return self.values[config].get("algo", "")

    def get(self, config: str, column: str) -> str:
        return self.values[config].get(column, "")

    def differing(self, a: str, b: str) -> list[str]:
        return [c for c in self.compared if self.get(a, c) != self.get(b, c)]

    def variant_factor(self, config: str) -> str | None:
        """'' for an algorithm's default, the one factor a config changes from its default, None otherwise."""
        default = self.defaults.get(self.algo(config))
        if default is None:
            return None
        diff = self.differing(default, config)
        if self.algo(default) != self.algo(config) or len(diff) > 1:
            return None
        return diff[0] if diff else ""


def _normalised(raw: FactorRows) -> dict[str, dict[str, str]]:
    for bad in ("epoch", "seed", "checkpoint"):
        if bad in raw.columns:
            raise ConfigError(f"{raw.source}: column {bad!r} does not belong in the factors table (one row per "
                              f"config); {bad}s come from the result table")
    out: dict[str, dict[str, str]] = {}
    for config, row in raw.rows.items():
        new = {}
        for col in raw.columns:
            v = row.get(col, "")
            if col in NUMERIC:
                try:
                    v = norm_number(v)
                except ValueError:
                    raise ConfigError(f"{raw.source}: column {col!r} of config {config!r} is {v!r}, "
                                      "not a number") from None
            elif col not in NOT_FACTORS:
                try:
                    v = norm_number(v) if v else v
                except ValueError:
                    pass
            new[col] = v
        out[config] = new
    return out


def _defaults(rows: dict[str, dict[str, str]], columns: list[str], source: str) -> dict[str, str]:
    by_algo: dict[str, list[str]] = {}
    for config, row in rows.items():
        by_algo.setdefault(row.get("algo", ""), []).append(config)
    out = {}
    for algo, configs in by_algo.items():
        if "default" in columns:
            marked = [c for c in configs if rows[c].get("default", "").lower() in TRUE]
            if len(marked) != 1:
                raise ConfigError(f"{source}: column 'default' marks {len(marked)} configs of algorithm {algo!r} "
                                  f"({', '.join(marked) or 'none'}); mark exactly one per algorithm")
            out[algo] = marked[0]
            continue
        factors = [c for c in columns if c not in NOT_FACTORS]
        modes = {}
        for col in factors:
            counts = Counter(rows[c][col] for c in configs)
            best = max(counts.values())
            modes[col] = next(rows[c][col] for c in configs if counts[rows[c][col]] == best)  # first in file order
        out[algo] = max(configs, key=lambda c: (sum(rows[c][col] == modes[col] for col in factors),
                                                -configs.index(c)))
    return out


def _levels(rows: dict[str, dict[str, str]], defaults: dict[str, str], key) -> dict[str, str]:
    """Per algorithm: ordinal of key(config) among the algorithm's keys, 0 at the default; '' where key is None."""
    out = {}
    for algo, default in defaults.items():
        configs = [c for c, r in rows.items() if r.get("algo", "") == algo]
        keys = {c: key(rows[c]) for c in configs}
        distinct = sorted({k for k in keys.values() if k is not None})
        origin = distinct.index(keys[default]) if keys[default] is not None else 0
        for c in configs:
            out[c] = "" if keys[c] is None else str(distinct.index(keys[c]) - origin)
    return out


def _capacity_key(row: Mapping[str, str]) -> tuple[float, float] | None:
    dim, factor = row.get("dim", ""), row.get("factor", "")
    if dim == "" and factor == "":
        return None
    f = float(factor) if factor != "" else 0.0
    f = float("inf") if factor != "" and f <= 0 else f        # -1: as factorised as possible
    return (float(dim) if dim != "" else float("-inf"), -f)


def code_factors(raw: FactorRows) -> Factors:
    """Derive lr_level, capacity and scale and the default config of each algorithm (see the module doc)."""
    rows = _normalised(raw)
    columns = list(raw.columns)
    defaults = _defaults(rows, columns, raw.source)
    derived: list[str] = []
    if "lr" in columns and "lr_level" not in columns:
        lvl = _levels(rows, defaults, lambda r: float(r["lr"]) if r["lr"] != "" else None)
        for c in rows:
            rows[c]["lr_level"] = lvl[c]
        derived.append("lr_level")
    has_capacity = "capacity" in columns
    if not has_capacity and any(s in columns for s in CAPACITY_SOURCES):
        lvl = _levels(rows, defaults, _capacity_key)
        for c in rows:
            rows[c]["capacity"] = lvl[c]
        derived.append("capacity")
        has_capacity = True
    has_scale = "scale" in columns
    if not has_scale and "alpha" in columns and "dim" in columns:
        for r in rows.values():
            ok = r["alpha"] != "" and r["dim"] not in ("", "0")
            r["scale"] = norm_number(repr(float(r["alpha"]) / float(r["dim"]))) if ok else ""
        derived.append("scale")
        has_scale = True
    dropped = set(NOT_FACTORS)
    if has_capacity:
        dropped |= set(CAPACITY_SOURCES)
    if has_scale:
        dropped |= {"alpha", "dim"}
    if "lr" in columns:
        dropped.add("lr_level")
    compared = [c for c in columns if c not in dropped]
    compared += [c for c in ("capacity", "scale") if c in derived]
    display = ["config", "algo"] + [c for c in columns if c not in ("config", "algo")] + derived
    ordered = sorted(rows, key=lambda c: (natural_key(rows[c].get("algo", "")), natural_key(c)))
    values = MappingProxyType({c: MappingProxyType(dict(rows[c], algo=rows[c].get("algo", ""))) for c in ordered})
    return Factors(tuple(display), tuple(compared), tuple(derived), values, MappingProxyType(defaults), raw.source)
