"""The command line: verbs, errors, the demo."""
from __future__ import annotations

import json

import pytest
import torch.nn as nn

import lyco
from lyco.cli import main


def test_help_and_unknown(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["inspekt"]) == 2
    assert "did you mean 'inspect'" in capsys.readouterr().err


def test_inspect_json(tmp_path, capsys):
    m = nn.Sequential(nn.Linear(8, 8), nn.Conv2d(8, 8, 3))
    net = lyco.attach(m, algo="loha", dim=4, use_tucker=True)
    f = tmp_path / "a.safetensors"
    net.save(f)
    assert main(["inspect", str(f), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modules"] == 2
    assert info["algorithms"] == {"loha": 1, "loha+tucker": 1}
    assert info["ranks"] == {"4": 2}
    assert info["metadata"]["ss_network_module"] == "lyco.kohya"


def test_inspect_missing_file_is_a_clean_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "x.safetensors")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_demo_runs_and_reports(tmp_path, capsys):
    assert main(["demo", "--toy", "--steps", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for algo in ("lora", "loha", "lokr", "lora+dora", "full"):
        assert algo in out
    assert len(list(tmp_path.glob("*.safetensors"))) == 6


@pytest.mark.slow
def test_world_demo_ends_with_the_papers_evaluation(tmp_path, capsys):
    assert main(["demo", "--steps", "10", "--eval-images", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "the paper's evaluation, base vs tuned" in out and "character: raw values" in out
    header = next(ln for ln in out.splitlines() if ln.strip().startswith("metric"))
    assert header.split()[-2:] == ["base", "olis-lora"]
    report = tmp_path / "eval" / "report.html"
    assert f"report:         {report}" in out and report.is_file()
    assert (tmp_path / "before_after.png").is_file() and (tmp_path / "run" / "olis-lora.safetensors").is_file()
