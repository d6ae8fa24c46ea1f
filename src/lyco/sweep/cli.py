"""``lyco sweep COMMAND SWEEP.toml``: the paper's study as one file — train a grid of configurations × seeds,
evaluate every checkpoint in one pool, analyse.

    lyco sweep plan SWEEP.toml       runs, checkpoints, images to generate, rough cost (runs nothing)
    lyco sweep run SWEEP.toml        train every run, evaluate the pool, analyse (resumes where it stopped)
    lyco sweep status SWEEP.toml     per-run state, attempts, errors, measured speed
    lyco sweep train SWEEP.toml      the stages on their own
    lyco sweep eval SWEEP.toml
    lyco sweep analyze SWEEP.toml

Executors: local (default; --jobs N runs N at a time, threads and GPUs split between them) or Ray core tasks
(--executor ray [--address auto], pip install 'lyco[ray]').  Killing a sweep at any moment and starting it again
loses nothing and redoes nothing finished.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from ..errors import ConfigError
from .config import ExecutorConfig
from .executors import make_executor
from .manifest import Manifest, read_attempts
from .plan import estimate, plan_text, run_steps
from .spec import Sweep, load_sweep
from .stages import analyze_stage, eval_stage, run_sweep, train_stage, write_tables
from .state import run_state

COMMANDS = ("plan", "run", "status", "train", "eval", "analyze")
log = logging.getLogger("lyco")
#: the analysis files ``status`` lists (the others are in the same folder)
MAIN_OUTPUTS = ("report", "scores", "effects", "findings", "shap")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lyco sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("command", choices=COMMANDS, help="what to do (see below)")
    p.add_argument("sweep", help="the sweep file (TOML); see examples/sweep/")
    ex = p.add_argument_group("executor (overrides the file's [executor])")
    ex.add_argument("--executor", choices=("local", "ray"), dest="kind",
                    help="local subprocesses (default) or Ray core tasks (pip install 'lyco[ray]')")
    ex.add_argument("--jobs", "-j", type=int, help="local: runs at a time")
    ex.add_argument("--threads", type=int, help="local: CPU threads shared by the jobs")
    ex.add_argument("--address", help="ray: cluster address ('auto' = the running cluster)")
    ex.add_argument("--gpus-per-run", type=int, help="GPUs per run (default: 1 where there are GPUs, else 0)")
    ex.add_argument("--cpus-per-run", type=int, help="ray: CPUs (and threads) per run")
    ex.add_argument("--max-retries", type=int, help="retries of a failed run (it resumes from its last state)")
    p.add_argument("--only", help="train: only these runs or config ids (comma-separated)")
    p.add_argument("--partial", action="store_true", help="eval/run: evaluate the finished runs even if some are not")
    return p


def _argv(argv: list[str]) -> list[str]:
    """Accept ``lyco sweep SWEEP.toml COMMAND`` too."""
    if len(argv) >= 2 and argv[0] not in COMMANDS and argv[1] in COMMANDS:
        return [argv[1], argv[0], *argv[2:]]
    return argv


def _executor_cfg(sw: Sweep, args: argparse.Namespace) -> ExecutorConfig:
    over = {k: v for k, v in (("kind", args.kind), ("jobs", args.jobs), ("threads", args.threads),
                              ("address", args.address), ("gpus_per_run", args.gpus_per_run),
                              ("cpus_per_run", args.cpus_per_run), ("max_retries", args.max_retries)) if v is not None}
    try:
        return ExecutorConfig(**{**sw.cfg.executor.model_dump(), **over})
    except Exception as exc:  # noqa: BLE001 - a bad flag value
        raise ConfigError(f"executor options: {exc}") from None


def _plan(sw: Sweep, ex: ExecutorConfig) -> int:
    desc = (f"executor: local, {ex.jobs} job(s) at a time" if ex.kind == "local" else
            f"executor: Ray ({ex.address or 'a local instance'}), {ex.cpus_per_run} CPU(s) per run; times below assume "
            f"{ex.jobs} at a time (--jobs)")
    states = {r.name: run_state(r).state for r in sw.runs}
    print(plan_text(sw, estimate(sw), ex.jobs, desc, states))
    return 0


def _measured(sw: Sweep, manifest: Manifest | None) -> list[str]:
    """Speeds measured by the finished work: seconds per training step (start-up included) and per image."""
    secs, steps = 0.0, 0
    memo: dict[str, int | None] = {}
    for r in sw.runs:
        ends = [e for e in read_attempts(sw.out, r.name) if e.get("event") == "end"]
        if len(ends) == 1 and ends[0].get("state") == "finished":
            n = run_steps(r, memo)
            if n:
                secs, steps = secs + float(ends[0]["seconds"]), steps + n
    lines = [f"  measured: {secs / steps:.3g} s per training step of one run, start-up included ({steps} steps)"] \
        if steps else []
    ev = manifest.stage("eval") if manifest else {}
    if ev.get("ok") and ev.get("seconds"):
        cost = estimate(sw)
        if cost.images_per_model:
            images = cost.images_per_model * (int(ev["checkpoints"]) + 1)
            lines.append(f"  measured: {float(ev['seconds']) / images:.3g} s per evaluation image, everything included "
                         f"({images} images)")
    return lines


def _run_lines(sw: Sweep, manifest: Manifest | None) -> list[str]:
    """One line per run: state, checkpoints, attempts, note; then the counts."""
    counts: dict[str, int] = {}
    lines = [f"  {'run':<16} {'state':<12} {'checkpoints':<12} {'attempts':>8}  note"]
    for r in sw.runs:
        st = run_state(r)
        counts[st.state] = counts.get(st.state, 0) + 1
        starts = [e for e in read_attempts(sw.out, r.name) if e.get("event") == "start"]
        err = (manifest.run(r.name).get("error") if manifest and st.state != "finished" else "") or ""
        note = st.note or (f"last state: step {st.last_state}" if st.last_state is not None and st.state != "finished"
                           else "")
        note = "; ".join(x for x in (note, err) if x)
        lines.append(f"  {r.name:<16} {st.state:<12} {len(st.checkpoints)}/{len(r.points):<10} {len(starts):>8}  "
                     f"{note}")
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return lines


def _stage_lines(manifest: Manifest) -> list[str]:
    """The evaluation's and the analysis' outcome, their files and the findings."""
    lines = []
    for stage in ("eval", "analyze"):
        rec = manifest.stage(stage)
        if not rec:
            continue
        lines.append(f"  {stage}: {'ok' if rec.get('ok') else 'failed: ' + str(rec.get('error', ''))}"
                     f" ({rec.get('updated', '')})")
        if stage == "eval" and rec.get("ok"):
            lines.append(f"    results: {rec.get('results', '')}")
        if stage == "analyze" and rec.get("ok"):
            files = rec.get("files") or {}
            lines += [f"    {kind}: {files[kind]}" for kind in MAIN_OUTPUTS if kind in files]
            lines.append(f"    SHAP: {rec.get('shap', '')}; more tables in {rec.get('out', '')}")
            found = rec.get("findings") or {}
            judged = {k: v for k, v in found.items() if v != "no data"}
            lines.append(f"    findings (all categories; {len(found) - len(judged)} checks without data in this grid):")
            lines += [f"      {name:<32} {verdict}" for name, verdict in judged.items()]
    return lines


def _status(sw: Sweep) -> int:
    manifest = Manifest(sw.out, sw.file) if (sw.out / "sweep.json").is_file() else None
    print(f"lyco sweep {sw.cfg.name!r}: {sw.out}")
    print("\n".join(_run_lines(sw, manifest) + _measured(sw, manifest) + (_stage_lines(manifest) if manifest else [])))
    return 0


def _sigterm(signum, frame):  # a signal handler's signature
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(_argv(list(sys.argv[1:] if argv is None else argv)))
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("lyco sweep: interrupted; run the same command again to continue (finished runs are kept, "
              "interrupted ones resume from their last state)", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    sw = load_sweep(args.sweep)
    if args.command == "plan":
        return _plan(sw, _executor_cfg(sw, args))
    if args.command == "status":
        return _status(sw)
    logging.getLogger("lyco").setLevel(logging.INFO)
    if args.command != "status" and hasattr(signal, "SIGTERM"):
        try:
            signal.signal(signal.SIGTERM, _sigterm)
        except ValueError:              # not the main thread (called from Python): leave signals alone
            pass
    ex = make_executor(_executor_cfg(sw, args))
    manifest = Manifest(sw.out, sw.file)
    for note in sw.notes:
        log.info("lyco sweep: note: %s", note)
    if args.command == "train":
        only = set(args.only.split(",")) if args.only else None
        write_tables(sw)
        reports = [train_stage(sw, ex, manifest, only)]
    elif args.command == "eval":
        reports = [eval_stage(sw, ex, manifest, args.partial)]
    elif args.command == "analyze":
        reports = [analyze_stage(sw, ex, manifest)]
    else:
        reports = run_sweep(sw, ex, manifest, args.partial)
    for r in reports:
        took = f" ({r.seconds:.0f} s)" if r.seconds else ""
        print(f"{r.stage}: {'ok' if r.ok else 'FAILED'}{took}: {r.message}")
    return 0 if all(r.ok for r in reports) else 1
