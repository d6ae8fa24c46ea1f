"""The analysis' files: CSVs (scores, effects, findings, SHAP, Table 1, best epochs, coded factors), beeswarm PNGs
under ``shap/`` and ``report.html``.  Existing outputs are never replaced unless ``overwrite`` is set, and the
inputs never are (docs/ANALYSIS.md §7.1)."""
from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import ConfigError
from ..eval.report import write_csv
from ..io.atomic import write_atomic
from .effects import COLUMNS as EFFECT_COLUMNS
from .explain import SUMMARY_COLUMNS, VALUE_COLUMNS, ShapModel, value_rows
from .factors import order_key
from .findings import COLUMNS as FINDING_COLUMNS
from .plan import AnalysisOptions, AnalysisOutcome, Study
from .plots import beeswarm_png
from .report import render_html
from .summary import BEST_COLUMNS, TABLE1_COLUMNS
from .table import cell
from .targets import TARGETS, target

FILES = {"scores": "scores.csv", "effects": "effects.csv", "findings": "findings.csv", "shap": "shap.csv",
         "shap_values": "shap_values.csv", "table1": "table1.csv", "best": "best.csv", "factors": "factors_coded.csv",
         "report": "report.html"}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def shap_png_name(category: str, target_key: str) -> str:
    return f"shap/{slug(category)}-{target_key}.png"


def planned_paths(out: Path, study: Study) -> list[Path]:
    paths = [out / name for name in FILES.values()]
    paths += [out / shap_png_name(cat, t.key) for cat in study.categories for t in TARGETS if t.key in study.targets]
    return paths


def check_outputs(out: Path, study: Study, options: AnalysisOptions) -> None:
    """Refuse to write over an input, or over an earlier analysis unless ``overwrite``."""
    inputs = {p.resolve() for p in study.inputs}
    planned = planned_paths(out, study)
    clash = [p for p in planned if p.resolve() in inputs]
    if clash:
        raise ConfigError(f"output {clash[0]} is one of the inputs; choose another output folder (--out)")
    existing = [p for p in planned if p.exists()]
    if existing and not options.overwrite:
        shown = (", ".join(str(p) for p in existing[:4])
                 + (f" and {len(existing) - 4} more" if len(existing) > 4 else ""))
        raise ConfigError(f"{out} already holds an analysis ({shown}); choose another folder with --out, or pass "
                          "--overwrite to replace it")


def write_dicts(path: Path, columns: Sequence[str], rows: Iterable[dict[str, object]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: cell(r.get(k, "")) for k in columns})
    write_bytes(path, buf.getvalue().encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, data)


def beeswarms(models: Sequence[ShapModel]) -> dict[tuple[str, str], bytes]:
    out = {}
    for m in models:
        shown = [[math.nan if (name == "capacity" and m.design.folded[j]) else m.design.X[j][f]
                  for f, name in enumerate(m.design.features)] for j in range(len(m.y))]
        for f, name in enumerate(m.design.features):      # categories coloured in their natural order
            if name in m.design.categorical:
                levels = sorted({row[f] for row in shown}, key=lambda v: order_key(name, str(v)))
                for row in shown:
                    row[f] = float(levels.index(row[f]))
        title = (f"{m.category}: {target(m.target).label}  (R² {m.r2_train:.2f} in-sample, "
                 f"{m.r2_holdout:.2f} held-out, n = {len(m.y)})")
        png = beeswarm_png(m.design.features, shown, m.shap, title)
        if png is not None:
            out[(m.category, m.target)] = png
    return out


def write_outputs(outcome: AnalysisOutcome, out: Path, options: AnalysisOptions) -> dict[str, Path]:
    """Write everything; returns {kind: path} of the files written.  Files of an earlier analysis in the folder
    (only ever replaced with ``overwrite``) that this one does not produce are removed, so none is stale."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    study, files = outcome.study, {}

    def table(kind: str, columns: Sequence[str], rows: Iterable[dict[str, object]]) -> None:
        write_dicts(paths[kind], columns, rows)
        files[kind] = paths[kind]

    write_csv(outcome.scores, paths["scores"])
    files["scores"] = paths["scores"]
    table("effects", EFFECT_COLUMNS, (e.as_dict() for e in outcome.effects))
    table("findings", FINDING_COLUMNS, (v.as_dict() for v in outcome.findings))
    table("best", BEST_COLUMNS, outcome.best)
    if outcome.table1:
        table("table1", TABLE1_COLUMNS, outcome.table1)
    if study.factors is not None:
        f = study.factors
        table("factors", f.columns, ({**f.values[c], "config": c} for c in f.configs))
    pngs: dict[tuple[str, str], bytes] = {}
    if outcome.shap:
        table("shap", SUMMARY_COLUMNS, (row for m in outcome.shap for row in m.summary))
        table("shap_values", VALUE_COLUMNS, (row for m in outcome.shap for row in value_rows(m)))
        pngs = beeswarms(outcome.shap)
        for (cat, key), png in pngs.items():
            path = out / shap_png_name(cat, key)
            write_bytes(path, png)
            files[f"shap:{cat}:{key}"] = path
    if options.report:
        write_bytes(paths["report"], render_html(outcome, options, pngs).encode("utf-8"))
        files["report"] = paths["report"]
    written = {p.resolve() for p in files.values()}
    for p in planned_paths(out, study):
        if p.exists() and p.resolve() not in written:
            p.unlink()
    return files
