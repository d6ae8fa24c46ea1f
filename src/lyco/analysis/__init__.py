"""The paper's study analysis: rank-normalised scores over the whole pool, effects of every factor, the findings
F1–F5 as checks, Table 1, the best epoch per config, SHAP (CatBoost) and an HTML report (docs/ANALYSIS.md).

    from lyco.analysis import analyze, AnalysisOptions
    outcome = analyze("eval_out/results.csv", "factors.csv", "analysis_out")
    outcome.findings                  # verdicts per check and category; files: outcome.files

Command line: ``lyco analyze RESULTS.csv [--factors FACTORS.csv] [--out DIR]``.  SHAP needs the optional extra
``lyco[analysis]`` (catboost); everything else needs numpy (and matplotlib for the plots).
"""
from .explain import ShapSettings
from .factors import Factors, code_factors
from .plan import AnalysisOptions, AnalysisOutcome, Study
from .runner import analyze

__all__ = ["AnalysisOptions", "AnalysisOutcome", "Factors", "ShapSettings", "Study", "analyze", "code_factors"]
