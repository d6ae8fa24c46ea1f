"""The benchmark scripts stay in step with the package: each one imports what it uses from lyco (a renamed function
once broke bench_train.py unnoticed) and offers the options the README documents."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["bench_adapters.py", "bench_unet.py", "bench_eval.py", "bench_train.py"])
def test_benchmark_script_imports_and_documents_its_options(script):
    r = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for option in ("--quick", "--device", "--clock", "--threads", "--note", "--out"):
        assert option in r.stdout, f"{script} --help lacks {option}"
