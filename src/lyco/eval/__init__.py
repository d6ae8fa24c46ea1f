"""The paper's evaluation framework: generate with the base model and each checkpoint on matched seeds, extract
features, compute fidelity / controllability / diversity / preservation metrics, rank-normalise, report.

    from lyco.eval import load_eval_config, evaluate
    outcome = evaluate(load_eval_config("eval.toml"))  # writes <out>/report.html, results.csv, results.json

Command line: ``lyco eval CONFIG.toml``.  Metric functions: :mod:`lyco.eval.metrics.functional`.
"""
from .config import EvalConfig, load_eval_config
from .plan import Outcome, Plan
from .runner import evaluate

__all__ = ["EvalConfig", "Outcome", "Plan", "evaluate", "load_eval_config"]
