"""The trainer: config validation, data handling, a short run, resume, NaN handling, samples and logs."""
from __future__ import annotations

import json
import logging
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import lyco
from helpers import free_port, toml_dumps
from lyco.train.buckets import assign, make_buckets, plan_epoch
from lyco.train.config import BucketConfig, load_train_config
from lyco.train.data import process_caption, scan_dataset
from train_fixtures import base_config, child_env, image_folder, tiny_model_dir

DRIVER = Path(__file__).parent / "train_driver.py"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("m"))


# ----------------------------------------------------------------------------------------------- config
def test_config_errors_all_at_once_with_suggestions(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('''
[model]
base = "x"
[train]
steps = 3
optimzer = { name = "adamw" }
[[datasets]]
subsets = [{ path = "a", caption_extention = ".txt" }]
[network]
algo = "loha"
dora_wd = "False"
''')
    with pytest.raises(lyco.ConfigError) as e:
        load_train_config(p)
    msg = str(e.value)
    assert "train.optimzer" in msg and "did you mean 'optimizer'" in msg
    assert "datasets[0].subsets[0].caption_extention" in msg and "caption_extension" in msg
    assert "dora_wd" in msg


def test_config_cross_field_checks(tmp_path):
    with pytest.raises(lyco.ConfigError) as e:
        load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1, "epochs": 2},
                          "datasets": [{"folders": ["a"]}]})
    assert "exactly one of train.steps and train.epochs" in str(e.value)
    with pytest.raises(lyco.ConfigError) as e:
        load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1},
                                "datasets": [{"folders": ["a"], "resolution": 100}]})
    assert "resolution" in str(e.value) and "bucket.step" in str(e.value)


@pytest.mark.parametrize("where, key, hint", [
    ("train", "learning_rate", "did you mean train.lr?"),
    ("network", "network_dim", "did you mean network.dim?"),
    ("network", "network_alpha", "did you mean network.alpha?"),
    ("train", "max_train_steps", "did you mean train.steps?"),
    ("datasets.0", "train_batch_size", "did you mean datasets[].batch_size?"),
    ("", "output_name", "did you mean name?"),
    ("save", "save_every_n_epochs", "did you mean save.every_n_epochs?"),
    ("", "cache_latents_to_disk", 'did you mean train.cache_latents = "disk"?'),
])
def test_kohya_option_names_get_lyco_hints(where, key, hint):
    data = {"model": {"base": "x"}, "train": {"steps": 1}, "datasets": [{"folders": ["a"]}]}
    cur = data
    for k in filter(None, where.split(".")):
        cur = cur[int(k)] if k.isdigit() else cur.setdefault(k, {})
    cur[key] = 1
    with pytest.raises(lyco.ConfigError) as e:
        load_train_config(data=data)
    assert f"{key}' (kohya's {key}: {hint})" in str(e.value)


def test_kohya_config_sections_are_explained():
    with pytest.raises(lyco.ConfigError) as e:
        load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1}, "datasets": [{"folders": ["a"]}],
                          "training_arguments": {"learning_rate": 1e-4, "max_train_steps": 100}})
    msg = str(e.value)
    assert "a kohya config section" in msg and "[train]" in msg
    assert "learning_rate -> train.lr" in msg and "max_train_steps -> train.steps" in msg


@pytest.mark.parametrize("resolution, step, native, warns", [
    (512, 64, 512, []), (768, 64, 512, []), (1024, 64, 512, ["far from the model's native 512"]),
    (512, 64, 1024, ["far from the model's native 1024"]), (100, None, 128, ["not a multiple of 8"]),
    (96, 12, 128, ["bucket.step 12 is not a multiple of 8"]),
])
def test_resolution_warnings(resolution, step, native, warns, caplog):
    from lyco.train.loop import check_resolution
    ds = {"folders": ["a"], "resolution": resolution}
    ds["bucket"] = {"step": step} if step else {"enabled": False}
    cfg = load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1}, "datasets": [ds]})
    with caplog.at_level(logging.WARNING, logger="lyco"):
        check_resolution(cfg, native, 8)
    assert len(caplog.records) == len(warns) and all(w in caplog.text for w in warns), caplog.text


def test_set_overrides(tmp_path):
    cfg = load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1}, "datasets": [{"folders": ["a"]}]},
                      overrides=["train.lr=3e-4", "network.algo=\"lokr\"", "datasets.0.batch_size=4"])
    assert cfg.train.lr == 3e-4 and cfg.network.algo == "lokr" and cfg.datasets[0].batch_size == 4


def test_missing_dataset_path(tmp_path):
    cfg = load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1},
                            "datasets": [{"subsets": [{"path": str(tmp_path / "nope")}]}]})
    with pytest.raises(lyco.ConfigError) as e:
        scan_dataset(cfg.datasets[0])
    assert "nope" in str(e.value)


# ----------------------------------------------------------------------------------------------- data
def test_no_usable_images_says_what_was_scanned_and_why(tmp_path):
    plain = tmp_path / "plain"           # images directly in a `folders` entry: kohya wants N_name subfolders
    plain.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16)).save(plain / f"{i}.png")
    (tmp_path / "kf" / "5_x").mkdir(parents=True)
    (tmp_path / "kf" / "5_x" / "a.txt").write_text("caption without image")
    (tmp_path / "gifs").mkdir()
    (tmp_path / "gifs" / "a.gif").write_bytes(b"GIF89a")
    cases = {"plain": ({"folders": [str(plain)]}, [f"{plain}: 3 images directly in the folder not used",
                                                    "N_name subfolders", "under `subsets` instead"]),
             "kf": ({"folders": [str(tmp_path / "kf")]}, [f"{tmp_path / 'kf' / '5_x'}: not a subset: no image files",
                                                          "found 1 .txt"]),
             "gifs": ({"subsets": [{"path": str(tmp_path / "gifs")}]}, [f"{tmp_path / 'gifs'}: no image files",
                                                                        "found 1 .gif"])}
    for name, (ds, expected) in cases.items():
        cfg = load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1}, "datasets": [ds]})
        with pytest.raises(lyco.ConfigError) as e:
            scan_dataset(cfg.datasets[0])
        msg = str(e.value)
        assert "no usable images; scanned:" in msg and all(x in msg for x in expected), (name, msg)



def _bad_images(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(d / "good.png")
    (d / "good.txt").write_text("good")
    (d / "empty.png").write_bytes(b"")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    Image.new("CMYK", (32, 32), (0, 100, 100, 0)).save(d / "cmyk.jpg")
    Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(d / "deep.png")
    Image.new("RGBA", (32, 32), (0, 0, 255, 0)).save(d / "alpha.png")
    Image.new("RGB", (4, 4)).save(d / "tiny.png")


def test_bad_images_are_skipped_and_listed_or_converted(tmp_path):
    _bad_images(tmp_path / "s")
    cfg = load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1},
                            "datasets": [{"subsets": [{"path": str(tmp_path / "s"), "background": [0, 255, 0]}],
                                          "min_image_side": 8}]})
    scan = scan_dataset(cfg.datasets[0])
    names = sorted(it.path.name for it in scan.items)
    assert names == ["alpha.png", "cmyk.jpg", "deep.png", "good.png"]
    skipped = {s.path.name: s.reason for s in scan.skipped}
    assert "0 bytes" in skipped["empty.png"] and "unreadable" in skipped["corrupt.png"]
    assert "too small" in skipped["tiny.png"]
    summary = scan.summary()
    assert "empty.png" in summary and "converted" in summary and "3 skipped" in summary
    conv = scan.subsets[0].converted
    assert conv.get("alpha composited") == 1 and conv.get("16-bit to 8-bit") == 1 and conv.get("CMYK to RGB") == 1
    from lyco.io.images import load_rgb
    im, _ = load_rgb(tmp_path / "s" / "alpha.png", (0, 255, 0))
    assert im.getpixel((0, 0)) == (0, 255, 0)


@pytest.mark.parametrize("policy", ["error", "empty", "trigger", "warn"])
def test_missing_caption_policies(tmp_path, policy, caplog):
    d = tmp_path / "s"
    d.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(d / f"{i}.png")
    (d / "0.txt").write_text("has caption")
    sub = {"path": str(d), "missing_captions": policy, "trigger": "zkx"}
    cfg = load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1}, "datasets": [{"subsets": [sub]}]})
    if policy == "error":
        with pytest.raises(lyco.ConfigError) as e:
            scan_dataset(cfg.datasets[0])
        assert "1.png" in str(e.value) and "missing_captions" in str(e.value)
        return
    scan = scan_dataset(cfg.datasets[0])
    caps = {it.path.name: it.caption for it in scan.items}
    assert caps["0.png"] == "has caption"
    assert caps["1.png"] == ("" if policy == "empty" else "zkx")
    assert scan.subsets[0].captions_missing == 2


def test_kohya_folder_repeats_and_balancing(tmp_path):
    image_folder(tmp_path, "10_abc thing", n=4)
    image_folder(tmp_path, "2_def thing", n=8, seed=1)
    cfg = load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1},
                            "datasets": [{"folders": [str(tmp_path / "data")]}]})
    scan = scan_dataset(cfg.datasets[0])
    assert [(s.name, s.repeats, s.config.trigger) for s in scan.subsets] == [("10_abc thing", 10, "abc thing"),
                                                                             ("2_def thing", 2, "def thing")]
    assert len(scan.epoch_indices()) == 4 * 10 + 8 * 2
    cfg2 = load_train_config(data={"model": {"base": "x"}, "train": {"steps": 1},
                             "datasets": [{"folders": [str(tmp_path / "data")], "balance_classes": True}]})
    scan2 = scan_dataset(cfg2.datasets[0])
    exposures = [len(s.items) * s.repeats for s in scan2.subsets]
    assert exposures == [40, 40]


def test_caption_processing_deterministic():
    from lyco.train.config import DatasetConfig, SubsetConfig
    sub = SubsetConfig(path="x", trigger="zkx", shuffle_tags=True, keep_tokens=1, tag_dropout=0.2)
    ds = DatasetConfig(folders=["x"], caption_dropout=0.1)
    cap = "{trigger}, red, square, big, small, round"
    a = [process_caption(cap, sub, ds, 1, e, i) for e in range(3) for i in range(20)]
    b = [process_caption(cap, sub, ds, 1, e, i) for e in range(3) for i in range(20)]
    assert a == b
    assert all(c == "" or c.startswith("zkx") for c in a)
    assert "" in a and len(set(a)) > 10


def test_buckets_never_drop_and_small_final_batch():
    cfg = BucketConfig(step=8, min_side=16, max_side=64)
    buckets = make_buckets(32, cfg)
    assert all(w * h <= 32 * 32 and w % 8 == 0 and h % 8 == 0 for w, h in buckets)
    sizes = {0: (64, 32), 1: (30, 30), 2: (32, 64), 3: (40, 40), 4: (33, 31)}
    bucket_of = {i: assign(s, buckets, cfg, 32) for i, s in sizes.items()}
    assert bucket_of[0][0] > bucket_of[0][1] and bucket_of[2][1] > bucket_of[2][0]
    samples = [i for i in sizes for _ in range(3)]
    plan = plan_epoch([(0, samples, bucket_of, 4, "small_batch")], 0, 0, 1)
    seen = sorted(i for b in plan for i in b.items)
    assert seen == sorted(samples)
    assert plan == plan_epoch([(0, samples, bucket_of, 4, "small_batch")], 0, 0, 1)
    assert plan != plan_epoch([(0, samples, bucket_of, 4, "small_batch")], 0, 1, 1)
    plan2 = plan_epoch([(0, samples, bucket_of, 4, "small_batch")], 0, 0, 2)
    assert all(len(b.items) % 2 == 0 for b in plan2)
    assert sorted(set(i for b in plan2 for i in b.items)) == sorted(sizes)


# ----------------------------------------------------------------------------------------------- runs
def _write_toml(path: Path, data: dict) -> None:
    path.write_text(toml_dumps(data))
    assert tomllib.loads(path.read_text()) == data


def _cfg_file(cfg: dict, tmp: Path) -> Path:
    p = tmp / f"cfg-{abs(hash(json.dumps(cfg, sort_keys=True))) % 10**8}.toml"
    _write_toml(p, cfg)
    return p


def _train_subprocess(cfg: dict, tmp: Path, *args: str, hook: str | None = None) -> subprocess.CompletedProcess:
    """``lyco train`` in a child process; ``hook`` (see tests/train_driver.py), e.g. ``state:2:kill``, runs it with
    a test callback that signals the process at a given step."""
    p = _cfg_file(cfg, tmp)
    cmd = [sys.executable, "-m", "lyco", "train"] if hook is None else [sys.executable, str(DRIVER), hook]
    return subprocess.run([*cmd, str(p), *args], capture_output=True, text=True, env=child_env(), timeout=600)


def test_short_run_writes_adapter_samples_logs(model_dir, tmp_path):
    from lyco.train.loop import train
    data = image_folder(tmp_path)
    cfg = load_train_config(data=base_config(tmp_path, model_dir, data, **{
        "sample.prompts": ["zkx shape --s 2 --d 7"], "sample.every_n_steps": 2, "sample.steps": 2,
        "save.every_n_steps": 2, "save.keep_last_n": 1, "log.tensorboard": True}))
    final = train(cfg)
    assert final.name == "t.safetensors" and final.is_file()
    out = final.parent
    sd = load_file(str(final))
    assert any(k.startswith("lora_unet_") for k in sd) and any(k.startswith("lora_te_") for k in sd)
    meta = lyco.io.files.read_metadata(final)
    assert meta["ss_steps"] == "4" and meta["ss_base_model_version"] == "sd_v1" and meta["ss_output_name"] == "t"
    assert sorted(p.name for p in out.glob("t-s*.safetensors")) == ["t-s00000002.safetensors"]
    assert (out / "samples" / "step-00000002.png").is_file()
    assert list((out / "logs").glob("events.out.tfevents*"))
    assert json.loads((out / "config.resolved.json").read_text())["train"]["steps"] == 4
    # the adapter loads and changes the model
    from sd_tiny import generate
    pipe = lyco.sd.load_pipeline(model_dir)
    base = generate(pipe)
    lyco.sd.load(pipe, final)
    assert np.abs(generate(pipe) - base).max() > 0


def test_nan_loss_stops_with_message(model_dir, tmp_path):
    from lyco.train.loop import train
    data = image_folder(tmp_path)
    cfg = load_train_config(data=base_config(tmp_path, model_dir, data, **{
        "train.steps": 6, "train.lr": 1e30, "train.max_grad_norm": 0.0, "save.state_every_n_steps": 1,
        "train.optimizer": {"name": "sgd"}}))
    with pytest.raises(lyco.TrainingError) as e:
        train(cfg)
    msg = str(e.value)
    assert "loss became" in msg and "last good state" in msg


def _resume_config(root: Path, model_dir: Path, data: Path) -> dict:
    """6 steps, states every 2 steps, accumulation 2, rank dropout and caption dropout (RNG everywhere)."""
    return base_config(root, model_dir, data, **{
        "train.steps": 6, "save.state_every_n_steps": 2, "train.gradient_accumulation_steps": 2,
        "network.rank_dropout": 0.2, "datasets": [{"resolution": 32, "batch_size": 2, "folders": [str(data)],
                                                  "bucket": {"step": 8}, "caption_dropout": 0.3}]})


@pytest.fixture(scope="module")
def reference_run(model_dir, tmp_path_factory):
    """An uninterrupted run of :func:`_resume_config`: (data folder, final adapter tensors)."""
    root = tmp_path_factory.mktemp("reference")
    data = image_folder(root, n=5)
    (root / "a").mkdir()
    r = _train_subprocess(_resume_config(root / "a", model_dir, data), root / "a")
    assert r.returncode == 0, r.stderr[-3000:]
    return data, load_file(str(root / "a" / "run" / "t.safetensors"))


def _assert_same_adapter(expected: dict, path: Path) -> None:
    got = load_file(str(path))
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def test_resume_bit_identical_and_counters_continue(model_dir, reference_run, tmp_path):
    data, fa = reference_run
    b = _resume_config(tmp_path / "b", model_dir, data)
    (tmp_path / "b").mkdir()
    # b: killed right after the step-2 state, resumed, killed after step 4, resumed again (resume of resume)
    r1 = _train_subprocess(b, tmp_path / "b", hook="state:2:kill")
    assert r1.returncode != 0
    r2 = _train_subprocess(b, tmp_path / "b", "--resume", "latest", hook="state:4:kill")
    assert r2.returncode != 0 and "resumed from" in r2.stderr and "at step 2" in r2.stderr
    r3 = _train_subprocess(b, tmp_path / "b", "--resume", "latest")
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "at step 4" in r3.stderr
    _assert_same_adapter(fa, tmp_path / "b" / "run" / "t.safetensors")
    assert lyco.io.files.read_metadata(tmp_path / "b" / "run" / "t.safetensors")["ss_steps"] == "6"


def test_preempted_then_interrupted_run_resumes_with_the_printed_command(model_dir, reference_run, tmp_path):
    """The scheduler story: SIGKILL before the first state; the same command with --resume latest starts from
    step 0 and says so; Ctrl-C at step 3 writes a state and prints one resume command; that command finishes the
    run bit-identically to an uninterrupted one; running it again is a no-op."""
    data, fa = reference_run
    cfg = _resume_config(tmp_path, model_dir, data)
    out = tmp_path / "run"
    r1 = _train_subprocess(cfg, tmp_path, hook="step:1:kill")            # preempted: no state yet (first at 2)
    assert r1.returncode == -signal.SIGKILL and not (out / "state").exists()
    assert "Traceback" not in r1.stderr and "\r" not in r1.stderr        # not a TTY: progress lines, no bar
    assert "step 1/6" in r1.stderr and "kept in float32" not in r1.stderr  # and no third-party chatter
    r2 = _train_subprocess(cfg, tmp_path, "--resume", "latest", "--verbose", hook="step:3:int")
    assert r2.returncode == 128 + signal.SIGINT, r2.stderr[-3000:]
    assert "no complete training state" in r2.stderr and "starting from step 0" in r2.stderr
    assert "kept in float32" in r2.stderr                                 # --verbose shows third-party warnings
    assert "Traceback" not in r2.stderr and (out / "state" / "step-00000003" / "COMPLETE").is_file()
    lines = [ln for ln in r2.stderr.splitlines() if "resume with:" in ln]
    assert len(lines) == 1 and "interrupted by SIGINT at step 3 of 6" in lines[0], r2.stderr[-3000:]
    command = shlex.split(lines[0].split("resume with: ")[1])
    assert command[:2] == ["lyco", "train"] and command[-2:] == ["--resume", "latest"]
    r3 = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=child_env(),
                        timeout=600)
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "resumed from" in r3.stderr and "at step 3" in r3.stderr
    _assert_same_adapter(fa, out / "t.safetensors")
    from lyco.train.cli import main
    mtime = (out / "t.safetensors").stat().st_mtime_ns
    assert main(command[2:]) == 0 and (out / "t.safetensors").stat().st_mtime_ns == mtime   # finished: no-op
    assert not list(tmp_path.glob("run-*")) and not list(tmp_path.glob("run.bak-*"))


def test_incomplete_state_is_ignored(model_dir, tmp_path):
    from lyco.train import checkpoint as ck
    (tmp_path / "run" / "state" / "step-00000004").mkdir(parents=True)
    (tmp_path / "run" / "state" / "step-00000002").mkdir(parents=True)
    (tmp_path / "run" / "state" / "step-00000002" / "COMPLETE").write_text("2")
    assert ck.find_state(tmp_path / "run", "latest").name == "step-00000002"
    with pytest.raises(lyco.StateError):
        ck.find_state(tmp_path / "run", str(tmp_path / "run" / "state" / "step-00000004"))


def test_run_dir_is_never_reused_silently(tmp_path, caplog):
    from lyco.train.outputs import prepare_output_dir
    d = tmp_path / "run"
    d.mkdir()
    (d / "x").write_text("1")
    assert prepare_output_dir(d, overwrite=False, resuming=False).name == "run-1"
    assert (d / "x").exists()
    # overwrite = true replaces the folder's contents, but never deletes them: they are moved aside and reported
    with caplog.at_level(logging.WARNING, logger="lyco"):
        assert prepare_output_dir(d, overwrite=True, resuming=False) == d and not (d / "x").exists()
    assert d.is_dir() and not any(d.iterdir())
    backups = list(tmp_path.glob("run.bak-*"))
    assert len(backups) == 1 and (backups[0] / "x").read_text() == "1"
    assert str(backups[0]) in caplog.text and "nothing was deleted" in caplog.text


def test_ddp_two_processes_equal_one_process(model_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo) and batch 1 each = 1 process with batch 2 (same global batches)."""
    data = image_folder(tmp_path, n=6)
    ds = lambda bs: [{"resolution": 32, "batch_size": bs, "folders": [str(data)], "bucket": {"step": 8}}]  # noqa: E731
    # SGD: updates are linear in the gradient, so fp32 summation order (all-reduce vs batch mean) stays at ~1e-7;
    # Adam would turn near-zero gradient components' rounding into ±lr steps
    opt = {"train.steps": 3, "train.optimizer": {"name": "sgd"}, "train.lr": 0.05}
    one = base_config(tmp_path / "one", model_dir, data, **opt, datasets=ds(2))
    two = base_config(tmp_path / "two", model_dir, data, **opt, datasets=ds(1))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    r = _train_subprocess(one, tmp_path / "one")
    assert r.returncode == 0, r.stderr[-3000:]
    p = tmp_path / "two" / "cfg.toml"
    _write_toml(p, two)
    env = child_env()
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                         "--master_port", str(free_port()), "-m", "lyco", "train", str(p)],
                        capture_output=True, text=True, env=env, timeout=600)
    assert r2.returncode == 0, r2.stderr[-4000:]
    assert "2 processes" in r2.stderr
    fa = load_file(str(tmp_path / "one" / "run" / "t.safetensors"))
    fb = load_file(str(tmp_path / "two" / "run" / "t.safetensors"))
    assert fa.keys() == fb.keys()
    for k in fa:
        assert torch.allclose(fa[k], fb[k], atol=1e-5, rtol=1e-4), k
    assert len(list((tmp_path / "two").glob("run*"))) == 1  # one output folder, written by the main process


@pytest.mark.slow
def test_ddp_ctrl_c_on_one_process_stops_every_process_at_the_same_step(model_dir, tmp_path):
    """torchrun, 2 processes: a SIGINT that reaches only process 0 stops both after the same step with one
    complete state (both RNG files); `--resume latest` under torchrun finishes the run."""
    data = image_folder(tmp_path, n=6)
    cfg = base_config(tmp_path, model_dir, data, **{"train.steps": 4},
                      datasets=[{"resolution": 32, "batch_size": 1, "folders": [str(data)], "bucket": {"step": 8}}])
    p = _cfg_file(cfg, tmp_path)
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    r1 = subprocess.run([*run, str(DRIVER), "step:2:int:0", str(p)], capture_output=True, text=True,
                        env=child_env(), timeout=600)
    assert r1.returncode != 0
    state = tmp_path / "run" / "state" / "step-00000002"
    assert (state / "COMPLETE").is_file() and (state / "rng-rank0.pt").is_file() and (state / "rng-rank1.pt").is_file()
    assert r1.stderr.count("resume with:") == 1 and "interrupted by SIGINT at step 2 of 4" in r1.stderr
    r2 = subprocess.run([*run, "-m", "lyco", "train", str(p), "--resume", "latest"], capture_output=True, text=True,
                        env=child_env(), timeout=600)
    assert r2.returncode == 0, r2.stderr[-4000:]
    assert "at step 2" in r2.stderr
    from lyco.train.outputs import run_status
    assert run_status(tmp_path / "run").state == "finished" and run_status(tmp_path / "run").step == 4

