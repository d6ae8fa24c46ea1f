"""The paper's study end to end: a grid of training configurations × seeds, every checkpoint evaluated in one
pool, the analysis on top (``lyco sweep``).

    from lyco.sweep import load_sweep, make_executor, run_sweep, Manifest
    sw = load_sweep("examples/sweep/microworld-paper.toml")     # every problem reported before anything runs
    reports = run_sweep(sw, make_executor(sw.cfg.executor), Manifest(sw.out, sw.file))

See :mod:`lyco.sweep.config` for the file format and :mod:`lyco.sweep.state` for how a run's state is decided.
"""
from .config import SweepConfig
from .executors import LocalExecutor, RayExecutor, make_executor
from .grid import PAPER_GRID, derive_factors
from .manifest import Manifest
from .spec import RunSpec, Sweep, load_sweep
from .stages import StageReport, analyze_stage, eval_stage, run_sweep, train_stage
from .state import RunState, run_state

__all__ = ["PAPER_GRID", "LocalExecutor", "Manifest", "RayExecutor", "RunSpec", "RunState", "StageReport", "Sweep",
           "SweepConfig", "analyze_stage", "derive_factors", "eval_stage", "load_sweep", "make_executor",
           "run_state", "run_sweep", "train_stage"]
