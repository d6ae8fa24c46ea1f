"""``lyco sweep`` without training: the paper grid and its factors, sweep-file validation (one clear error per
mistake, before anything runs), plans of the shipped examples, run-state decisions, executors' resource split,
and the micro-world's all-concepts dataset."""
from __future__ import annotations

import json
import threading
import time
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lyco.errors import ConfigError
from lyco.sweep import executors as ex_mod
from lyco.sweep.config import ExecutorConfig
from lyco.sweep.grid import PAPER_GRID
from lyco.sweep.jobs import JobResult, Resources, TrainJob
from lyco.sweep.manifest import Manifest
from lyco.sweep.plan import estimate, plan_text
from lyco.sweep.spec import load_sweep
from lyco.sweep.stages import factors_csv, train_stage
from lyco.sweep.state import (
    CHANGED,
    FINISHED,
    INTERRUPTED,
    MISSING,
    PARTIAL,
    PENDING,
    RUNNING,
    run_state,
    train_args,
    try_lock,
    write_run_config,
)
from lyco.sweep.tomlw import dumps
from lyco.train.checkpoint import MARKER
from lyco.train.outputs import write_finished

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples" / "sweep"

BASE = """
[base]
model = {{ base = "builtin:tiny" }}
network = {{ algo = "lora", dim = 4, alpha = 2.0 }}
train = {{ lr = 1e-3 }}
[[base.datasets]]
resolution = 32
batch_size = 2
bucket = {{ enabled = false }}
folders = ["{data}"]
"""


def write_sweep(tmp_path: Path, body: str, *, eval_: str | None = None, data: Path | None = None) -> Path:
    data = data or tmp_path / "data"
    ev = eval_ if eval_ is not None else 'eval = { concepts = [{ world = "olis" }] }'
    text = f'out = "out"\nseeds = [1, 2]\nsave_epochs = [1, 2]\n{ev}\n{body}\n' + BASE.format(data=data)
    p = tmp_path / "sweep.toml"
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------------ the paper grid
PAPER = {  # id: (algo, preset, lr, dim, alpha, factor, lr_level, capacity, alpha1)
    "1001": ("lora", "attn-mlp", 5e-4, 8, 4.0, None, 2, 2, False),
    "1002": ("lora", "attn-mlp", 5e-4, 32, 16.0, None, 2, 3, False),
    "1003": ("lora", "attn-mlp", 5e-4, 32, 1.0, None, 2, 3, True),
    "1004": ("lora", "full", 5e-4, 8, 4.0, None, 2, 2, False),
    "1005": ("lora", "attn-only", 5e-4, 8, 4.0, None, 2, 2, False),
    "1006": ("lora", "attn-mlp", 1e-4, 8, 4.0, None, 1, 2, False),
    "1008": ("lora", "attn-mlp", 1e-3, 8, 4.0, None, 3, 2, False),
    "1011": ("loha", "attn-mlp", 5e-4, 4, 2.0, None, 2, 2, False),
    "1012": ("loha", "attn-mlp", 5e-4, 16, 8.0, None, 2, 3, False),
    "1013": ("loha", "attn-mlp", 5e-4, 16, 1.0, None, 2, 3, True),
    "1014": ("loha", "full", 5e-4, 4, 2.0, None, 2, 2, False),
    "1015": ("loha", "attn-only", 5e-4, 4, 2.0, None, 2, 2, False),
    "1016": ("loha", "attn-mlp", 1e-3, 4, 2.0, None, 3, 2, False),
    "1018": ("loha", "attn-mlp", 1e-4, 4, 2.0, None, 1, 2, False),
    "1021": ("lokr", "attn-mlp", 5e-4, 10000, 1.0, 8, 2, 2, False),
    "1022": ("lokr", "attn-mlp", 5e-4, 10000, 1.0, 4, 2, 3, False),
    "1023": ("lokr", "attn-mlp", 5e-4, 10000, 1.0, 12, 2, 1, False),
    "1024": ("lokr", "full", 5e-4, 10000, 1.0, 8, 2, 2, False),
    "1025": ("lokr", "attn-only", 5e-4, 10000, 1.0, 8, 2, 2, False),
    "1026": ("lokr", "attn-mlp", 1e-3, 10000, 1.0, 8, 3, 2, False),
    "1028": ("lokr", "attn-mlp", 1e-4, 10000, 1.0, 8, 1, 2, False),
    "1031": ("full", "attn-mlp", 1e-6, None, None, None, 2, None, None),
    "1032": ("full", "full", 1e-6, None, None, None, 2, None, None),
    "1033": ("full", "attn-only", 1e-6, None, None, None, 2, None, None),
    "1034": ("full", "attn-mlp", 5e-6, None, None, None, 3, None, None),
    "1035": ("full", "attn-mlp", 5e-7, None, None, None, 1, None, None),
}
KEYS = ("algo", "preset", "lr", "dim", "alpha", "factor", "lr_level", "capacity", "alpha1")


@pytest.fixture(scope="module")
def paper_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    return load_sweep(write_sweep(tmp, 'grid = "paper"'))


def test_paper_grid_is_the_papers_26_configs():
    assert [g.id for g in PAPER_GRID] == list(PAPER)
    assert len(PAPER_GRID) == 26 and not {"1007", "1017", "1027", "1036"} & {g.id for g in PAPER_GRID}


@pytest.mark.parametrize("cid", list(PAPER))
def test_paper_grid_factors(paper_sweep, cid):
    c = next(c for c in paper_sweep.configs if c.id == cid)
    assert tuple(c.factors[k] for k in KEYS) == PAPER[cid]
    assert c.default == (cid in ("1001", "1011", "1021", "1031"))


def test_paper_grid_runs_and_resolved_settings(paper_sweep):
    sw = paper_sweep
    assert [r.name for r in sw.runs[:3]] == ["1001-s1", "1001-s2", "1002-s1"] and len(sw.runs) == 52
    r = sw.run("1024-s2")
    net = r.train["network"]
    assert (net["algo"], net["conv_dim"], net["factor"], net["train_norm"], net["preset"]) == ("lokr", 10000, 8, True,
                                                                                               "full")
    assert r.train["train"]["seed"] == 2 and r.train["train"]["epochs"] == 2 and r.train["train"]["steps"] is None
    assert r.train["save"]["every_n_epochs"] == 1 and r.train["save"]["keep_last_n"] is None
    assert r.train["save"]["state_every_n_epochs"] == 1
    assert r.dir == sw.out / "runs" / "1024-s2" and r.train["output_dir"] == str(r.dir)
    assert r.train["overwrite"] is False          # trained with --resume latest: the folder is never moved aside
    assert r.train["datasets"][0]["folders"][0].startswith("/")


def test_factors_csv_has_config_and_factor_columns(paper_sweep):
    lines = factors_csv(paper_sweep).splitlines()
    assert lines[0] == "config,algo,default,preset,lr,lr_level,dim,alpha,factor,capacity"
    assert lines[1] == "1001,lora,true,attn-mlp,0.0005,2,8,4.0,,2"
    assert lines[3] == "1003,lora,false,attn-mlp,0.0005,2,32,1.0,,3"
    assert lines[-1] == "1035,full,false,attn-mlp,5e-07,1,,,,"


def test_include_exclude_and_extra_configs(tmp_path):
    sw = load_sweep(write_sweep(tmp_path, 'grid = "paper"\ninclude = ["1001", "1006", "1008", 1002]\n'
                                          'exclude = ["1002"]\n[[configs]]\nid = 2001\nlabel = "LoRA dim 64"\n'
                                          'set = { network.dim = 64, network.alpha = 32.0 }\n'
                                          'factors = { batch = "small", capacity = 9 }'))
    assert [c.id for c in sw.configs] == ["1001", "1006", "1008", "2001"]
    extra = next(c for c in sw.configs if c.id == "2001")
    assert extra.factors["capacity"] == 9 and extra.factors["batch"] == "small" and extra.varies == "capacity"
    assert factors_csv(sw).splitlines()[0].endswith(",capacity,batch")


def test_derived_factors_follow_the_grid_not_a_list(tmp_path):
    """lr levels and capacity are ordinals within each algorithm, anchored at its default."""
    body = "\n".join(f'[[configs]]\nid = "{i}"\nset = {{ {s} }}' for i, s in [
        ("a", "train.lr = 3e-3"), ("b", "train.lr = 7e-3"), ("c", "train.lr = 1e-2"), ("d", "network.dim = 2"),
        ("e", "network.dim = 16, network.alpha = 1.0"), ("k", 'network.algo = "lokr", network.factor = -1'),
        ("k2", 'network.algo = "lokr", network.factor = 2')])
    sw = load_sweep(write_sweep(tmp_path, body + '\n[[configs]]\nid = "z"\ndefault = true'))
    f = {c.id: c.factors for c in sw.configs}
    assert [f[i]["lr_level"] for i in "abcz"] == [3, 4, 5, 2]          # the default (z) has lr 1e-3
    assert [f[i]["capacity"] for i in ("d", "z", "e")] == [1, 2, 3]
    assert (f["e"]["alpha1"], f["z"]["alpha1"]) == (True, False)
    assert (f["k"]["capacity"], f["k2"]["capacity"]) == (2, 3)        # factor 2 > balanced factors


# ------------------------------------------------------------------------------------------------ bad files
@pytest.mark.parametrize("body,eval_,message", [
    ('seed = [3]\n[[configs]]\nid = "a"', None, "unknown key 'seed' (did you mean 'seeds'?)"),
    ('[[configs]]\nid = "a"\nlabl = "x"', None, "unknown key 'configs[0].labl' (did you mean 'label'?)"),
    ('[[configs]]\nid = "a"\n[[configs]]\nid = "a"', None, "config id 'a' appears twice"),
    ('grid = "paper"\n[[configs]]\nid = 1001', None, "config id '1001' appears twice (grid 'paper' already has it)"),
    ('[[configs]]\nid = "a"\nset = { network.dimm = 8 }', None, ("config a: ", "network", "unknown key",
                                                                   "'dimm' (did you mean 'dim'?)")),
    ('[[configs]]\nid = "a"\nset = { trian.lr = 1e-4 }', None, "config a: unknown key 'trian' (did you mean 'train'?)"),
    ('[[configs]]\nid = "a"\nset = { network.algo = "lorra" }', None, ("config a: ", "lorra")),
    ('[[configs]]\nid = "a"\nset = { train.seed = 5 }', None, "set.train.seed is set by the sweep"),
    ('[[configs]]\nid = "a"', 'eval = { generation = { steps = 4 } }', "eval]: missing required key 'concepts'"),
    ('[[configs]]\nid = "a"', 'eval = { concepts = [], generation = { steps = 4 } }', "concepts"),
    ('[[configs]]\nid = "a"', 'eval = "nope.toml"', "nope.toml: no such eval config file"),
    ('grid = "paper"\ninclude = ["1007"]', None, "'1007' is not a configuration of grid 'paper'"),
    ('', None, "no configurations"),
    ('save_steps = [10]\n[[configs]]\nid = "a"', None, "set exactly one of save_epochs"),
    ('analyze = { exclude = ["b"] }\n[[configs]]\nid = "a"', None, "analyze.exclude: 'b' is not a configuration"),
    ('analyze = { shap_subet = "all" }\n[[configs]]\nid = "a"', None, "shap_subset"),
    ('analyze = { shap_subset = "most" }\n[[configs]]\nid = "a"', None, ("shap_subset", "'paper'")),
])
def test_bad_sweep_files_fail_with_one_clear_error(tmp_path, body, eval_, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(write_sweep(tmp_path, body, eval_=eval_))
    for part in (message,) if isinstance(message, str) else message:
        assert part in str(err.value)
    assert str(tmp_path / "sweep.toml") in str(err.value)
    assert not (tmp_path / "out").exists()          # nothing ran, nothing was written


def test_bad_base_is_named_as_the_base(tmp_path):
    p = write_sweep(tmp_path, '[[configs]]\nid = "a"')
    p.write_text(p.read_text().replace("resolution = 32", "resolutoin = 32"))
    with pytest.raises(ConfigError, match=r"base run: unknown key 'datasets\[0\].resolutoin'"):
        load_sweep(p)


def test_eval_file_checkpoints_are_replaced_with_a_note(tmp_path):
    ev = tmp_path / "ev.toml"
    ev.write_text('[[checkpoints]]\nname = "x"\nadapter = "x.safetensors"\n[[concepts]]\nworld = "olis"\n')
    sw = load_sweep(write_sweep(tmp_path, '[[configs]]\nid = "a"', eval_='eval = "ev.toml"'))
    assert sw.eval_data["checkpoints"] == [] and sw.eval_data["root"] == str(tmp_path)
    assert "[[checkpoints]] of ev.toml are replaced" in sw.notes[0]


# ------------------------------------------------------------------------------------------------ examples
def test_plan_microworld_example(tmp_path, monkeypatch):
    from lyco.world.dataset import write_all
    sw = load_sweep(EXAMPLES / "microworld-paper.toml")
    folders = sw.runs[0].train["datasets"][0]["folders"]
    monkeypatch.setattr("lyco.sweep.plan.run_steps", lambda r, memo: 213)   # the data need not exist for this
    cost = estimate(sw)
    text = plan_text(sw, cost, 2, "executor: local")
    assert len(sw.configs) == 21 and len(sw.runs) == 42 and cost.checkpoints == 126
    algos = [c.factors["algo"] for c in sw.configs]
    assert [algos.count(a) for a in ("lora", "loha", "lokr", "full")] == [6, 6, 5, 4]
    varies = {(c.factors["algo"], c.varies) for c in sw.configs}
    for algo in ("lora", "loha", "lokr", "full"):
        assert {(algo, ""), (algo, "lr"), (algo, "preset")} <= varies
    assert {("lora", "capacity"), ("lora", "capacity+alpha"), ("loha", "capacity+alpha"),
            ("lokr", "capacity")} <= varies
    assert [Path(f).name for f in folders] == ["olis", "adl", "pgs", "kro"]
    assert "42 runs" in text and "total" in text
    minutes = float(text.split("total      ≈ ")[1].split(" min")[0])
    assert minutes <= 60
    write_all(tmp_path / "all")                     # the data the example trains on: steps per epoch as planned
    from lyco.sweep.plan import _steps_per_epoch
    train = dict(sw.runs[0].train, datasets=[dict(sw.runs[0].train["datasets"][0],
                                                  folders=[str(tmp_path / "all" / Path(f).name) for f in folders])])
    assert _steps_per_epoch(train) * 3 == 213


def test_plan_sd15_example():
    sw = load_sweep(EXAMPLES / "sd15-paper.toml")
    cost = estimate(sw)
    assert [c.id for c in sw.configs] == list(PAPER) and len(sw.runs) == 78 and cost.checkpoints == 234
    assert sorted({r.seed for r in sw.runs}) == [23, 24, 25] and sw.cfg.points == [10, 30, 50]
    t = sw.run("1021-s24").train
    assert t["train"]["epochs"] == 50 and t["train"]["optimizer"] == {
        "name": "adamw8bit", "weight_decay": 0.1, "betas": [0.9, 0.99], "eps": 1e-8, "momentum": 0.0}
    assert t["train"]["scheduler"]["name"] == "constant_with_warmup" and t["train"]["scheduler"]["warmup_epochs"] == 5
    ds = t["datasets"][0]
    assert (ds["batch_size"], ds["caption_dropout"], ds["resolution"]) == (8, 0.05, 512)
    assert t["save"]["every_n_epochs"] == 10 and t["save"]["state_every_n_epochs"] == 5
    assert t["network"]["algo"] == "lokr" and t["network"]["factor"] == 8 and t["train"]["lr"] == 5e-4
    text = plan_text(sw, cost, 4, "executor: ray")
    assert "234 checkpoints" in text and "training steps unknown" in text


def test_cli_plan_and_both_argument_orders(tmp_path, capsys):
    from lyco.cli import main
    p = write_sweep(tmp_path, '[[configs]]\nid = "a"')
    assert main(["sweep", "plan", str(p)]) == 0
    first = capsys.readouterr().out
    assert main(["sweep", str(p), "plan"]) == 0
    assert capsys.readouterr().out == first and "a-s2" in first and "pending" in first
    assert main(["sweep", "plan", str(tmp_path / "missing.toml")]) == 1
    assert "no such sweep file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ run state
def adapter(path: Path, step: int, epoch: int) -> Path:
    """An adapter file with the metadata the trainer writes (``ss_steps``, ``ss_epoch``)."""
    save_file({"w": torch.zeros(2)}, str(path), metadata={"ss_steps": str(step), "ss_epoch": str(epoch)})
    return path


def test_run_state_follows_the_trainers_record(tmp_path):
    sw = load_sweep(write_sweep(tmp_path, '[[configs]]\nid = "a"'))
    run = sw.runs[0]
    resume = ["train", str(run.config_file), "--resume", "latest"]        # always: the trainer decides what to do
    assert run_state(run).state == PENDING and train_args(run, run_state(run)) == resume
    write_run_config(run)
    run.dir.mkdir(parents=True)
    (run.dir / "config.resolved.json").write_text("{}")
    assert run_state(run).state == PARTIAL and train_args(run, run_state(run)) == resume
    (run.dir / "state" / "step-00000002").mkdir(parents=True)
    assert run_state(run).state == PARTIAL                  # a state without its completion marker is no state
    (run.dir / "state" / "step-00000002" / MARKER).write_text("2")
    st = run_state(run)
    assert (st.state, st.last_state) == (INTERRUPTED, 2) and train_args(run, st) == resume
    e1 = adapter(run.dir / "a-s1-e0001.safetensors", 2, 1)
    final = adapter(run.dir / "a-s1.safetensors", 4, 2)     # written, but finished.json is not (yet)
    st = run_state(run)
    assert st.state == INTERRUPTED and st.checkpoints == {1: e1}
    write_finished(run.dir, run.name, final, "hash")
    st = run_state(run)
    assert st.state == FINISHED and st.checkpoints == {1: e1, 2: final} and train_args(run, st) is None
    lock = try_lock(run)
    assert run_state(run, check_lock=False).state == FINISHED and try_lock(run) is None
    lock.close()
    e1.unlink()                                             # a finished run thinned out by hand
    st = run_state(run)
    assert st.state == MISSING and train_args(run, st) is None and "epochs 1 are not in" in st.note
    run.config_file.write_text(run.config_file.read_text().replace("lr = 0.001", "lr = 0.002"))
    assert run_state(run).state == CHANGED and train_args(run, run_state(run)) is None


@pytest.mark.parametrize("unit, files, expected", [
    # the trainer's names: -e%04d per epoch, -s%08d per step, the final file for the last point (from its metadata)
    ("epochs", {"a-s1-e0001": (3, 1), "a-s1-e0002": (6, 2), "a-s1": (9, 3)}, {1: "a-s1-e0001", 2: "a-s1-e0002",
                                                                               3: "a-s1"}),
    ("epochs", {"a-s1-e000001": (3, 1), "a-s1-e0002": (6, 2), "a-s1-e0003": (9, 3), "a-s1": (9, 3)},
     {1: "a-s1-e000001", 2: "a-s1-e0002", 3: "a-s1"}),                   # any digit count; the final file wins
    ("steps", {"a-s1-s00000001": (1, 0), "a-s1-s00000002": (2, 0), "a-s1": (3, 1)},
     {1: "a-s1-s00000001", 2: "a-s1-s00000002", 3: "a-s1"}),
    ("epochs", {"a-s1-e0001": (3, 1), "a-s10-e0002": (6, 2), "a-s1-s00000006": (6, 2), "a-s1": (9, 3)},
     {1: "a-s1-e0001", 3: "a-s1"}),                                      # another run's file, a step export: not ours
])
def test_save_points_map_to_the_trainers_exports(tmp_path, unit, files, expected):
    body = '[[configs]]\nid = "a"'
    path = write_sweep(tmp_path, body)
    path.write_text(path.read_text().replace("save_epochs = [1, 2]", f"save_{unit} = [1, 2, 3]"))
    run = load_sweep(path).runs[0]
    run.dir.mkdir(parents=True)
    for name, (step, epoch) in files.items():
        adapter(run.dir / f"{name}.safetensors", step, epoch)
    write_finished(run.dir, run.name, run.dir / "a-s1.safetensors", "hash")
    st = run_state(run)
    assert {p: f.stem for p, f in st.checkpoints.items()} == expected
    assert st.state == (FINISHED if len(expected) == 3 else MISSING)


def test_a_finished_run_missing_an_adapter_is_reported_not_retrained(tmp_path):
    sw = load_sweep(write_sweep(tmp_path, '[[configs]]\nid = "a"'))
    for run in sw.runs:
        run.dir.mkdir(parents=True)
        adapter(run.dir / f"{run.name}-e0001.safetensors", 2, 1)
        write_finished(run.dir, run.name, adapter(run.dir / f"{run.name}.safetensors", 4, 2), "hash")
    (sw.runs[0].dir / "a-s1-e0001.safetensors").unlink()
    manifest = Manifest(sw.out, sw.file)
    report = train_stage(sw, ex_mod.LocalExecutor(ExecutorConfig()), manifest)
    assert not report.ok and report.failed == ["a-s1"] and "1 of 2 runs finished (1 already were)" in report.message
    assert manifest.run("a-s1")["state"] == MISSING and "epochs 1 are not in" in manifest.run("a-s1")["error"]
    assert not (sw.out / "logs").exists()                    # nothing was started


def test_a_locked_run_is_running(tmp_path):
    sw = load_sweep(write_sweep(tmp_path, '[[configs]]\nid = "a"'))
    run = sw.runs[0]
    write_run_config(run)
    lock = try_lock(run)
    assert run_state(run).state == RUNNING
    lock.close()
    assert run_state(run).state == PENDING


def test_resolved_run_config_round_trips(paper_sweep):
    from lyco.train.config import TrainConfig
    for r in paper_sweep.runs[::7]:
        text = dumps(r.train, header="x")
        assert TrainConfig(**tomllib.loads(text)).resolved() == r.train


# ------------------------------------------------------------------------------------------------ executors
def test_local_executor_splits_threads_and_gpus(tmp_path, monkeypatch):
    """Two jobs at a time on a 2-GPU machine: each gets one thread of two and its own GPU; a failed job is
    retried, the others go on."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    sw = load_sweep(write_sweep(tmp_path, '[[configs]]\nid = "a"\n[[configs]]\nid = "b"'))
    running: dict[str, str] = {}
    seen, overlaps, lock = [], [], threading.Lock()
    calls: dict[str, int] = {}

    def fake_execute(job, res, children=None):
        with lock:
            assert res.devices not in running.values()
            running[job.key] = res.devices
            overlaps.append(len(running))
            seen.append((job.key, res.devices, res.threads))
            calls[job.key] = calls.get(job.key, 0) + 1
        time.sleep(0.2)
        with lock:
            del running[job.key]
        ok = not (job.key == "b-s1" and calls[job.key] == 1)        # b-s1 fails once
        return JobResult(job.key, ok, 0 if ok else 1, devices=res.devices)

    monkeypatch.setattr(ex_mod, "execute", fake_execute)
    ex = ex_mod.LocalExecutor(ExecutorConfig(jobs=2, threads=2, max_retries=1))
    results = ex.map([TrainJob(r, sw.out) for r in sw.runs], lambda r: None)
    assert sorted(r.key for r in results if r.ok) == ["a-s1", "a-s2", "b-s1", "b-s2"]
    assert calls["b-s1"] == 2 and max(overlaps) == 2
    assert {d for _, d, _ in seen} == {"0", "1"} and {t for _, _, t in seen} == {1}
    with pytest.raises(ConfigError, match="needs 4 GPUs; this machine has 2"):
        ex_mod.LocalExecutor(ExecutorConfig(jobs=2, gpus_per_run=2))
    assert ex_mod.LocalExecutor(ExecutorConfig(jobs=1, gpus_per_run=0)).final_resources() == Resources(
        ex_mod.cpu_budget(), "")


def test_ray_executor_without_ray_says_how_to_install(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"pip install 'lyco\[ray\]'"):
        ex_mod.RayExecutor(ExecutorConfig(kind="ray"))


# ------------------------------------------------------------------------------------------------ world data
def test_make_dataset_all_is_class_balanced(tmp_path, capsys):
    from lyco.cli import main
    from lyco.world.dataset import write_dataset
    assert main(["world", "make-dataset", "all", str(tmp_path / "all")]) == 0
    listing = json.loads((tmp_path / "all" / "concepts.json").read_text())["concepts"]
    assert {k: v["repeats"] for k, v in listing.items()} == {"olis": 19, "adl": 2, "pgs": 1, "kro": 12}
    assert all(120 <= v["exposures_per_epoch"] <= 152 for v in listing.values())
    olis = tmp_path / "all" / "olis"
    assert (olis / "19_olis creature" / "0003.png").is_file()
    meta = json.loads((olis / "concept.json").read_text())
    assert (meta["repeats"], meta["folder"]) == (19, "19_olis creature")
    write_dataset("olis", tmp_path / "one")          # the same images and prompts as the single-concept dataset
    assert (olis / "19_olis creature" / "0003.png").read_bytes() == (tmp_path / "one" / "10_olis creature" /
                                                                    "0003.png").read_bytes()
    assert (olis / "prompts.json").read_bytes() == (tmp_path / "one" / "prompts.json").read_bytes()
    assert main(["world", "make-dataset", "all", str(tmp_path / "all")]) == 1      # not empty
    assert main(["world", "make-dataset", "all", str(tmp_path / "all"), "--force", "--exposures", "60"]) == 0
    listing = json.loads((tmp_path / "all" / "concepts.json").read_text())["concepts"]
    assert {k: v["repeats"] for k, v in listing.items()} == {"olis": 8, "adl": 1, "pgs": 1, "kro": 5}
    assert sorted(p.name for p in olis.iterdir() if p.is_dir()) == ["8_olis creature", "prompts"]


def test_toml_writer_round_trips_nested_tables_and_odd_keys():
    data = {"a b": 1, "x": [1.5, -2e-7, float("inf")], "t": {"u": "q\"uote", "v": {"w": True}},
            "concepts": [{"class": "olis", "prompts": {"alter": ["a", "b"]}}, {"world": "kro", "z": {}}],
            "none": None, "inline": [{"a": 1}, {"b": [2]}]}
    back = tomllib.loads(dumps(data, header="line one\nline two"))
    expected = {k: v for k, v in data.items() if v is not None}
    assert back == expected
