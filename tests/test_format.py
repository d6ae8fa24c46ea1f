"""File format: exact keys and shapes, alpha rules, dtypes, metadata and hashes."""
from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

import lyco


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(32, 48)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.pw = nn.Conv2d(16, 32, 1, bias=False)

    def forward(self, x):
        return x


def keys_and_shapes(path):
    sd = load_file(str(path))
    return {k: tuple(v.shape) for k, v in sd.items()}, sd


EXPECTED = {
    "lora": {
        "lycoris_lin.lora_down.weight": (4, 32), "lycoris_lin.lora_up.weight": (48, 4), "lycoris_lin.alpha": (),
        "lycoris_conv.lora_down.weight": (4, 16, 3, 3), "lycoris_conv.lora_up.weight": (32, 4, 1, 1),
        "lycoris_pw.lora_down.weight": (4, 16, 1, 1), "lycoris_pw.lora_up.weight": (32, 4, 1, 1),
    },
    "lora_tucker": {
        "lycoris_conv.lora_down.weight": (4, 16, 1, 1), "lycoris_conv.lora_mid.weight": (4, 4, 3, 3),
        "lycoris_conv.lora_up.weight": (32, 4, 1, 1),
    },
    "loha": {
        "lycoris_lin.hada_w1_a": (48, 4), "lycoris_lin.hada_w1_b": (4, 32),
        "lycoris_conv.hada_w1_a": (32, 4), "lycoris_conv.hada_w1_b": (4, 144), "lycoris_conv.hada_w2_b": (4, 144),
    },
    "loha_tucker": {
        "lycoris_conv.hada_w1_a": (4, 32), "lycoris_conv.hada_w1_b": (4, 16), "lycoris_conv.hada_t1": (4, 4, 3, 3),
        "lycoris_conv.hada_t2": (4, 4, 3, 3),
    },
    "lokr": {  # factor -1, dim 1: 48 -> (6, 8), 32 -> (4, 8); W2 low-rank
        "lycoris_lin.lokr_w1": (6, 4), "lycoris_lin.lokr_w2_a": (8, 1), "lycoris_lin.lokr_w2_b": (1, 8),
        "lycoris_conv.lokr_w1": (4, 4), "lycoris_conv.lokr_w2_a": (8, 1), "lycoris_conv.lokr_w2_b": (1, 36),
    },
    "lokr_tucker": {
        "lycoris_conv.lokr_w1": (4, 4), "lycoris_conv.lokr_t2": (1, 1, 3, 3), "lycoris_conv.lokr_w2_a": (1, 8),
        "lycoris_conv.lokr_w2_b": (1, 4),
    },
    "lokr_full": {
        "lycoris_lin.lokr_w1": (6, 4), "lycoris_lin.lokr_w2": (8, 8), "lycoris_conv.lokr_w2": (8, 4, 3, 3),
    },
    "full": {
        "lycoris_lin.diff": (48, 32), "lycoris_lin.diff_b": (48,), "lycoris_pw.diff": (32, 16, 1, 1),
    },
    "dora_in": {"lycoris_lin.dora_scale": (1, 32), "lycoris_conv.dora_scale": (1, 16, 1, 1)},
    "dora_out": {"lycoris_lin.dora_scale": (48, 1), "lycoris_conv.dora_scale": (32, 1, 1, 1)},
}
OPTIONS = {
    "lora": dict(algo="lora"), "lora_tucker": dict(algo="lora", use_tucker=True), "loha": dict(algo="loha"),
    "loha_tucker": dict(algo="loha", use_tucker=True), "lokr": dict(algo="lokr", dim=1),
    "lokr_tucker": dict(algo="lokr", dim=1, use_tucker=True), "lokr_full": dict(algo="lokr", dim=10000),
    "full": dict(algo="full"), "dora_in": dict(algo="lora", dora_wd=True),
    "dora_out": dict(algo="lora", dora_wd=True, wd_on_output=True),
}


@pytest.mark.parametrize("variant", EXPECTED)
def test_keys_and_shapes(variant, tmp_path):
    net = lyco.attach(M(), **OPTIONS[variant])
    f = tmp_path / "a.safetensors"
    net.save(f)
    shapes, sd = keys_and_shapes(f)
    for k, s in EXPECTED[variant].items():
        assert shapes.get(k) == s, (k, shapes.get(k), s)
    alphas = [k for k in shapes if k.endswith(".alpha")]
    if variant == "full":
        assert not alphas, "full writes no alpha"
        assert "lycoris_pw.diff_b" not in shapes  # layer without bias
    else:
        assert len(alphas) == 3
        for k in alphas:
            assert shapes[k] == () and sd[k].dtype == torch.float32


def test_fp16_save_keeps_alpha_fp32(tmp_path):
    net = lyco.attach(M(), algo="lokr", dim=100000, alpha=1.0)
    f = tmp_path / "a.safetensors"
    net.save(f, dtype=torch.float16)
    sd = load_file(str(f))
    assert sd["lycoris_lin.alpha"].dtype == torch.float32
    assert sd["lycoris_lin.alpha"].item() == 100000.0  # would overflow to inf in fp16
    assert sd["lycoris_lin.lokr_w1"].dtype == torch.float16


def test_metadata_and_hashes(tmp_path):
    net = lyco.attach(M(), algo="loha", dim=8, alpha=4.0, dora_wd=True)
    f = tmp_path / "a.safetensors"
    net.save(f, metadata={"ss_output_name": "demo", "custom": "x"})
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_network_module"] == "lyco.kohya"
    assert meta["ss_network_dim"] == "8" and float(meta["ss_network_alpha"]) == 4.0
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == "loha" and args["dora_wd"] == "True"
    assert meta["ss_output_name"] == "demo" and meta["custom"] == "x"
    assert meta["lyco.algo"] == "loha"
    cfg = json.loads(meta["lyco_config"])
    assert cfg["rs_lora_folded"] is True
    assert cfg["modules"]["lycoris_lin"]["dora_axis"] == "in"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert meta["sshs_model_hash"] == hashlib.sha256(raw[8 + n:]).hexdigest()
    assert len(meta["sshs_legacy_hash"]) == 8
    # the model hash ignores metadata: saving with other metadata gives the same hash
    g = tmp_path / "b.safetensors"
    net.save(g, metadata={"ss_output_name": "other"})
    with safe_open(str(g), "pt") as h:
        assert h.metadata()["sshs_model_hash"] == meta["sshs_model_hash"]


def test_scalar_folded_into_one_factor(tmp_path):
    m = M()
    net = lyco.attach(m, algo="lora", use_scalar=True)
    with torch.no_grad():
        for a in net.adapters.values():
            a.scalar.fill_(0.5)
    f = tmp_path / "a.safetensors"
    net.save(f)
    sd = load_file(str(f))
    a = net.adapters["lycoris_lin"]
    assert torch.allclose(sd["lycoris_lin.lora_up.weight"], a.lora_up.detach() * 0.5)
    assert torch.equal(sd["lycoris_lin.lora_down.weight"], a.lora_down.detach())
    assert "lycoris_lin.scalar" not in sd


def test_loads_pt_with_weights_only(tmp_path):
    m = M()
    net = lyco.attach(m)
    sd = net.state_tensors()
    f = tmp_path / "a.pt"
    torch.save(sd, f)
    net.detach()
    net2 = lyco.load(f, m)
    assert sorted(net2.names()) == ["lycoris_conv", "lycoris_lin", "lycoris_pw"]


def test_reads_lycoris_prefix_aliases(tmp_path):
    """Files written for prefix 'lycoris' load when the network uses another prefix, and vice versa."""
    from safetensors.torch import save_file
    m = M()
    net = lyco.attach(m, prefix="lora_unet")
    assert net.names()[0].startswith("lora_unet_")
    sd = {k.replace("lora_unet_", "lycoris_"): v for k, v in net.state_tensors().items()}
    net.detach()
    f = tmp_path / "x.safetensors"
    save_file(sd, str(f))
    net2 = lyco.load(f, m, prefix="lora_unet")
    assert len(net2) == 3


def test_ignores_legacy_sparse_bias_keys(tmp_path, caplog):
    from safetensors.torch import save_file
    m = M()
    net = lyco.attach(m)
    sd = net.state_tensors()
    net.detach()
    sd["lycoris_lin.bias_indices"] = torch.zeros(3, dtype=torch.int16)
    sd["lycoris_lin.bias_values"] = torch.zeros(3)
    sd["lycoris_lin.bias_size"] = torch.tensor([48, 32])
    f = tmp_path / "x.safetensors"
    save_file(sd, str(f))
    net2 = lyco.load(f, m)
    assert len(net2) == 3


@pytest.mark.parametrize("shape_kind", ["in", "out", "flat", "peft_conv"])
def test_dora_axis_from_shape(shape_kind, tmp_path):
    from safetensors.torch import save_file
    m = M()
    net = lyco.attach(m, algo="lora", dora_wd=True, wd_on_output=shape_kind != "in", target_names=["conv"])
    sd = net.state_tensors()
    net.detach()
    ds = sd["lycoris_conv.dora_scale"]
    if shape_kind == "flat":
        sd["lycoris_conv.dora_scale"] = ds.reshape(-1)
    elif shape_kind == "peft_conv":
        sd["lycoris_conv.dora_scale"] = ds.reshape(1, 32, 1, 1)
    f = tmp_path / "d.safetensors"
    save_file(sd, str(f))
    net2 = lyco.load(f, m)
    assert net2.adapters["lycoris_conv"].dora_axis == ("in" if shape_kind == "in" else "out")
    assert torch.equal(net2.adapters["lycoris_conv"].dora_scale.reshape(-1), ds.reshape(-1))
