"""`lyco inspect` on every kind of file, and PEFT adapters (folders and files) loaded where kohya files are."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import lyco
import lyco.sd
from lyco.algos import registry
from lyco.algos.base import AdapterModule
from lyco.cli import main
from lyco.tools import convert as conv
from lyco.tools.inspect import summarize


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 32)
        self.conv = nn.Conv2d(32, 24, 3, padding=1)

    def forward(self, x):
        return self.conv(self.lin(x).permute(0, 3, 1, 2))


def _randomize(params, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.1))


def _saved(tmp_path, metadata=None, **opts):
    torch.manual_seed(0)
    net = lyco.attach(Net(), **opts)
    _randomize(net.parameters())
    f = tmp_path / "a.safetensors"
    net.save(f, metadata=metadata)
    return f, net


def _inspect(capsys, path, *extra):
    rc = main(["inspect", str(path), *extra])
    return rc, capsys.readouterr().out


# ------------------------------------------------------------------------------------------ kohya files
@pytest.mark.parametrize("opts", [dict(algo="lora", dim=4, use_tucker=True), dict(algo="loha", dim=2),
                                  dict(algo="lokr", dim=2, factor=4), dict(algo="full"),
                                  dict(algo="lokr", dim=1, factor=4, use_tucker=True)])
def test_delta_norms_are_the_loaded_modules(opts, tmp_path):
    """inspect's ‖ΔW‖ per block is what lyco's own modules compute (ΔW through the algorithm's from_file)."""
    f, net = _saved(tmp_path, **opts)
    info = summarize(str(f))
    for name in net.adapters:
        block = info["blocks"][name.split("_")[0]]
        assert block["modules_without_norm"] == 0
    expected = sum(float(a.delta_weight().detach().norm()) ** 2 for a in net.adapters.values()) ** 0.5
    assert info["blocks"]["lycoris"]["delta_norm"] == pytest.approx(expected, rel=1e-5)


def test_output_is_deterministic_and_shows_lokr_factors_and_top_tags(tmp_path, capsys):
    tags = {"10_olis": {"olis creature": 8, "blue": 3, "grass": 5}, "5_more": {"blue": 4, "olis creature": 2}}
    f, _ = _saved(tmp_path, metadata={"ss_tag_frequency": json.dumps(tags)}, algo="lokr", dim=2, factor=4)
    rc, out = _inspect(capsys, f)
    assert rc == 0
    assert "factors: lokr: W1 4x4 full ⊗ W2 8x4 low-rank x1" in out
    assert "factors: lokr: W1 4x4 full ⊗ W2 6x72 low-rank x1" in out  # the conv's kernel is folded into d·K
    assert "top tags: olis creature (10), blue (7), grass (5)" in out
    assert _inspect(capsys, f)[1] == out
    rc, js = _inspect(capsys, f, "--json")
    info = json.loads(js)
    assert info["top_tags"] == [["olis creature", 10], ["blue", 7], ["grass", 5]]
    assert _inspect(capsys, f, "--json")[1] == js


def test_blocks_in_natural_order(tmp_path):
    t = {}
    for i in (10, 2, 1):
        t[f"lora_unet_down_blocks_{i}_x.lora_down.weight"] = torch.ones(2, 4)
        t[f"lora_unet_down_blocks_{i}_x.lora_up.weight"] = torch.ones(4, 2)
    save_file(t, str(tmp_path / "b.safetensors"))
    info = summarize(str(tmp_path / "b.safetensors"))
    assert list(info["blocks"]) == ["lora_unet_down_blocks_1", "lora_unet_down_blocks_2", "lora_unet_down_blocks_10"]


def test_dora_in_is_not_claimed_for_lycoris(tmp_path):
    f, _ = _saved(tmp_path, algo="lora", dim=4, dora_wd=True)
    info = summarize(str(f))
    assert info["compatibility"]["lycoris-lora"]["level"] == "error"
    assert "--for lycoris-lora" in info["compatibility"]["lycoris-lora"]["reason"]
    assert info["compatibility"]["ComfyUI"]["level"] == "exact"


def test_unknown_algorithm_never_crashes_inspect(tmp_path, monkeypatch, capsys):
    class Mystery(AdapterModule):
        algo = "mystery"
        file_parts = frozenset({"zz_w"})

        @classmethod
        def detect(cls, tensors):
            return "zz_w" in tensors

    monkeypatch.setitem(registry._ALGOS, "mystery", Mystery)
    save_file({"lycoris_lin.zz_w": torch.ones(3), "lycoris_conv.lora_down.weight": torch.ones(2, 4),
               "lycoris_conv.lora_up.weight": torch.ones(4, 2)}, str(tmp_path / "m.safetensors"))
    rc, out = _inspect(capsys, tmp_path / "m.safetensors", "--json")
    info = json.loads(out)
    assert rc == 0 and info["algorithms"] == {"lora": 1, "mystery": 1}
    assert info["compatibility"]["ComfyUI"]["level"] == "unknown"
    assert "mystery" in info["compatibility"]["ComfyUI"]["reason"]


# ------------------------------------------------------------------------------------------ not kohya files
def test_non_adapter_files_are_named_not_claimed(tmp_path, capsys):
    from PIL import Image
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    (tmp_path / "x.png").rename(tmp_path / "x.safetensors")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.ones(2, 2)}, str(tmp_path / "ckpt.safetensors"))
    save_file({"down_blocks.0.resnets.0.conv1.weight": torch.ones(2, 2)}, str(tmp_path / "unet.safetensors"))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    expect = {"x.safetensors": "a PNG image", "ckpt.safetensors": "full Stable Diffusion checkpoint",
              "unet.safetensors": "diffusers model weights", "empty.safetensors": "an empty file"}
    for name, what in expect.items():
        rc, out = _inspect(capsys, tmp_path / name)
        assert rc == 1 and what in out and "not an adapter" in out and "compatibility" not in out, out
        info = json.loads(_inspect(capsys, tmp_path / name, "--json")[1])
        assert info["adapter"] is False and info["compatibility"] is None


def _peft_model(kind: str):
    from peft import LoHaConfig, LoKrConfig, LoraConfig, get_peft_model
    cfg = {"lora": LoraConfig(r=4, lora_alpha=8, target_modules=["lin", "conv"], rank_pattern={"conv": 2},
                              alpha_pattern={"conv": 3.0}),
           "lora-rslora-dora": LoraConfig(r=4, lora_alpha=8, target_modules=["lin", "conv"], use_rslora=True,
                                          use_dora=True),
           "loha": LoHaConfig(r=2, alpha=4, target_modules=["lin", "conv"]),
           "lokr": LoKrConfig(r=2, alpha=4, target_modules=["lin", "conv"])}[kind]
    torch.manual_seed(0)
    base = Net()
    model = get_peft_model(copy.deepcopy(base), cfg)
    _randomize([p for n, p in model.named_parameters() if p.requires_grad], seed=1)
    return base, model


@pytest.mark.parametrize("kind", ["lora", "lora-rslora-dora", "loha", "lokr"])
def test_peft_folder_and_file_load_like_peft(kind, tmp_path):
    pytest.importorskip("peft")
    base, model = _peft_model(kind)
    x = torch.randn(2, 5, 5, 16)
    with torch.no_grad():
        y_peft = model(x)
        y_base = base(x)
    model.save_pretrained(tmp_path / "peft")
    for src in (tmp_path / "peft", tmp_path / "peft" / "adapter_model.safetensors"):
        m = copy.deepcopy(base)
        net = lyco.load(src, m)
        assert len(net) == 2
        with torch.no_grad():
            y = m(x)
        err = float((y - y_peft).abs().max() / (y_peft - y_base).abs().max())
        assert err < 1e-4, (src, err)


def test_inspect_peft_folder_and_diffusers_file(tmp_path, capsys):
    pytest.importorskip("peft")
    _, model = _peft_model("loha")
    model.save_pretrained(tmp_path / "peft")
    rc, out = _inspect(capsys, tmp_path / "peft", "--json")
    info = json.loads(out)
    assert rc == 0 and info["format"] == "PEFT LOHA" and info["modules"] == 2 and info["compatibility"] is None
    assert info["algorithms"] == {"loha": 2} and info["ranks"] == {"2": 2}
    assert "lyco convert" in info["message"]
    f, net = _saved(tmp_path, algo="lora", dim=4)
    roots = [lyco.inject.Root("lycoris", Net())]
    save_file(conv.kohya_to_diffusers(load_file(str(f)), roots), str(tmp_path / "d.safetensors"))
    rc, out = _inspect(capsys, tmp_path / "d.safetensors")
    assert rc == 0 and "diffusers LoRA" in out and "compatibility:" not in out and "ranks: 4 x2" in out
    m = Net()
    loaded = lyco.load(tmp_path / "d.safetensors", m, prefix="lycoris")
    for name, a in loaded.adapters.items():
        assert torch.allclose(a.delta_weight(), net.adapters[name].delta_weight(), atol=1e-6)


def test_peft_file_without_config_says_so(tmp_path):
    pytest.importorskip("peft")
    _, model = _peft_model("lora")
    model.save_pretrained(tmp_path / "peft")
    (tmp_path / "peft" / "adapter_config.json").unlink()
    with pytest.raises(lyco.FileFormatError, match="adapter_config.json"):
        lyco.load(tmp_path / "peft" / "adapter_model.safetensors", Net())


def test_sd_pipeline_loads_a_peft_folder(tmp_path):
    pytest.importorskip("peft")
    from sd_tiny import make_pipeline
    pipe = make_pipeline("sd1")
    net = lyco.sd.attach(pipe, seed=0, algo="lora", dim=4, alpha=2.0)
    _randomize(net.parameters())
    tensors = net.state_tensors()
    expected = {n: a.delta_weight() for n, a in net.adapters.items()}
    net.detach()
    conv.write_peft(tmp_path / "peft", conv.kohya_to_peft(tensors, lyco.sd.roots(pipe)))
    loaded = lyco.sd.load(pipe, tmp_path / "peft")
    assert set(loaded.adapters) == set(expected)
    for n, a in loaded.adapters.items():
        assert torch.allclose(a.delta_weight(), expected[n], atol=1e-6), n
