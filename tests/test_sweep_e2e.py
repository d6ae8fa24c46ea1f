"""``lyco sweep`` end to end on builtin:tiny: 2 configs × 2 seeds × 2 checkpoints trained, evaluated in one pool
(and analysed when lyco.analysis is there); re-running redoes nothing; SIGKILL mid-sweep + restart gives the same
tables bit for bit without redoing finished runs; the Ray executor (2 CPUs, 2 logical GPUs) gives the same
tables, runs concurrent tasks on different devices and retries a run whose worker was killed, which resumes."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lyco.sweep.manifest import read_attempts
from lyco.sweep.spec import load_sweep
from lyco.sweep.state import FINISHED, run_state

pytestmark = pytest.mark.slow

SWEEP = """
name = "tiny"
out = "{out}"
seeds = [1, 2]
save_epochs = {points}

[base]
model = {{ base = "builtin:tiny" }}
network = {{ algo = "lora", dim = 4, alpha = 2.0, preset = "attn-mlp" }}
train = {{ lr = 2e-3 }}
log = {{ tensorboard = false }}
[[base.datasets]]
resolution = 32
batch_size = 4
bucket = {{ enabled = false }}
subsets = [{{ path = "{data}/10_olis creature", repeats = 1 }}]

[eval]
concepts = [{{ world = "olis", dataset = "{data}", leak = false }}]
generation = {{ steps = 4, images = 2, batch_size = 8 }}
report = {{ grid_images = 2, plots = false }}

[[configs]]
id = "a"
[[configs]]
id = "b"
set = {{ network.dim = 8, network.alpha = 4.0 }}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder shared by the xdist workers (the reference sweep is made once, under a lock, and re-used)."""
    import fcntl

    from lyco.world.dataset import write_dataset
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "sweep-e2e"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "olis" / "concept.json").is_file():
            write_dataset("olis", root / "olis", overwrite=True)
    return root


def sweep_file(root: Path, name: str, points: str = "[1, 2]", only_a1: bool = False) -> Path:
    text = SWEEP.format(out=root / name, data=root / "olis", points=points)
    if only_a1:
        text = text.replace("seeds = [1, 2]", "seeds = [1]").split("[[configs]]\nid = \"b\"")[0]
    p = root / f"{name}.toml"
    p.write_text(text)
    return p


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def lyco(*args: str) -> int:
    from lyco.cli import main
    return main(list(args))


def mtimes(sw) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for r in sw.runs for f in run_state(r).checkpoints.values()}


@pytest.fixture(scope="module")
def reference(world):
    import fcntl
    p = sweep_file(world, "ref")
    with open(world / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert lyco("sweep", "run", str(p), "--jobs", "2", "--threads", "2") == 0
    return load_sweep(p)


def test_sweep_trains_evaluates_and_labels_the_pool(reference):
    sw = reference
    assert all(run_state(r).state == FINISHED for r in sw.runs)
    rows = read_csv(sw.out / "eval" / "results.csv")
    ckpts = {(r["checkpoint"], r["config"], r["seed"], r["epoch"]) for r in rows if r["checkpoint"] != "base"}
    assert ckpts == {(f"{c}-s{s}-e{e}", c, str(s), str(e)) for c in "ab" for s in (1, 2) for e in (1, 2)}
    scored = [float(r["score"]) for r in rows if r["checkpoint"] != "base" and r["level"] == "leaf"]
    assert scored and min(scored) == 0.0 and max(scored) == 1.0           # ranked over the pool of 8
    assert (sw.out / "factors.csv").read_text().splitlines()[1:] == ["a,lora,true,attn-mlp,0.002,2,4,2.0,,2",
                                                                     "b,lora,false,attn-mlp,0.002,2,8,4.0,,3"]
    for r in sw.runs:
        assert r.config_file.is_file() and (r.dir / "config.resolved.json").is_file()
        assert [e["event"] for e in read_attempts(sw.out, r.name)] == ["start", "end"]
    manifest = json.loads((sw.out / "sweep.json").read_text())
    assert manifest["stages"]["eval"]["ok"] and manifest["runs"]["a-s1"]["state"] == FINISHED
    for k in (0, 1):                                   # --jobs 2: images and features made in two shard processes
        assert f"eval shard shard-{k}.toml: generated" in (sw.out / "logs" / f"eval-shard-{k}.log").read_text()


def test_sweep_ends_with_the_analysis(reference):
    sw = reference
    out = sw.out / "analysis"
    stage = json.loads((sw.out / "sweep.json").read_text())["stages"]["analyze"]
    assert stage["ok"] and stage["out"] == str(out)
    assert {k: Path(v).name for k, v in stage["files"].items() if k in ("scores", "effects", "findings", "report")} \
        == {"scores": "scores.csv", "effects": "effects.csv", "findings": "findings.csv", "report": "report.html"}
    rows = read_csv(out / "scores.csv")
    scored = {r["checkpoint"] for r in rows if r["level"] == "category" and r["score"] != "nan"}
    assert scored == {f"{c}-s{s}-e{e}" for c in "ab" for s in (1, 2) for e in (1, 2)}
    effects = read_csv(out / "effects.csv")
    cap = {(r["algo"], r["from"], r["to"], r["config_from"], r["config_to"]) for r in effects
           if r["factor"] == "capacity"}
    assert cap == {("lora", "2", "3", "a", "b")}                          # b = a with twice the dim (same scale)
    assert {r["factor"] for r in effects} == {"capacity", "epoch"}
    findings = read_csv(out / "findings.csv")
    assert {r["finding"] for r in findings} == {"F1", "F2", "F3", "F4", "F5"}
    judged = {r["check"] for r in findings if r["verdict"] != "no data"}
    assert judged and all(r["factor"] in ("capacity", "epoch") for r in findings if r["check"] in judged)
    if importlib.util.find_spec("catboost") is not None:
        assert (out / "shap.csv").is_file() and stage["shap"].endswith("models")
    else:
        assert "catboost" in stage["shap"]


def test_rerun_redoes_nothing(reference, capsys):
    sw = reference
    before, results = mtimes(sw), (sw.out / "eval" / "results.csv").read_bytes()
    assert lyco("sweep", "run", str(sw.file), "--jobs", "2", "--threads", "2") == 0
    out = capsys.readouterr().out
    assert "4 of 4 runs finished (4 already were)" in out and "eval: ok: up to date" in out
    assert mtimes(sw) == before and (sw.out / "eval" / "results.csv").read_bytes() == results
    assert all(len(read_attempts(sw.out, r.name)) == 2 for r in sw.runs)
    assert lyco("sweep", "status", str(sw.file)) == 0
    out = capsys.readouterr().out
    assert "4 finished" in out and "analyze: ok" in out
    for name in ("results.csv", "scores.csv", "effects.csv", "findings.csv", "report.html"):
        assert name in out
    report = sw.out / "analysis" / "report.html"
    report.unlink()                                                        # an output gone: the analysis is redone
    assert lyco("sweep", "analyze", str(sw.file)) == 0 and report.is_file()
    assert "analyze: ok" in capsys.readouterr().out


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_mid_sweep_then_restart_gives_the_same_tables(world, reference):
    p = sweep_file(world, "killed")
    sw = load_sweep(p)
    proc = subprocess.Popen([sys.executable, "-m", "lyco", "sweep", "run", str(p), "--jobs", "2", "--threads", "2"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    finished: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None:
        states = {r.name: run_state(r).state for r in sw.runs}
        finished = [n for n, s in states.items() if s == FINISHED]
        if finished and len(finished) < len(sw.runs):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    before = mtimes(sw)
    for pid in _children(proc.pid) + [proc.pid]:             # the driver and its trainers, all at once
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert lyco("sweep", "run", str(p), "--jobs", "2", "--threads", "2") == 0
    assert (sw.out / "eval" / "results.csv").read_bytes() == (reference.out / "eval" / "results.csv").read_bytes()
    after = mtimes(sw)
    for name in finished:
        starts = [e for e in read_attempts(sw.out, name) if e["event"] == "start"]
        assert len(starts) == 1, f"{name} was finished before the kill but trained again"
        assert all(after[f] == t for f, t in before.items() if f.startswith(name + "-e") or f == name + ".safetensors")


# ------------------------------------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_same_tables_and_one_device_per_task(world, reference, ray_cluster):
    p = sweep_file(world, "ray")
    assert lyco("sweep", "run", str(p), "--executor", "ray", "--cpus-per-run", "1", "--gpus-per-run", "1") == 0
    sw = load_sweep(p)
    assert (sw.out / "eval" / "results.csv").read_bytes() == (reference.out / "eval" / "results.csv").read_bytes()
    spans = []
    for r in sw.runs:
        ev = read_attempts(sw.out, r.name)
        start, end = ev[0], ev[-1]
        spans.append((start["devices"], start["time"], end["time"], start["pid"]))
    assert {d for d, *_ in spans} == {"0", "1"}
    for i, (d1, s1, e1, _) in enumerate(spans):                 # one run per device at a time
        for d2, s2, e2, _ in spans[i + 1:]:
            if d1 == d2:
                assert e1 <= s2 or e2 <= s1


def test_ray_worker_killed_is_retried_and_resumes(world, ray_cluster):
    p = sweep_file(world, "raykill", points="[1, 8]", only_a1=True)
    sw = load_sweep(p)
    run = sw.runs[0]
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(lyco("sweep", "train", str(p), "--executor", "ray",
                                                       "--cpus-per-run", "1", "--gpus-per-run", "1")))
    t.start()
    deadline, killed = time.monotonic() + 600, None
    while time.monotonic() < deadline and t.is_alive() and killed is None:
        starts = [e for e in read_attempts(sw.out, run.name) if e["event"] == "start"]
        st = run_state(run, check_lock=False)
        if starts and st.last_state is not None and st.state != FINISHED:
            killed = starts[0]["pid"]
            os.kill(killed, signal.SIGKILL)                     # the Ray worker running the task
        time.sleep(0.1)
    t.join(900)
    assert killed is not None and rc == [0]
    st = run_state(run)
    assert st.state == FINISHED and sorted(st.checkpoints) == [1, 8]
    starts = [e for e in read_attempts(sw.out, run.name) if e["event"] == "start"]
    assert len(starts) == 2 and starts[0]["pid"] == killed != starts[1]["pid"]
    assert starts[1]["state"] == "interrupted" and starts[1]["last_state"] >= 2
    log = (sw.out / "logs" / f"{run.name}.log").read_text()
    assert "resumed from" in log


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_the_trainers_and_the_run_resumes(world):
    p = sweep_file(world, "ctrlc", points="[1, 8]", only_a1=True)
    sw = load_sweep(p)
    run = sw.runs[0]
    proc = subprocess.Popen([sys.executable, "-m", "lyco", "sweep", "train", str(p)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline, trainers = time.monotonic() + 600, []
    while time.monotonic() < deadline and proc.poll() is None:
        if run_state(run, check_lock=False).last_state is not None:
            trainers = _children(proc.pid)
            break
        time.sleep(0.1)
    assert trainers and run_state(run).state != FINISHED
    proc.send_signal(signal.SIGINT)
    assert proc.wait(300) == 130
    assert "run the same command again" in proc.stderr.read()
    assert all(not Path(f"/proc/{pid}").exists() for pid in trainers)
    assert lyco("sweep", "train", str(p)) == 0 and run_state(run).state == FINISHED
    starts = [e for e in read_attempts(sw.out, run.name) if e["event"] == "start"]
    assert [s["state"] for s in starts] == ["pending", "interrupted"]
