"""The analysis of a study: plan → scores → effects → findings → summaries → SHAP → outputs.

    from lyco.analysis import analyze
    outcome = analyze("eval_out/results.csv", "factors.csv", "analysis_out")

Every phase is a plain function of what the previous ones produced; :func:`analyze` reads in one screen.  What
each phase computes: docs/ANALYSIS.md.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

from ..errors import ConfigError, did_you_mean
from ..eval.rank import Row, aggregate, rank_normalize
from .effects import compute_effects
from .explain import ENABLE, ShapModel, available, build_design, fit_target
from .factors import Factors, code_factors
from .findings import judge
from .images import Image, read_images
from .outputs import check_outputs, write_outputs
from .plan import AnalysisOptions, AnalysisOutcome, Study
from .summary import best_epochs, criterion_scores, table1
from .table import (
    Checkpoint,
    FactorsSource,
    ResultsSource,
    load_factor_rows,
    load_results,
    metric_directions,
    natural_key,
)
from .targets import TARGETS, Column, resolve_targets

log = logging.getLogger("lyco")
BASE = "base"


# ------------------------------------------------------------------------------------------------- phases
def plan_study(results: ResultsSource, factors: FactorsSource | None, options: AnalysisOptions) -> Study:
    """Read and check the inputs; choose the pool (everything but the base model and the excluded configs)."""
    res = load_results(results)
    inputs = [Path(results)] if isinstance(results, (str, Path)) else []
    configs = set(res.configs())
    for c in options.exclude:
        if c not in configs:
            raise ConfigError(f"exclude: config {c!r} is not in {res.source}{did_you_mean(c, configs)}")
    dropped = set(options.exclude) | (set() if options.include_base else {BASE})
    pool = [ck for ck in res.checkpoints.values() if ck.config not in dropped and ck.name not in dropped]
    if len(pool) < 2:
        raise ConfigError(f"{res.source}: {len(pool)} checkpoint(s) left to rank (the base model and excluded "
                          "configs are not ranked); ranks need at least two")
    coded = None
    if factors is not None:
        coded = _factors(factors, {ck.config for ck in pool}, dropped)
        inputs += [Path(factors)] if isinstance(factors, (str, Path)) else []
    direction = metric_directions(res, options.higher_is_better, options.lower_is_better)
    for opt, idx in (("encoder", 1), ("resize", 2)):
        wanted = getattr(options, opt)
        have = {c[idx] for c in res.columns}
        if wanted is not None and wanted not in have:
            raise ConfigError(f"{opt} {wanted!r}: no metric column of {res.source} has it{did_you_mean(wanted, have)}"
                              f" (column {opt!r} has: {', '.join(sorted(have))})")
    study = Study(res, sorted(pool, key=_ck_order), coded,
                  resolve_targets(res.columns, options.encoder, options.resize), direction, [], inputs)
    missing = [t.label for t in TARGETS if t.key not in study.targets]
    if missing:
        study.notes.append(f"no column for {', '.join(missing)}: those targets are left out")
    if coded is None:
        study.notes.append("no factors table: only epoch effects; no Table 1, per-factor plots or SHAP "
                           "(give --factors FACTORS.csv)")
    study.images = _images(results, options, study)
    return study


def _ck_order(ck: Checkpoint) -> tuple:
    return (natural_key(ck.config), natural_key(ck.seed), natural_key(ck.epoch), ck.name)


def _factors(source: FactorsSource, pool_configs: set[str], dropped: set[str]) -> Factors:
    raw = load_factor_rows(source)
    unknown = [c for c in raw.rows if c not in pool_configs and c not in dropped]
    if unknown:
        raise ConfigError(f"{raw.source}: column 'config' has {', '.join(repr(c) for c in unknown)}, not in the "
                          f"result table{did_you_mean(unknown[0], pool_configs)}; remove the row or evaluate "
                          "that config")
    absent = sorted(pool_configs - set(raw.rows) - {BASE}, key=natural_key)     # a ranked base needs no row
    if absent:
        raise ConfigError(f"{raw.source}: column 'config' lacks {', '.join(repr(c) for c in absent)} of the result "
                          "table; add a row per config (or exclude the config)")
    raw.rows = {c: r for c, r in raw.rows.items() if c not in dropped}
    return code_factors(raw)


def _images(results: ResultsSource, options: AnalysisOptions, study: Study) -> list[Image]:
    path = Path(options.images) if options.images is not None else None
    if path is None and isinstance(results, (str, Path)) and (Path(results).parent / "images.csv").is_file():
        path = Path(results).parent / "images.csv"
    if path is None:
        study.notes.append("no images table (lyco eval's images.csv): the report has no contact sheets")
        return []
    study.inputs.append(path)
    return read_images(path)


def score(study: Study) -> list[Row]:
    """Rank-normalised scores over the whole pool, per leaf and metric column; then class and category means."""
    ranked = rank_normalize(study.results.rows, study.higher_is_better, pool={ck.name for ck in study.pool})
    return ranked + aggregate(ranked)


def explain(category_rows: list[Row], study: Study, options: AnalysisOptions) -> tuple[list[ShapModel], str | None]:
    """One SHAP model per category and target (None and the reason when skipped)."""
    if not options.shap:
        return [], "SHAP was not asked for"
    if study.factors is None:
        return [], "SHAP needs the factors table (--factors)"
    if not available():
        return [], f"SHAP skipped: catboost is not installed; to enable it: {ENABLE}"
    design = build_design(study.pool, study.factors, options.shap_settings)
    by: dict[tuple[str, Column], dict[str, float]] = defaultdict(dict)
    for r in category_rows:
        if not math.isnan(r.score):
            by[(r.category, r.column)][r.checkpoint] = r.score
    models = []
    for cat in study.categories:
        for t in TARGETS:
            col = study.targets.get(t.key)
            if col is None:
                continue
            m = fit_target(design, by.get((cat, col), {}), cat, t.key, col, options.shap_settings)
            if m is not None:
                models.append(m)
    return models, None if models else "SHAP skipped: no target has three or more scored checkpoints that differ"


def analyze(results: ResultsSource, factors: FactorsSource | None = None, out_dir: str | Path | None = None,
            options: AnalysisOptions | None = None) -> AnalysisOutcome:
    """The whole analysis; writes the CSVs, PNGs and report.html into ``out_dir`` when given."""
    options = options or AnalysisOptions()
    study = plan_study(results, factors, options)
    if out_dir is not None:
        check_outputs(Path(out_dir), study, options)       # before any work: never overwrite silently
    scores = score(study)
    category_rows = [r for r in scores if r.level == "category"]
    effects = compute_effects(category_rows, study.pool, study.factors)
    findings = judge(effects, study.targets, study.categories)
    crit = criterion_scores(category_rows, study.targets)
    outcome = AnalysisOutcome(study, scores, effects, findings,
                              table1(crit, study.pool, study.factors, study.categories) if study.factors else [],
                              best_epochs(crit, study.pool, study.factors, study.categories))
    outcome.shap, outcome.shap_skipped = explain(category_rows, study, options)
    if outcome.shap_skipped and options.shap:
        log.warning("%s", outcome.shap_skipped)
    if out_dir is not None:
        outcome.files = write_outputs(outcome, Path(out_dir), options)
    return outcome
