"""``lyco eval`` from the command line: every missing file at once, a terminal summary at the end."""
from __future__ import annotations

import pytest
import torch

import lyco.sd
from helpers import toml_dumps
from lyco.cli import main

SMALL = {"generation": {"steps": 2, "images": 2, "batch_size": 4},
         "metrics": {"names": ["image_similarity", "vendi"]},
         "report": {"plots": False, "grid_images": 1},
         "concepts": [{"world": "olis", "prompts": {"train": "none", "alter": "none", "agnostic": "none",
                                                    "agnostic_class": "none"}}]}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    pipe = lyco.sd.load_pipeline("builtin:tiny", tokenizer=False)
    net = lyco.sd.attach(pipe, algo="lora", dim=2, seed=0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05)
    path = tmp_path_factory.mktemp("evalcli") / "olis.safetensors"
    net.save(path)
    net.detach()
    return path


def _toml(tmp_path, **cfg):
    p = tmp_path / "eval.toml"
    p.write_text(toml_dumps({"base": "builtin:tiny", "out": str(tmp_path / "out"), **SMALL, **cfg}))
    return str(p)


def test_every_missing_file_is_reported_at_once(adapter, tmp_path, capsys):
    cfg = _toml(tmp_path, checkpoints=[{"name": "ok", "adapter": str(adapter)},
                                       {"name": "gone", "adapter": "runs/gone.safetensors"},
                                       {"name": "lost", "adapter": "runs/lost.safetensors", "multiplier": [0.5, 1.0]},
                                       {"name": "full", "model": "models/tuned"}])
    assert main(["eval", cfg, "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "3 file(s)" in err and "Traceback" not in err
    for name in ("gone: adapter", "lost: adapter", "full: model", str(tmp_path / "runs" / "gone.safetensors")):
        assert name in err, name
    assert err.count("lost.safetensors") == 1  # one line per file, not per multiplier


def test_terminal_summary_scores_when_checkpoints_are_compared(adapter, tmp_path, capsys):
    cfg = _toml(tmp_path, checkpoints=[{"name": "olis", "adapter": str(adapter), "multiplier": [1.0, 0.5]}])
    assert main(["eval", cfg]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("character: scores (rank over 2 checkpoints"))
    assert lines[head + 1].split()[:1] == ["checkpoint"] and "mean" in lines[head + 1]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[head + 2: head + 4]}
    assert set(rows) == {"olis@1", "olis@0.5"}
    assert all(0.0 <= float(v) <= 1.0 for vals in rows.values() for v in vals)
    assert f"html: {tmp_path / 'out' / 'report.html'}" in out


def test_terminal_summary_raw_values_for_one_checkpoint(adapter, tmp_path, capsys):
    cfg = _toml(tmp_path, checkpoints=[{"name": "olis", "adapter": str(adapter)}])
    assert main(["eval", cfg]) == 0
    out = capsys.readouterr().out
    assert "character: raw values" in out
    header = next(ln for ln in out.splitlines() if ln.strip().startswith("metric"))
    assert header.split()[-2:] == ["base", "olis"]
    sim = next(ln for ln in out.splitlines() if "Image similarity" in ln or "image similarity" in ln.lower())
    assert "trigger" in sim and len(sim.split()) >= 5
