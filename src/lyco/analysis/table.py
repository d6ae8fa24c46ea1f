"""The analysis' inputs: the result table (``lyco eval``'s tidy ``results.csv`` schema) and the factors table.

Result table: one row per number.  Required columns ``category``, ``class``, ``checkpoint``, ``metric``,
``value``; optional ``level`` (only ``leaf`` rows are read; class/category rows are recomputed), ``subclass``,
``config`` (default: the checkpoint name), ``seed``, ``epoch``, ``encoder``, ``resize``, ``prompt_type``; other
columns (``score``) are ignored.  An empty ``value`` is a missing number.

Factors table: a ``config`` column plus one column per factor of the study (``algo``, ``preset``, ``lr``, ``dim``,
``alpha``, ``factor``, any other label).  :mod:`lyco.analysis.factors` codes it.  See docs/ANALYSIS.md §1.1.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, did_you_mean
from ..eval.metrics import REGISTRY
from ..eval.rank import Row

NAN = float("nan")
REQUIRED = ("category", "class", "checkpoint", "metric", "value")
OPTIONAL = ("level", "subclass", "config", "seed", "epoch", "encoder", "resize", "prompt_type")
#: what :func:`load_results` accepts: a CSV path, Row objects or dicts with the CSV's keys
ResultsSource = str | Path | Sequence[Row] | Sequence[Mapping[str, object]]


@dataclass(frozen=True)
class Checkpoint:
    """One evaluated model: its name and the labels that place it in the grid."""

    name: str
    config: str
    seed: str
    epoch: str


@dataclass
class Results:
    """The leaf rows of a result table and what they say about the checkpoints."""

    rows: list[Row]
    source: str
    checkpoints: dict[str, Checkpoint]

    @property
    def columns(self) -> list[tuple[str, str, str, str]]:
        return sorted({r.column for r in self.rows})

    @property
    def categories(self) -> list[str]:
        return sorted({r.category for r in self.rows})

    def configs(self) -> list[str]:
        return sorted({c.config for c in self.checkpoints.values()}, key=natural_key)


def natural_key(s: str) -> tuple:
    """Sort key: numbers by value (so '10' < '50'), then text."""
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)


def parse_number(text: str) -> float:
    t = text.strip()
    if t == "" or t.lower() in ("nan", "na", "none", "null"):
        return NAN
    return float(t)


def cell(v: object) -> str:
    """CSV spelling: exact floats (repr), 'nan' for missing numbers, text as it is."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


# ------------------------------------------------------------------------------------------------- results
def _open_csv(path: Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise ConfigError(f"{what} {path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = [{k: (v or "").strip() for k, v in d.items() if k is not None} for d in reader]
    return header, rows


def _check_header(header: Iterable[str], required: Sequence[str], source: str, what: str) -> None:
    have = list(header)
    for col in required:
        if col not in have:
            hint = did_you_mean(col, have)
            raise ConfigError(f"{source}: the {what} has no column {col!r}{hint}; required columns: "
                              f"{', '.join(required)} (found: {', '.join(have) or 'none'})")


def _row_from(d: Mapping[str, object], source: str, where: str) -> Row | None:
    level = str(d.get("level") or "leaf").strip()
    if level != "leaf":
        return None
    raw = d.get("value")
    try:
        value = float(raw) if isinstance(raw, (int, float)) else parse_number(str(raw if raw is not None else ""))
    except ValueError:
        raise ConfigError(f"{source}, {where}: column 'value' is {raw!r}, not a number (leave it empty for a "
                          "missing value)") from None
    text = {k: "" if d.get(k) is None else str(d.get(k)).strip() for k in REQUIRED + OPTIONAL}
    for col in ("category", "class", "checkpoint", "metric"):
        if not text[col]:
            raise ConfigError(f"{source}, {where}: column {col!r} is empty")
    return Row(text["category"], text["class"], text["subclass"], text["checkpoint"], text["metric"],
               text["encoder"], text["resize"], text["prompt_type"], value,
               config=text["config"] or text["checkpoint"], seed=text["seed"], epoch=text["epoch"])


def load_results(source: ResultsSource) -> Results:
    """Read and check a result table (a CSV path, or rows from memory)."""
    dicts: Sequence[Mapping[str, object]]
    if isinstance(source, (str, Path)):
        path = Path(source)
        header, dicts = _open_csv(path, "result table")
        name = str(path)
        _check_header(header, REQUIRED, name, "result table")
        where = [f"line {i + 2}" for i in range(len(dicts))]
    else:
        name = "<results>"
        dicts = [r.as_dict() if isinstance(r, Row) else dict(r) for r in source]
        if dicts:
            _check_header(set().union(*(d.keys() for d in dicts)), REQUIRED, name, "result table")
        where = [f"row {i}" for i in range(len(dicts))]
    rows = [r for r in (_row_from(d, name, w) for d, w in zip(dicts, where)) if r is not None]
    if not rows:
        raise ConfigError(f"{name}: the result table has no leaf rows (rows with level 'leaf' or no level); "
                          "give lyco eval's results.csv or a table in its schema (see the README)")
    return Results(rows, name, _checkpoints(rows, name))


def _checkpoints(rows: Sequence[Row], source: str) -> dict[str, Checkpoint]:
    out: dict[str, Checkpoint] = {}
    seen: set[tuple] = set()
    for r in rows:
        ck = Checkpoint(r.checkpoint, r.config, r.seed, r.epoch)
        old = out.setdefault(r.checkpoint, ck)
        if old != ck:
            raise ConfigError(f"{source}: checkpoint {r.checkpoint!r} has different config/seed/epoch labels in "
                              f"different rows ({old.config}/{old.seed}/{old.epoch} vs {ck.config}/{ck.seed}/"
                              f"{ck.epoch}); columns 'config', 'seed' and 'epoch' must be the same on all its rows")
        key = (r.checkpoint, r.leaf, r.column)
        if key in seen:
            raise ConfigError(f"{source}: two rows for checkpoint {r.checkpoint!r}, "
                              f"leaf {'/'.join(p for p in r.leaf if p)}"
                              f", metric column {'/'.join(r.column)}; each number must appear once")
        seen.add(key)
    by_label: dict[tuple[str, str, str], str] = {}
    for ck in out.values():
        if ck.seed or ck.epoch:
            other = by_label.setdefault((ck.config, ck.seed, ck.epoch), ck.name)
            if other != ck.name:
                raise ConfigError(f"{source}: checkpoints {other!r} and {ck.name!r} both have config {ck.config!r}, "
                                  f"seed {ck.seed!r}, epoch {ck.epoch!r}; give them different seed/epoch labels")
    return out


def metric_directions(results: Results, higher: Iterable[str] = (), lower: Iterable[str] = ()
                      ) -> Callable[[str], bool]:
    """metric name -> higher is better, from lyco's registry plus the declared extra metrics."""
    extra = {m: True for m in higher} | {m: False for m in lower}
    table = {name: cls.higher_is_better for name, cls in REGISTRY.items()} | extra
    for m in sorted({r.metric for r in results.rows}):
        if m not in table:
            raise ConfigError(f"{results.source}: column 'metric' has {m!r}, which lyco does not know"
                              f"{did_you_mean(m, table)}; known: {', '.join(sorted(table))}.  For another "
                              "evaluator's metric say its direction: --higher-is-better NAME or --lower-is-better NAME")
    return table.__getitem__


# ------------------------------------------------------------------------------------------------- factors
@dataclass
class FactorRows:
    """The factors table as read: column names in file order, one dict per config (text values)."""

    columns: list[str]
    rows: dict[str, dict[str, str]]
    source: str


FactorsSource = str | Path | Sequence[Mapping[str, object]]


def load_factor_rows(source: FactorsSource) -> FactorRows:
    if isinstance(source, (str, Path)):
        path = Path(source)
        header, dicts = _open_csv(path, "factors table")
        name = str(path)
        where = [f"line {i + 2}" for i in range(len(dicts))]
    else:
        name = "<factors>"
        dicts = [{str(k): "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                  for k, v in d.items()} for d in source]
        header = list(dict.fromkeys(k for d in dicts for k in d))
        where = [f"row {i}" for i in range(len(dicts))]
    _check_header(header, ("config",), name, "factors table")
    rows: dict[str, dict[str, str]] = {}
    for d, w in zip(dicts, where):
        config = d.get("config", "")
        if not config:
            raise ConfigError(f"{name}, {w}: column 'config' is empty")
        if config in rows:
            raise ConfigError(f"{name}, {w}: config {config!r} appears twice in column 'config'")
        rows[config] = {c: d.get(c, "") for c in header}
    if not rows:
        raise ConfigError(f"{name}: the factors table has no rows")
    return FactorRows([c for c in header if c], rows, name)
