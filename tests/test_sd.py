"""Stable Diffusion integration on tiny random-weight pipelines with the real SD1 / SD2 / SDXL structure."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import lyco
import lyco.sd
from sd_tiny import generate, make_pipeline

ALGOS = {
    "lora": dict(algo="lora", dim=4, alpha=2.0, preset="kohya-conv"),
    "loha": dict(algo="loha", dim=2, alpha=1.0),
    "lokr": dict(algo="lokr", dim=10000, factor=4),
    "full": dict(algo="full"),
    "lora-dora": dict(algo="lora", dim=4, dora_wd=True),
    "diag-oft": dict(algo="diag-oft", dim=4),
    "ia3": dict(algo="ia3", preset="ia3"),
    "glora": dict(algo="glora", dim=2),
}


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3 * (p.abs().mean() + 0.1))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("algo", list(ALGOS))
def test_generate_save_reload_detach(family, algo, tmp_path):
    pipe = make_pipeline(family)
    base = generate(pipe)
    net = lyco.sd.attach(pipe, **ALGOS[algo])
    assert {s.root.prefix for s in net._sites.values()} == ({"lora_unet", "lora_te1", "lora_te2"} if family == "sdxl"
                                                             else {"lora_unet", "lora_te"})
    _randomize(net)
    adapted = generate(pipe)
    assert np.abs(adapted - base).max() > 1e-3
    f = tmp_path / "a.safetensors"
    net.save(f)
    net.detach()
    assert np.array_equal(generate(pipe), base)
    fresh = make_pipeline(family)
    net2 = lyco.sd.load(fresh, f)
    assert len(net2) == len(net)
    assert np.array_equal(generate(fresh), adapted)
    net2.merge()
    assert np.allclose(generate(fresh), adapted, atol=1e-4)
    net2.detach()
    assert np.array_equal(generate(fresh), base)


@pytest.mark.parametrize("family,version,v2,arch", [
    ("sd1", "sd_v1", "False", "stable-diffusion-v1/lora"),
    ("sd2", "sd_v2", "True", "stable-diffusion-v2-512/lora"),
    ("sdxl", "sdxl_base_v1-0", "False", "stable-diffusion-xl-v1-base/lora"),
])
def test_metadata_for_sd(family, version, v2, arch, tmp_path):
    pipe = make_pipeline(family)
    net = lyco.sd.attach(pipe, algo="lora")
    f = tmp_path / "my_lora.safetensors"
    net.save(f, dtype=torch.float16, metadata={"ss_output_name": "my_lora"})
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
        keys = list(h.keys())
    assert meta["ss_base_model_version"] == version and meta["ss_v2"] == v2
    assert meta["modelspec.architecture"] == arch and meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.resolution"] == "16x16" and meta["modelspec.date"]
    assert meta["modelspec.implementation"] == ("https://github.com/Stability-AI/generative-models"
                                                if family == "sdxl" else "diffusers")
    assert meta["modelspec.title"] == "my_lora" and meta["ss_output_name"] == "my_lora"
    for k in ("ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_network_module", "sshs_model_hash",
              "sshs_legacy_hash"):
        assert k in meta
    assert json.loads(meta["ss_network_args"])["preset"] == "attn-mlp"
    if family == "sdxl":
        assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
        assert not any(k.startswith("lora_unet_down_blocks") for k in keys)
        assert any(k.startswith("lora_te1_text_model_encoder_layers_0_") for k in keys)
        assert any(k.startswith("lora_te2_text_model_encoder_layers_0_") for k in keys)
    else:
        assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)


def test_sdxl_reads_diffusers_spelling(tmp_path):
    from safetensors.torch import save_file

    pipe = make_pipeline("sdxl")
    net = lyco.sd.attach(pipe, algo="lora", preset="kohya-conv")
    _randomize(net)
    adapted = generate(pipe)
    sd = net.state_tensors()
    net.detach()
    # rewrite the LDM names into diffusers spelling, as some tools write them
    inv = {}
    for s in net._sites.values():
        if s.root.prefix == "lora_unet":
            inv[s.name] = "lora_unet_" + s.path.replace(".", "_")
    renamed = {}
    for k, v in sd.items():
        mod, part = k.split(".", 1)
        renamed[f"{inv.get(mod, mod)}.{part}"] = v
    f = tmp_path / "diffusers_spelling.safetensors"
    save_file(renamed, str(f))
    fresh = make_pipeline("sdxl")
    net2 = lyco.sd.load(fresh, f)
    assert np.array_equal(generate(fresh), adapted)
    assert any(n.startswith("lora_unet_input_blocks") for n in net2.names())  # written back in LDM spelling


def test_several_files_and_side_multipliers(tmp_path):
    pipe = make_pipeline("sd1")
    base = generate(pipe)
    paths = []
    for i, algo in enumerate(("lora", "loha")):
        net = lyco.sd.attach(pipe, algo=algo, dim=4, seed=i)
        _randomize(net, seed=i)
        paths.append(tmp_path / f"{algo}.safetensors")
        net.save(paths[-1])
        net.detach()
    fresh = make_pipeline("sd1")
    nets = lyco.sd.load(fresh, paths[0], (paths[1], 0.5))
    assert len(nets) == 2 and nets[1].adapters[nets[1].names()[0]].multiplier == 0.5
    both = generate(fresh)
    for n in nets:
        n.detach()
    a = lyco.sd.load(fresh, paths[0], te_multiplier=0.0)
    assert all(s.wrapper.adapter.multiplier == 0.0 for s in a._sites.values() if s.root.prefix == "lora_te")
    assert all(s.wrapper.adapter.multiplier == 1.0 for s in a._sites.values() if s.root.prefix == "lora_unet")
    a.detach()
    assert not np.array_equal(both, base)
    assert np.array_equal(generate(fresh), base)


def test_pipeline_without_tokenizer():
    pipe = make_pipeline("sd1", with_tokenizer=False)
    net = lyco.sd.attach(pipe, algo="lokr", dim=10000, factor=4, preset="full")
    assert len(net) > 0
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        out = pipe.text_encoder(ids)[0]
    assert torch.isfinite(out).all()


def test_text_encoder_off_and_own_config():
    pipe = make_pipeline("sd1")
    net = lyco.sd.attach(pipe, algo="lora", text_encoder=False)
    assert all(n.startswith("lora_unet_") for n in net.names())
    net.detach()
    net = lyco.sd.attach(pipe, lyco.AdapterConfig(algo="loha"),
                         te_config=lyco.AdapterConfig(algo="lora", preset="attn-only"))
    te = [s.wrapper.adapter.algo for s in net._sites.values() if s.root.prefix == "lora_te"]
    assert set(te) == {"lora"} and len(te) == 2 * 4


def test_model_info():
    for family, res in (("sd1", 16), ("sd2", 16), ("sdxl", 16)):
        info = lyco.sd.model_info(make_pipeline(family))
        assert info.family == family and info.resolution == res and info.prediction_type == "epsilon"
    info = lyco.sd.model_info(make_pipeline("sd2", prediction_type="v_prediction"))
    assert info.prediction_type == "v_prediction"


def test_load_pipeline_from_diffusers_folder(tmp_path):
    pipe = make_pipeline("sd1")
    pipe.save_pretrained(tmp_path / "m")
    loaded = lyco.sd.load_pipeline(tmp_path / "m")
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(generate(loaded), generate(pipe))


def test_load_pipeline_errors(tmp_path):
    with pytest.raises(lyco.FileFormatError) as e:
        lyco.sd.load_pipeline(tmp_path / "missing")
    assert "missing" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(lyco.FileFormatError) as e:
        lyco.sd.load_pipeline(tmp_path / "empty")
    assert "model_index.json" in str(e.value)


def test_folder_without_tokenizer_says_how_to_provide_it(tmp_path, monkeypatch):
    pipe = make_pipeline("sd1", with_tokenizer=False)
    pipe.save_pretrained(tmp_path / "m")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("LYCO_TOKENIZER_PATH", raising=False)
    with pytest.raises(lyco.MissingTokenizerError) as e:
        lyco.sd.load_pipeline(tmp_path / "m")
    msg = str(e.value)
    assert "LYCO_TOKENIZER_PATH" in msg and "huggingface-cli download" in msg
    loaded = lyco.sd.load_pipeline(tmp_path / "m", tokenizer=False)
    assert loaded.tokenizer is None and loaded.unet is not None
    from sd_tiny import tokenizer_dir
    monkeypatch.setenv("LYCO_TOKENIZER_PATH", tokenizer_dir())
    assert lyco.sd.load_pipeline(tmp_path / "m").tokenizer is not None
