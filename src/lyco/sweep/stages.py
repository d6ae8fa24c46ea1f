"""The sweep's stages as plain functions: train every run, evaluate the pool, analyse; and ``run`` = all three.

Each stage is idempotent: finished runs are skipped (interrupted ones resume), the evaluation is skipped when its
inputs are unchanged (and otherwise re-uses its image/feature cache), the analysis (:func:`lyco.analysis.analyze`,
called in this process) is redone only when the results, the factors or its options changed.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis import AnalysisOptions, ShapSettings, analyze
from ..errors import ConfigError, LycoError, StateError, did_you_mean
from ..io.atomic import write_atomic
from .config import AnalyzeConfig
from .executors import LocalExecutor, RayExecutor
from .grid import FACTOR_COLUMNS
from .jobs import EvalShardJob, JobResult, TrainJob, spawn
from .manifest import Manifest, read_attempts
from .spec import Sweep
from .state import CHANGED, FINISHED, MISSING, run_state
from .tomlw import dumps

log = logging.getLogger("lyco")
Executor = LocalExecutor | RayExecutor


@dataclass
class StageReport:
    stage: str
    ok: bool
    message: str
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ train
def train_stage(sw: Sweep, ex: Executor, manifest: Manifest, only: set[str] | None = None) -> StageReport:
    """Train every run that is not finished (interrupted ones resume); a failed run is retried by the executor
    and reported, the others go on."""
    t0 = time.perf_counter()
    names = {r.name for r in sw.runs} | {r.config for r in sw.runs}
    for o in sorted(only or ()):
        if o not in names:
            raise ConfigError(f"--only {o}: no such run or config id{did_you_mean(o, names)}")
    runs = [r for r in sw.runs if only is None or r.name in only or r.config in only]
    states = {r.name: run_state(r) for r in runs}
    changed = [r for r in runs if states[r.name].state == CHANGED]
    if changed:
        raise ConfigError("these runs were made with other settings than the sweep now gives them:\n" + "\n".join(
            f"  {r.name}: {r.config_file}" for r in changed) + "\nrestore the sweep's settings, or move those run "
            "folders and their .toml files away to train them again")
    lost = [r for r in runs if states[r.name].state == MISSING]     # finished, but adapters gone: the user decides
    for r in lost:
        log.warning("lyco sweep: %s: %s", r.name, states[r.name].note)
        manifest.update_run(r.name, state=MISSING, ok=False, error=states[r.name].note)
    todo = [r for r in runs if states[r.name].state not in (FINISHED, MISSING)]
    done = len(runs) - len(todo) - len(lost)
    log.info("lyco sweep: %d runs, %d finished, %d to train (%s)", len(runs), done, len(todo), ex.describe())
    for r in todo:
        manifest.update_run(r.name, state=states[r.name].state, config=r.config, seed=r.seed, dir=str(r.dir))

    def record(res: JobResult) -> None:
        st = run_state(sw.run(res.key))
        rec = manifest.run(res.key)
        attempts = sum(e.get("event") == "start" for e in read_attempts(sw.out, res.key))
        manifest.update_run(res.key, state=st.state, ok=res.ok, attempts=attempts, error=res.note if not res.ok else "",
                            seconds=round(rec.get("seconds", 0.0) + res.seconds, 2), devices=res.devices)
        log.info("lyco sweep: %s %s%s", res.key, "finished" if res.ok else "FAILED",
                 f" in {res.seconds:.0f} s" if res.seconds else "" if res.ok else f": {res.note}")

    results = ex.map([TrainJob(r, sw.out) for r in todo], record)
    failed = sorted([r.key for r in results if not r.ok] + [r.name for r in lost])
    msg = f"{len(runs) - len(failed)} of {len(runs)} runs finished ({done} already were)"
    if failed:
        msg += f"; failed: {', '.join(failed)} (logs in {sw.out / 'logs'})"
    return StageReport("train", not failed, msg, time.perf_counter() - t0, failed)


# ------------------------------------------------------------------------------------------------ evaluate
def pool(sw: Sweep, partial: bool = False) -> list[dict[str, Any]]:
    """The evaluation pool: every checkpoint of every finished run, labelled with config, seed and epoch."""
    ckpts, missing = [], []
    for r in sw.runs:
        st = run_state(r)
        if st.state != FINISHED:
            missing.append(f"{r.name} ({st.state})")
            if not partial:
                continue
        for p in r.points:
            f = st.checkpoints.get(p)
            if f is not None:
                ckpts.append({"name": r.checkpoint_name(p), "adapter": str(f), "config": r.config, "seed": r.seed,
                              "epoch": p})
    if missing and not partial:
        raise StateError(f"{len(missing)} run(s) are not finished: {', '.join(missing[:8])}"
                         f"{' ...' if len(missing) > 8 else ''}; train them first (lyco sweep train), or evaluate "
                         "what exists with --partial (the ranks then cover a smaller pool)")
    if len(ckpts) < 2:
        raise StateError(f"the pool has {len(ckpts)} checkpoint(s); ranks need at least two")
    return ckpts


def _fingerprint(data: dict[str, Any], ckpts: list[dict[str, Any]]) -> str:
    h = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode())
    for c in ckpts:
        st = Path(c["adapter"]).stat()
        h.update(f"{c['adapter']}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _shards(sw: Sweep, ex: Executor, data: dict[str, Any], ckpts: list[dict[str, Any]],
            cache: str) -> list[EvalShardJob]:
    n = min(sw.cfg.executor.eval_shards or ex.slots, len(ckpts))
    if n < 2:
        return []
    jobs, start = [], 0
    for k in range(n):
        size = len(ckpts) // n + (1 if k < len(ckpts) % n else 0)
        part = ckpts[start:start + size]
        start += size
        path = sw.out / "eval" / "shards" / f"shard-{k}.toml"
        shard = dict(data, checkpoints=part, out=str(path.parent / f"shard-{k}"), cache=cache)
        write_atomic(path, dumps(shard, header=f"eval shard {k} of {n}: written by lyco sweep"))
        jobs.append(EvalShardJob(k, path, sw.out, with_base=k == 0))
    return jobs


def eval_stage(sw: Sweep, ex: Executor, manifest: Manifest, partial: bool = False) -> StageReport:
    """Evaluate the pool: images and features in parallel shards, then ``lyco eval`` on the whole pool."""
    t0 = time.perf_counter()
    ckpts = pool(sw, partial)
    data = dict(sw.eval_data, checkpoints=ckpts)
    key = _fingerprint(data, ckpts)
    results = sw.out / "eval" / "results.csv"
    if manifest.stage("eval").get("key") == key and results.is_file():
        return StageReport("eval", True, f"up to date ({len(ckpts)} checkpoints): {results}")
    cfg_file = sw.out / "eval" / "pool.toml"
    write_atomic(cfg_file, dumps(data, header="the sweep's evaluation pool: written by lyco sweep"))
    cache = str(Path(data["cache"]) if data.get("cache") else sw.out / "eval" / "cache")
    shards = _shards(sw, ex, data, ckpts, cache)
    if shards:
        log.info("lyco sweep: generating and extracting in %d shards", len(shards))
        done = ex.map(shards, lambda r: log.info("lyco sweep: %s %s", r.key, "done" if r.ok else f"FAILED: {r.note}"))
        bad = [r.key for r in done if not r.ok]
        if bad:
            log.warning("lyco sweep: shards %s failed; the final pass computes what is missing", ", ".join(bad))
    log.info("lyco sweep: evaluating the pool of %d checkpoints", len(ckpts))
    rc = spawn(["eval", str(cfg_file), "--no-progress"], ex.final_resources(), sw.out / "logs" / "eval.log")
    secs = time.perf_counter() - t0
    if rc != 0 or not results.is_file():
        manifest.update_stage("eval", ok=False, error=f"lyco eval exited with {rc}")
        return StageReport("eval", False, f"lyco eval exited with {rc}; see {sw.out / 'logs' / 'eval.log'}", secs)
    manifest.update_stage("eval", ok=True, key=key, checkpoints=len(ckpts), seconds=round(secs, 2),
                          results=str(results), partial=partial)
    return StageReport("eval", True, f"{len(ckpts)} checkpoints evaluated: {results.parent / 'report.html'}", secs)


# ------------------------------------------------------------------------------------------------ analyse
def _cell(v: Any) -> str:
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else str(v)


#: the columns of factors.csv before the users' own labels.  ``alpha1`` is left out: the analysis reads α = 1 from
#: ``alpha`` / ``dim`` (the adapter's scale), and a second column saying the same would make α = 1 a two-factor
#: change; ``default`` marks each algorithm's default configuration.
FACTORS_CSV = ("config", "algo", "default", "preset", "lr", "lr_level", "dim", "alpha", "factor", "capacity")


def factors_csv(sw: Sweep) -> str:
    """``config`` + the factor columns (derived, then the users' labels), one row per configuration."""
    extra = sorted({k for c in sw.configs for k in c.factors} - set(FACTOR_COLUMNS) - set(FACTORS_CSV))
    cols = [*FACTORS_CSV, *extra]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for c in sw.configs:
        row = dict(c.factors, config=c.id, default="true" if c.default else "false")
        w.writerow([_cell(row.get(k)) for k in cols])
    return buf.getvalue()


def configs_csv(sw: Sweep) -> str:
    """The configurations for people: id, label, default, what they vary, their overrides, their factors."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["config", "label", "default", "varies", "set", *FACTOR_COLUMNS])
    for c in sw.configs:
        w.writerow([c.id, c.label, c.default, c.varies, json.dumps(c.set, sort_keys=True),
                    *(_cell(c.factors.get(k)) for k in FACTOR_COLUMNS)])
    return buf.getvalue()


def write_tables(sw: Sweep) -> Path:
    """``factors.csv`` and ``configs.csv`` in the sweep folder (rewritten only when they change)."""
    for name, text in (("factors.csv", factors_csv(sw)), ("configs.csv", configs_csv(sw))):
        p = sw.out / name
        if not p.is_file() or p.read_text(encoding="utf-8") != text:
            write_atomic(p, text)
    return sw.out / "factors.csv"


def analysis_options(sw: Sweep, threads: int) -> AnalysisOptions:
    """The sweep's ``analyze`` options as :class:`lyco.analysis.AnalysisOptions` (the sweep owns its analysis
    folder, so an earlier analysis there is replaced)."""
    a = sw.cfg.analyze or AnalyzeConfig()
    shap = ShapSettings(subset=a.shap_subset, holdout=a.holdout, threads=threads,
                        epochs=tuple(str(e) for e in a.shap_epochs) if a.shap_epochs else None)
    return AnalysisOptions(exclude=tuple(str(x) for x in a.exclude), encoder=a.encoder, resize=a.resize, shap=a.shap,
                           shap_settings=shap, report=a.report, title=f"lyco sweep {sw.cfg.name}", overwrite=True)


def _analysis_key(results: Path, factors: Path, options: AnalysisOptions) -> str:
    settings = dataclasses.replace(options, shap_settings=dataclasses.replace(options.shap_settings, threads=None))
    return hashlib.sha256(results.read_bytes() + factors.read_bytes() + repr(settings).encode()).hexdigest()[:20]


def _up_to_date(rec: dict[str, Any], key: str) -> bool:
    files = rec.get("files") or {}
    return bool(rec.get("ok") and rec.get("key") == key and files
                and all(Path(f).is_file() for f in files.values()))


def analyze_stage(sw: Sweep, ex: Executor, manifest: Manifest) -> StageReport:
    """:func:`lyco.analysis.analyze` on the evaluation's results and the sweep's factors, in this process; redone
    only when its inputs or options changed (or its files are gone)."""
    t0 = time.perf_counter()
    factors = write_tables(sw)
    results = sw.out / "eval" / "results.csv"
    if not results.is_file():
        return StageReport("analyze", False, f"no evaluation results yet ({results}); run lyco sweep eval first")
    out = sw.out / "analysis"
    options = analysis_options(sw, ex.final_resources().threads)
    key = _analysis_key(results, factors, options)
    if _up_to_date(manifest.stage("analyze"), key):
        return StageReport("analyze", True, f"up to date: {out}")
    log.info("lyco sweep: analysing %s", results)
    try:
        outcome = analyze(results, factors, out, options)
    except LycoError as exc:
        manifest.update_stage("analyze", ok=False, key=None, out=str(out), error=str(exc))
        return StageReport("analyze", False, f"lyco analyze: {exc}", time.perf_counter() - t0)
    except Exception as exc:
        manifest.update_stage("analyze", ok=False, key=None, out=str(out), error=f"{type(exc).__name__}: {exc}")
        raise
    for note in outcome.notes + ([outcome.shap_skipped] if outcome.shap_skipped and options.shap else []):
        log.info("lyco sweep: analysis note: %s", note)
    findings = {v.check.name: v.verdict for v in outcome.findings if v.category == "all"}
    secs = time.perf_counter() - t0
    manifest.update_stage("analyze", ok=True, key=key, out=str(out), error="", seconds=round(secs, 2),
                          files={k: str(p) for k, p in outcome.files.items() if not k.startswith("shap:")},
                          shap=outcome.shap_skipped or f"{len(outcome.shap)} models", findings=findings)
    main = outcome.files.get("report", outcome.files.get("findings", out))
    return StageReport("analyze", True, f"written to {out}: {main}", secs)


def run_sweep(sw: Sweep, ex: Executor, manifest: Manifest, partial: bool = False) -> list[StageReport]:
    """Train, evaluate, analyse.  Evaluation waits for every run (unless ``partial``)."""
    write_tables(sw)
    reports = [train_stage(sw, ex, manifest)]
    if not reports[0].ok and not partial:
        reports.append(StageReport("eval", False, "skipped: not every run finished (fix and rerun; finished runs are "
                                   "kept), or evaluate what exists with --partial"))
        return reports
    reports.append(eval_stage(sw, ex, manifest, partial))
    if reports[-1].ok and sw.cfg.analyze is not None:
        reports.append(analyze_stage(sw, ex, manifest))
    return reports
