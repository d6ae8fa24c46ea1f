"""Round trips: conversions keep the metadata; merged single-file checkpoints load again in lyco (every family)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lyco
import lyco.sd
from lyco.cli import main
from lyco.io.files import read_file
from sd_tiny import generate
from train_fixtures import tiny_model_dir

META = {"ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_output_name": "olis",
        "ss_tag_frequency": json.dumps({"10_olis": {"olis creature": 8, "blue background": 3}}),
        "modelspec.title": "olis", "modelspec.trigger_phrase": "olis creature", "lyco.note": "kept"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _adapter(pipe, path, seed=0, algo="lora", scale=0.05):
    net = lyco.sd.attach(pipe, algo=algo, dim=4, alpha=2.0, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    net.save(path, metadata=META)
    net.detach()
    return path


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    return _adapter(lyco.sd.load_pipeline("builtin:tiny"), d / "olis.safetensors")


# ------------------------------------------------------------------------------------------ conversion metadata
def test_peft_round_trip_keeps_metadata_and_tensors(tiny_adapter, tmp_path):
    peft, back = tmp_path / "peft", tmp_path / "back.safetensors"
    assert main(["convert", str(tiny_adapter), "-o", str(peft), "--to", "peft", "--base", "builtin:tiny"]) == 0
    for part in ("unet", "text_encoder"):
        _, carried = read_file(peft / part / "adapter_model.safetensors")
        assert carried["format"] == "pt" and carried["ss_tag_frequency"] == META["ss_tag_frequency"]
        cfg = json.loads((peft / part / "adapter_config.json").read_text())
        assert not any(k.startswith(("ss_", "lyco", "modelspec")) for k in cfg)  # PEFT warns about unknown keys
    assert main(["convert", str(peft), "-o", str(back), "--to", "kohya", "--base", "builtin:tiny"]) == 0
    t0, m0 = read_file(tiny_adapter)
    t1, m1 = read_file(back)
    assert m1 == m0  # every key, the recomputed sd-scripts hashes included
    assert t1.keys() == t0.keys() and all(torch.equal(t1[k], t0[k]) for k in t0)


def test_diffusers_round_trip_keeps_metadata(tiny_adapter, tmp_path):
    d, back = tmp_path / "d.safetensors", tmp_path / "back.safetensors"
    assert main(["convert", str(tiny_adapter), "-o", str(d), "--to", "diffusers", "--base", "builtin:tiny"]) == 0
    assert read_file(d)[1]["modelspec.trigger_phrase"] == "olis creature"
    assert main(["convert", str(d), "-o", str(back), "--to", "kohya", "--base", "builtin:tiny"]) == 0
    m0, m1 = read_file(tiny_adapter)[1], read_file(back)[1]
    # the diffusers format bakes alpha/rank into lora_B, so the tensors (and their hashes) differ; the rest is kept
    same = lambda m: {k: v for k, v in m.items() if not k.startswith("sshs_")}  # noqa: E731
    assert same(m1) == same(m0) and "format" not in m1


def test_ui_safe_keeps_metadata(tiny_adapter, tmp_path):
    out = tmp_path / "safe.safetensors"
    assert main(["convert", str(tiny_adapter), "-o", str(out), "--to", "ui-safe"]) == 0
    m = read_file(out)[1]
    assert all(m[k] == v for k, v in META.items())


# ------------------------------------------------------------------------------------ merged single files
def _same_weights(a, b):
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ma, mb = getattr(a, name, None), getattr(b, name, None)
        assert (ma is None) == (mb is None), name
        if ma is not None:
            sa, sb = ma.state_dict(), mb.state_dict()
            assert sa.keys() == sb.keys()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), name


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return lambda family: "builtin:tiny" if family == "tiny" else str(tiny_model_dir(root, family))


@pytest.mark.parametrize("family", ["tiny", "sd1", "sd2", "sdxl"])
def test_merged_single_file_loads_again_in_lyco(family, bases, tmp_path, monkeypatch):
    """merge -> single file -> load (no config, no tokenizer argument) -> extract / merge again."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))  # nothing to fall back on
    for var in ("LYCO_TOKENIZER_PATH", "LYCO_TOKENIZER_2_PATH"):
        monkeypatch.delenv(var, raising=False)
    base = bases(family)
    pipe = lyco.sd.load_pipeline(base)
    adapter = _adapter(pipe, tmp_path / "a.safetensors", scale=0.2)
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", base, str(adapter), "-o", str(merged)]) == 0

    loaded = lyco.sd.load_pipeline(merged)
    lyco.sd.load(pipe, adapter).bake()
    _same_weights(loaded, pipe)
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    assert loaded.tokenizer.get_vocab() == pipe.tokenizer.get_vocab()
    size = 32 if family == "tiny" else 16
    # same weights, same configs: the same image (up to the memory layout of the rebuilt modules)
    reloaded, original = generate(loaded, "olis creature", size=size), generate(pipe, "olis creature", size=size)
    assert np.abs(reloaded - original).max() < 1e-5

    # extract: base vs the merged file recovers the adapter (exact at full rank)
    ex = tmp_path / "extracted.safetensors"
    assert main(["extract", base, str(merged), "-o", str(ex), "--linear-dim", "4", "--conv-dim", "4",
                 "--dtype", "fp32"]) == 0
    fresh = lyco.sd.load_pipeline(base)
    lyco.sd.load(fresh, ex)
    assert np.abs(generate(fresh, size=size) - generate(pipe, size=size)).max() < 1e-3

    # merge again, with the merged file as the base: a diffusers folder this time
    again = tmp_path / "again"
    assert main(["merge", str(merged), str(adapter) + ":-1", "-o", str(again)]) == 0
    undone = lyco.sd.load_pipeline(again)
    base_pipe = lyco.sd.load_pipeline(base)
    for name in ("unet", "text_encoder"):
        sa, sb = getattr(undone, name).state_dict(), getattr(base_pipe, name).state_dict()
        assert max(float((sa[k] - sb[k]).abs().max()) for k in sa) < 1e-5, name


def test_merged_builtin_tiny_trains_and_evaluates(tiny_adapter, tmp_path):
    """The merged file is a base model like any other: lyco train and lyco eval run on it."""
    from lyco.eval import evaluate
    from lyco.eval.config import EvalConfig
    from lyco.train.config import TrainConfig
    from lyco.train.loop import train
    from train_fixtures import base_config, image_folder

    merged = tmp_path / "merged.safetensors"
    assert main(["merge", "builtin:tiny", str(tiny_adapter), "-o", str(merged)]) == 0
    cfg = TrainConfig(**base_config(tmp_path, merged, image_folder(tmp_path), **{"train.steps": 2}))
    final = train(cfg)
    assert final.is_file()
    ev = EvalConfig(base=str(merged), out=str(tmp_path / "eval"),
                    checkpoints=[{"name": "tuned", "adapter": str(final)}],
                    concepts=[{"world": "olis", "prompts": {"train": "none", "alter": "none", "agnostic": "none",
                                                            "agnostic_class": "none"}}],
                    generation={"steps": 2, "images": 2, "batch_size": 2},
                    metrics={"names": ["image_similarity"]}, report={"plots": False, "grid_images": 1})
    outcome = evaluate(ev, progress=False)
    assert {r.checkpoint for r in outcome.rows} == {"base", "tuned"} and (tmp_path / "eval" / "report.html").is_file()
