"""Analyse an evaluated study as the paper did: pool-wide ranks, effects, findings F1-F5, Table 1, SHAP, report.

RESULTS is lyco eval's results.csv, or any table in its schema (see the README).  FACTORS has a ``config`` column
plus one column per factor (algo, preset, lr, dim, alpha, factor, ...); lyco sweep writes it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .explain import SUBSETS, ShapSettings
from .plan import AnalysisOptions
from .runner import analyze


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lyco analyze", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Writes scores.csv, effects.csv, findings.csv, table1.csv, best.csv, "
                                       "factors_coded.csv, shap.csv, shap_values.csv, shap/*.png and report.html.")
    p.add_argument("results", help="result table (lyco eval's results.csv or the same schema)")
    p.add_argument("--factors", help="factors table: a 'config' column plus factor columns")
    p.add_argument("--out", help="output folder (default: 'analysis' next to RESULTS)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier analysis in --out")
    p.add_argument("--exclude", action="append", default=[], metavar="CONFIG",
                   help="leave a config out before ranking (repeatable)")
    p.add_argument("--include-base", action="store_true", help="rank the base model with the checkpoints")
    p.add_argument("--encoder", help="image encoder of the ImSim/Vendi targets (default dino)")
    p.add_argument("--resize", help="dataset resize mode of the ImSim targets (default letterbox)")
    p.add_argument("--higher-is-better", action="append", default=[], metavar="METRIC",
                   help="direction of a metric lyco does not know (repeatable)")
    p.add_argument("--lower-is-better", action="append", default=[], metavar="METRIC",
                   help="direction of a metric lyco does not know, e.g. a distance (repeatable)")
    p.add_argument("--images", help="images table for contact sheets (default: images.csv next to RESULTS)")
    p.add_argument("--contact-prompt-type", help="prompt type of the contact sheets (default alter, else trigger)")
    p.add_argument("--no-shap", action="store_true", help="skip SHAP")
    p.add_argument("--shap-subset", choices=SUBSETS, default="paper",
                   help="paper: drop α = 1 and below-default-capacity variants, fold native capacity into algo")
    p.add_argument("--shap-epochs", help="comma-separated epochs for SHAP (default all)")
    p.add_argument("--no-holdout", action="store_true", help="no leave-one-config-out R² (one fit per config)")
    p.add_argument("--threads", type=int, help="CatBoost threads (default all cores)")
    p.add_argument("--no-report", action="store_true", help="CSVs and PNGs only")
    p.add_argument("--title", default="lyco analysis", help="title of report.html (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    shap = ShapSettings(subset=args.shap_subset, holdout=not args.no_holdout, threads=args.threads,
                        epochs=tuple(e.strip() for e in args.shap_epochs.split(",")) if args.shap_epochs else None)
    options = AnalysisOptions(exclude=tuple(args.exclude), include_base=args.include_base, encoder=args.encoder,
                              resize=args.resize, higher_is_better=tuple(args.higher_is_better),
                              lower_is_better=tuple(args.lower_is_better), shap=not args.no_shap, shap_settings=shap,
                              images=args.images, contact_prompt_type=args.contact_prompt_type,
                              report=not args.no_report, title=args.title, overwrite=args.overwrite)
    out = Path(args.out) if args.out else Path(args.results).parent / "analysis"
    outcome = analyze(args.results, args.factors, out, options)
    for note in outcome.notes:
        print(f"note: {note}")
    if outcome.shap_skipped and options.shap:
        print(f"note: {outcome.shap_skipped}")
    overall = [v for v in outcome.findings if v.category == "all" and v.verdict != "no data"]
    if overall:
        print("findings (all categories):")
        for v in overall:
            print(f"  {v.check.name:<32} {v.verdict}")
    for kind in ("report", "scores", "effects", "findings", "shap"):
        if kind in outcome.files:
            print(f"{kind}: {outcome.files[kind]}")
    return 0
