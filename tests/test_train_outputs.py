"""A run's output folder and its interruption: nothing deleted, no stub folders, Ctrl-C / SIGTERM leave a state,
``--resume latest`` is idempotent, ``finished.json`` says what a finished run holds."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

import lyco
from lyco.train.config import load_train_config
from lyco.train.outputs import run_status
from train_fixtures import base_config, image_folder, tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("m"))


def _train(cfg: dict, *args: str, callbacks: tuple = ()):
    from lyco.train.loop import train
    return train(load_train_config(data=cfg), *args, callbacks=callbacks)


def _signal_at(step: int, *signals: int):
    def callback(event, trainer, progress) -> None:
        if event == "step" and progress.step == step:
            for s in signals:
                os.kill(os.getpid(), s)
    return (callback,)


def _bad(cfg: dict, what: str, tmp: Path) -> dict:
    cfg = json.loads(json.dumps(cfg))
    if what == "dataset path":
        cfg["datasets"][0]["folders"] = [str(tmp / "no-such-folder")]
    elif what == "no images":
        (tmp / "empty" / "10_x").mkdir(parents=True, exist_ok=True)
        cfg["datasets"][0]["folders"] = [str(tmp / "empty")]
    elif what == "model path":
        cfg["model"]["base"] = str(tmp / "no-such-model")
    elif what == "targets":
        cfg["network"]["target_names"] = ["matches_nothing_at_all"]
    return cfg


@pytest.mark.parametrize("what", ["dataset path", "no images", "model path", "targets"])
def test_a_run_that_fails_validation_deletes_nothing_and_leaves_no_folder(model_dir, tmp_path, what):
    data = image_folder(tmp_path)
    # an earlier run's outputs, and overwrite = true: a failing run must not touch them
    old = base_config(tmp_path, model_dir, data)
    out = Path(old["output_dir"])
    out.mkdir()
    (out / "t.safetensors").write_bytes(b"the adapter of an earlier run")
    with pytest.raises(lyco.LycoError):
        _train(_bad(old, what, tmp_path))
    assert (out / "t.safetensors").read_bytes() == b"the adapter of an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == ["run"]
    # a new output folder: nothing is created, so the fixed run goes exactly there (not to fresh-1)
    fresh = dict(_bad(old, what, tmp_path), output_dir=str(tmp_path / "fresh"))
    with pytest.raises(lyco.LycoError):
        _train(fresh)
    assert not (tmp_path / "fresh").exists()


def test_overwrite_moves_the_previous_run_aside(model_dir, tmp_path):
    data = image_folder(tmp_path)
    cfg = base_config(tmp_path, model_dir, data, **{"train.steps": 2})
    first = _train(cfg)
    before = load_file(str(first))
    second = _train(dict(cfg, train=dict(cfg["train"], seed=4)))
    assert second == first
    backups = list(tmp_path.glob("run.bak-*"))
    assert len(backups) == 1
    kept = load_file(str(backups[0] / "t.safetensors"))
    assert all((kept[k] == before[k]).all() for k in before)
    assert run_status(backups[0]).state == "finished" and run_status(tmp_path / "run").state == "finished"


def test_finished_json_lists_every_adapter_with_step_and_epoch(model_dir, tmp_path):
    data = image_folder(tmp_path, n=2)  # 2 images x 10 repeats / batch 4 = 5 steps per epoch
    cfg = base_config(tmp_path, model_dir, data, **{"train.steps": None, "train.epochs": 2,
                                                    "save.every_n_epochs": 1, "save.every_n_steps": 3})
    cfg["datasets"][0]["batch_size"] = 4
    final = _train(cfg)
    status = run_status(final.parent)
    assert status.state == "finished" and status.final == final and status.step == 10
    assert [(e.path.name, e.step, e.epoch, e.final) for e in status.exports] == [
        ("t-s00000003.safetensors", 3, 0, False), ("t-e0001.safetensors", 5, 1, False),
        ("t-s00000006.safetensors", 6, 1, False), ("t-s00000009.safetensors", 9, 1, False),
        ("t.safetensors", 10, 2, True)]
    assert lyco.io.files.read_metadata(final)["ss_epoch"] == "2"   # epochs done, as kohya writes it


def test_run_status_of_fresh_started_and_interrupted_folders(tmp_path):
    assert run_status(tmp_path / "nothing").state == "fresh"
    (tmp_path / "r" / "state" / "step-00000004").mkdir(parents=True)
    (tmp_path / "r" / "config.resolved.json").write_text("{}")
    assert run_status(tmp_path / "r").state == "started"          # an incomplete state does not count
    (tmp_path / "r" / "state" / "step-00000002").mkdir()
    (tmp_path / "r" / "state" / "step-00000002" / "COMPLETE").write_text("2")
    st = run_status(tmp_path / "r")
    assert st.state == "interrupted" and st.step == 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_a_state_and_resume_latest_finishes(model_dir, tmp_path, sig):
    from lyco.train.signals import TrainingInterrupted
    data = image_folder(tmp_path)
    cfg = base_config(tmp_path, model_dir, data, **{"train.steps": 4, "save.state_every_n_steps": 2})
    previous = signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted) as e:
        _train(cfg, callbacks=_signal_at(3, sig))
    assert e.value.signum == sig and e.value.step == 3
    assert e.value.state == tmp_path / "run" / "state" / "step-00000003" and (e.value.state / "COMPLETE").is_file()
    assert signal.getsignal(sig) is previous                      # handlers restored
    assert run_status(tmp_path / "run").state == "interrupted"
    final = _train(cfg, "latest")
    assert run_status(final.parent).state == "finished" and run_status(final.parent).step == 4


def test_interrupt_right_after_a_state_does_not_write_another(model_dir, tmp_path):
    from lyco.train.signals import TrainingInterrupted
    data = image_folder(tmp_path)
    cfg = base_config(tmp_path, model_dir, data, **{"train.steps": 4, "save.state_every_n_steps": 2})
    with pytest.raises(TrainingInterrupted) as e:
        _train(cfg, callbacks=_signal_at(2, signal.SIGINT))
    assert e.value.state.name == "step-00000002"
    assert [p.name for p in (tmp_path / "run" / "state").iterdir()] == ["step-00000002"]


def test_second_ctrl_c_aborts_at_once_without_traceback(model_dir, tmp_path, capfd, monkeypatch):
    import lyco.train.cli
    from helpers import toml_dumps
    from lyco.train.cli import main
    monkeypatch.setattr(lyco.train.cli, "configure_output", lambda verbose: None)  # keep this process's logging
    data = image_folder(tmp_path)
    cfg = base_config(tmp_path, model_dir, data, **{"train.steps": 4, "save.state_every_n_steps": 2})
    (tmp_path / "c.toml").write_text(toml_dumps(cfg))
    assert main([str(tmp_path / "c.toml")], callbacks=_signal_at(1, signal.SIGINT, signal.SIGINT)) == 130
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("lyco train: ")]
    assert len(lines) == 2 and "SIGINT received" in lines[0]
    assert "aborted by a second Ctrl-C at step 1 of 4" in lines[1] and "Traceback" not in err
    assert not (tmp_path / "run" / "state").exists()             # aborted at once: no state written
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_latest_on_a_new_folder_starts_from_step_0(model_dir, tmp_path, caplog):
    data = image_folder(tmp_path)
    cfg = base_config(tmp_path, model_dir, data, **{"train.steps": 2})
    with caplog.at_level("INFO", logger="lyco"):
        final = _train(cfg, "latest")
    assert "no complete training state" in caplog.text and "starting from step 0" in caplog.text
    assert final == tmp_path / "run" / "t.safetensors" and run_status(final.parent).state == "finished"
    caplog.clear()
    with caplog.at_level("INFO", logger="lyco"):
        assert _train(cfg, "latest") == final                     # finished: nothing to do
    assert "is finished" in caplog.text and "nothing to do" in caplog.text


def test_resume_from_a_missing_state_path_is_an_error_before_anything_runs(tmp_path):
    cfg = base_config(tmp_path, tmp_path / "no-model", tmp_path / "no-data")
    with pytest.raises(lyco.StateError) as e:
        _train(cfg, str(tmp_path / "run" / "state" / "step-00000002"))
    assert "not a complete training state" in str(e.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("tty", [True, False])
def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise(tty, tmp_path, monkeypatch, caplog):
    import sys
    from types import SimpleNamespace

    import torch

    from lyco.train.log import RunLog
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    acc = SimpleNamespace(is_main_process=True, is_local_main_process=True, num_processes=1,
                          device=torch.device("cpu"))
    cfg = SimpleNamespace(log=SimpleNamespace(every_n_steps=1, print_every_n_steps=5, tensorboard=False))
    rl = RunLog(cfg, acc, tmp_path, total=12)
    rl.open(0)
    with caplog.at_level("INFO", logger="lyco"):
        for step in range(1, 13):
            rl.losses.add(torch.tensor(float(step)))
            rl.step(step, 0, [1e-3])
    lines = [r.getMessage() for r in caplog.records if "step " in r.getMessage()]
    assert (rl.bar is not None) == tty
    if tty:
        assert lines == [] and rl.bar.n == 12
    else:  # one line per 5 steps and at the end; the loss shown is the smoothed one
        assert [ln.split(":")[1].strip() for ln in lines] == ["step 5/12 (epoch 0)", "step 10/12 (epoch 0)",
                                                               "step 12/12 (epoch 0)"]
        ema = 1.0
        for v in (2.0, 3.0, 4.0, 5.0):
            ema = 0.98 * ema + 0.02 * v
        assert f"loss {ema:.4f} (ema)" in lines[0]
    rl.close()
    assert rl.losses.pending == []                                # every loss was read back at the log steps
