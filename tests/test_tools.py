"""Tools: merge, extract, resize, convert, inspect."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import lyco
import lyco.sd
from lyco.tools import convert as conv
from lyco.tools.compat import group, verdicts
from lyco.tools.extract import extract
from lyco.tools.lowrank import select_rank
from lyco.tools.merge import merge_adapter_networks, merge_into_pipeline, parse_adapter_arg
from lyco.tools.resize import resize_lora_tensors
from sd_tiny import generate, make_pipeline

ALGOS = {
    "lora": dict(algo="lora", dim=4, alpha=2.0, preset="kohya-conv"),
    "locon-tucker": dict(algo="lora", dim=4, alpha=2.0, preset="kohya-conv", use_tucker=True),
    "loha": dict(algo="loha", dim=2, alpha=1.0),
    "lokr": dict(algo="lokr", dim=2, factor=4),
    "full": dict(algo="full"),
    "dora": dict(algo="lora", dim=4, dora_wd=True),
    "dora-out": dict(algo="lora", dim=4, dora_wd=True, wd_on_output=True),
    "diag-oft": dict(algo="diag-oft", dim=4, constraint=0.05),
    "boft": dict(algo="boft", dim=8),
    "ia3": dict(algo="ia3", preset="ia3"),
    "glora": dict(algo="glora", dim=2),
}


def _randomize(net, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.abs().mean() + 0.1))


def _saved(pipe, algo, path, seed=0):
    net = lyco.sd.attach(pipe, seed=seed, **ALGOS[algo])
    _randomize(net, seed, scale=1.0)
    net.save(path)
    net.detach()
    return path


def _rel(a, b, base):
    """Error relative to the image scale (fp32); the adapter's own effect must be visible for this to mean much."""
    assert np.abs(b - base).max() > 2e-3, "the adapter should change the image"
    return np.abs(a - b).max() / np.abs(b).max()


# ----------------------------------------------------------------------------------------------- merge
@pytest.mark.parametrize("algo", list(ALGOS))
def test_merge_equals_adapter_at_same_multiplier(algo, tmp_path):
    pipe = make_pipeline("sd1")
    base = generate(pipe)
    f = _saved(pipe, algo, tmp_path / "a.safetensors")
    net = lyco.sd.load(pipe, f, multiplier=0.7)
    with_adapter = generate(pipe)
    net.detach()
    merge_into_pipeline(pipe, [(str(f), 0.7)])
    assert not any("LycoLayer" in type(m).__name__ for m in pipe.unet.modules())
    assert _rel(generate(pipe), with_adapter, base) < 1e-5


def test_merge_several_adapters_sums_effects_and_side_weights(tmp_path):
    pipe = make_pipeline("sd1")
    base = generate(pipe)
    fa = _saved(pipe, "lora", tmp_path / "a.safetensors", 1)
    fb = _saved(pipe, "loha", tmp_path / "b.safetensors", 2)
    na = lyco.sd.load(pipe, fa, multiplier=0.5)
    nb = lyco.sd.load(pipe, fb, multiplier=1.5)
    nb.set_multiplier(0.0, prefix="lora_te")
    na.set_multiplier(0.0, prefix="lora_te")
    both = generate(pipe)
    nb.detach()
    na.detach()
    merge_into_pipeline(pipe, [(str(fa), 0.5), (str(fb), 1.5)], te_weight=0.0)
    assert _rel(generate(pipe), both, base) < 1e-5


def test_merge_into_diffusers_folder_and_no_overwrite(tmp_path):
    from lyco.tools.merge import merge_into_checkpoint
    pipe = make_pipeline("sd1")
    pipe.save_pretrained(tmp_path / "base")
    f = _saved(pipe, "lokr", tmp_path / "a.safetensors")
    net = lyco.sd.load(pipe, f)
    expected = generate(pipe)
    net.detach()
    merge_into_checkpoint(str(tmp_path / "base"), [(str(f), 1.0)], str(tmp_path / "merged"))
    merged = lyco.sd.load_pipeline(tmp_path / "merged")
    assert np.allclose(generate(merged), expected, atol=1e-5)
    with pytest.raises(lyco.ConfigError):
        merge_into_checkpoint(str(tmp_path / "base"), [(str(f), 1.0)], str(tmp_path / "merged"))
    with pytest.raises(lyco.ConfigError):
        merge_into_checkpoint(str(tmp_path / "base"), [(str(f), 1.0)], str(f))


def test_parse_adapter_arg():
    assert parse_adapter_arg("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert parse_adapter_arg("a.safetensors") == ("a.safetensors", 1.0)
    assert parse_adapter_arg("C:/x/a.safetensors") == ("C:/x/a.safetensors", 1.0)


@pytest.mark.parametrize("mix", [("lora", "lora"), ("lora", "loha"), ("dora", "lokr")])
def test_merge_adapters_into_one(mix, tmp_path):
    pipe = make_pipeline("sd1")
    base = generate(pipe)
    files = [_saved(pipe, a, tmp_path / f"{i}.safetensors", i) for i, a in enumerate(mix)]
    nets = [lyco.sd.load(pipe, f, multiplier=w) for f, w in zip(files, (1.0, 0.5))]
    expected = generate(pipe)
    tensors, rep = merge_adapter_networks(list(zip(nets, (1.0, 0.5))), lyco.sd.roots(pipe))
    for n in reversed(nets):
        n.detach()
    if mix == ("lora", "lora"):
        assert not rep.full and rep.concatenated
    else:
        assert rep.full
    out = tmp_path / "merged.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
    lyco.sd.load(pipe, out)
    assert _rel(generate(pipe), expected, base) < 1e-4


# ----------------------------------------------------------------------------------------------- extract
def _planted(rank=3, seed=0):
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Conv2d(64, 32, 3, padding=1))
    tuned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed + 1)
    deltas = {}
    with torch.no_grad():
        for name, m in (("0", tuned[0]), ("2", tuned[2])):
            o, x = m.weight.shape[0], m.weight[0].numel()
            d = (torch.randn(o, rank, generator=g) @ torch.randn(rank, x, generator=g)).reshape(m.weight.shape) * 0.05
            m.weight.add_(d)
            deltas[name] = d
    return base, tuned, deltas


def test_extract_recovers_planted_delta(tmp_path):
    base, tuned, deltas = _planted(rank=3)
    net, rep = extract(base, tuned, str(tmp_path / "e.safetensors"), linear_dim=3, conv_dim=3, dtype=None,
                       full_when_cheaper=False)
    assert all(x.rank == 3 for x in rep.layers) and rep.overall_rel_error < 1e-4
    for name, d in deltas.items():
        a = net.adapters[f"lycoris_{name}"]
        assert ((a.delta_weight() - d).norm() / d.norm()) < 1e-4
    net.detach()
    # extract -> merge reproduces the tuned model within the reported error
    loaded = lyco.load(tmp_path / "e.safetensors", base)
    loaded.bake()
    for (n, p), q in zip(base.named_parameters(), tuned.parameters()):
        assert (p - q).norm() <= 1e-4 * q.norm() + 1e-6, n


@pytest.mark.parametrize("mode,param", [("threshold", 1e-3), ("ratio", 1e-4), ("quantile", 1.0)])
def test_extract_rank_modes_pick_true_rank(mode, param, tmp_path):
    base, tuned, _ = _planted(rank=5)
    _, rep = extract(base, tuned, None, mode=mode, linear_threshold=param, conv_threshold=param, linear_ratio=param,
                     conv_ratio=param, linear_quantile=param, conv_quantile=param, full_when_cheaper=False)
    assert [x.rank for x in rep.layers] == [5, 5]


def test_select_rank_on_planted_spectrum():
    S = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0, 0.0])
    assert select_rank(S, "fixed", 3, 6) == 3
    assert select_rank(S, "threshold", 1.5, 6) == 3
    assert select_rank(S, "ratio", 0.15, 6) == 3  # σ > 1.5
    assert select_rank(S, "quantile", 0.75, 6) == 2  # 15/18 >= 0.75
    assert select_rank(S, "quantile", 1.0, 6) == 4


def test_extract_tucker_and_sd(tmp_path):
    base, tuned, deltas = _planted(rank=2)
    net, rep = extract(base, tuned, None, linear_dim=2, conv_dim=2, use_tucker=True, full_when_cheaper=False)
    kinds = {x.name: x.kind for x in rep.layers}
    assert kinds == {"lycoris_0": "locon", "lycoris_2": "tucker"}
    net.detach()
    p0, p1 = make_pipeline("sd1"), make_pipeline("sd1")
    f = _saved(p1, "lora", tmp_path / "l.safetensors")
    lyco.sd.load(p1, f).bake()
    net, rep = extract(p0, p1, str(tmp_path / "x.safetensors"), linear_dim=4, conv_dim=4, dtype=None)
    assert rep.overall_rel_error < 1e-4
    assert all(n.startswith(("lora_unet_", "lora_te_")) for n in net.names())


# ----------------------------------------------------------------------------------------------- resize
def test_resize_error_equals_discarded_energy():
    torch.manual_seed(0)
    up, down = torch.randn(32, 8), torch.randn(8, 16, 3, 3)
    tensors = {"m.lora_up.weight": up.reshape(32, 8, 1, 1), "m.lora_down.weight": down, "m.alpha": torch.tensor(4.0)}
    dW = 0.5 * (up @ down.reshape(8, -1))
    S = torch.linalg.svdvals(dW)
    out, rep = resize_lora_tensors(tensors, "fixed", 3)
    new = out["m.lora_up.weight"].reshape(32, 3) @ out["m.lora_down.weight"].reshape(3, -1)
    err2 = float((dW - new).pow(2).sum())
    assert err2 == pytest.approx(float(S[3:].pow(2).sum()), rel=1e-3)
    assert rep.retained == pytest.approx(float(S[:3].pow(2).sum() / S.pow(2).sum()), rel=1e-5)
    # the kept directions are the top singular directions of ΔW
    U = torch.linalg.svd(dW)[0][:, :3]
    Un = torch.linalg.svd(new)[0][:, :3]
    assert torch.allclose((U.T @ Un).abs().sum(0), torch.ones(3), atol=1e-3)


def test_resize_tucker_and_alpha_scale():
    torch.manual_seed(0)
    t = {"m.lora_up.weight": torch.randn(8, 4, 1, 1), "m.lora_down.weight": torch.randn(4, 6, 1, 1),
         "m.lora_mid.weight": torch.randn(4, 4, 3, 3), "m.alpha": torch.tensor(2.0)}
    out, rep = resize_lora_tensors(t, "fixed", 4)
    assert rep.retained == pytest.approx(1.0, abs=1e-6)
    assert out["m.lora_down.weight"].shape == (4, 6, 3, 3)


# ----------------------------------------------------------------------------------------------- convert
@pytest.mark.parametrize("algo", ["lora", "loha", "lokr", "dora-out"])
def test_kohya_peft_kohya_bit_exact(algo, tmp_path):
    pipe = make_pipeline("sd1")
    f = _saved(pipe, algo if algo != "lora" else "lora", tmp_path / "a.safetensors")
    tensors = load_file(str(f))
    roots = lyco.sd.roots(pipe)
    peft_parts = conv.kohya_to_peft(tensors, roots)
    conv.write_peft(tmp_path / "peft", peft_parts)
    back = conv.peft_to_kohya(conv.read_peft(tmp_path / "peft"), roots)
    for k, v in tensors.items():
        if algo == "lokr" and k.endswith(".alpha") and "lokr_w1_b" not in str(list(tensors)):
            continue
        assert k in back, k
        assert back[k].dtype == v.dtype and torch.equal(back[k].reshape(v.shape), v), k


@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
def test_peft_loads_the_conversion(algo, tmp_path):
    pytest.importorskip("peft")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Conv2d(32, 24, 3, padding=1))

    def run(m, x):
        return m[2](m[1](m[0](x)).permute(0, 3, 1, 2))

    x = torch.randn(2, 5, 5, 16)
    net = lyco.attach(model, algo=algo, dim=4, alpha=2.0, factor=4)
    _randomize(net)
    with torch.no_grad():
        y = run(model, x)
    tensors = net.state_tensors()
    net.detach()
    roots = [lyco.inject.Root("lycoris", model)]
    parts = conv.kohya_to_peft(tensors, roots)
    sd, cfg = parts["model"]
    from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    cls = {"LORA": LoraConfig, "LOHA": LoHaConfig, "LOKR": LoKrConfig}[cfg["peft_type"]]
    fields = set(cls.__dataclass_fields__)
    pc = cls(**{k: v for k, v in cfg.items() if k in fields and k != "peft_type"})
    m2 = copy.deepcopy(model)
    m2 = inject_adapter_in_model(pc, m2)
    res = set_peft_model_state_dict(m2, {k[len("base_model.model."):]: v for k, v in sd.items()})
    assert not [k for k in res.unexpected_keys]
    with torch.no_grad():
        y2 = run(m2, x)
    assert torch.allclose(y2, y, atol=1e-5)


def test_diffusers_format_loads_in_diffusers(tmp_path):
    pytest.importorskip("peft")
    pipe = make_pipeline("sd1")
    base = generate(pipe)
    f = _saved(pipe, "lora", tmp_path / "a.safetensors")
    net = lyco.sd.load(pipe, f)
    expected = generate(pipe)
    net.detach()
    out = conv.kohya_to_diffusers(load_file(str(f)), lyco.sd.roots(pipe))
    save_file(out, str(tmp_path / "d.safetensors"))
    fresh = make_pipeline("sd1")
    fresh.load_lora_weights(str(tmp_path / "d.safetensors"))
    assert _rel(generate(fresh), expected, base) < 1e-3


@pytest.mark.parametrize("algo", ["dora-out", "diag-oft", "ia3", "glora", "lokr-tucker", "loha-dora"])
def test_ui_safe_same_effect(algo, tmp_path):
    pipe = make_pipeline("sd1")
    base = generate(pipe)
    opts = {"lokr-tucker": dict(algo="lokr", dim=1, factor=4, use_tucker=True, preset="kohya-conv"),
            "loha-dora": dict(algo="loha", dim=2, dora_wd=True)}.get(algo, ALGOS.get(algo))
    net = lyco.sd.attach(pipe, seed=0, **opts)
    _randomize(net)
    expected = generate(pipe)
    tensors = net.state_tensors()
    net.detach()
    roots = lyco.sd.roots(pipe)
    out, notes = conv.ui_safe(tensors, roots if algo != "lokr-tucker" else None)
    assert notes
    v = verdicts(group(out))
    assert not [c for c, x in v.items() if x.level == "approximate" and c != "diffusers"], v
    clients = ("ComfyUI", "A1111") if algo == "diag-oft" else ("ComfyUI", "A1111", "Forge", "InvokeAI")
    for client in clients:  # OFT stays OFT (ComfyUI and A1111 only), with its constraint folded
        assert v[client].level == "exact", (client, v[client].reason)
    save_file({k: t.contiguous() for k, t in out.items()}, str(tmp_path / "safe.safetensors"))
    lyco.sd.load(pipe, tmp_path / "safe.safetensors")
    assert _rel(generate(pipe), expected, base) < 1e-5


def test_ui_safe_svd_option_reports_error():
    pipe = make_pipeline("sd1")
    net = lyco.sd.attach(pipe, seed=0, **ALGOS["dora-out"])
    _randomize(net)
    tensors = net.state_tensors()
    net.detach()
    out, notes = conv.ui_safe(tensors, lyco.sd.roots(pipe), dora_rank=2)
    assert any("relative error" in n for n in notes)
    assert not any(k.endswith(".diff") for k in out)


def test_ui_safe_without_base_says_what_is_needed():
    pipe = make_pipeline("sd1")
    net = lyco.sd.attach(pipe, seed=0, **ALGOS["dora-out"])
    tensors = net.state_tensors()
    net.detach()
    with pytest.raises(lyco.FileFormatError) as e:
        conv.ui_safe(tensors, None)
    assert "--base" in str(e.value) and "output-axis DoRA" in str(e.value)


# ----------------------------------------------------------------------------------------------- inspect
EXPECTED_VERDICTS = {
    "lora": {"ComfyUI": "exact", "A1111": "exact", "diffusers": "exact", "lycoris-lora": "exact"},
    "locon-tucker": {"ComfyUI": "exact", "diffusers": "error", "sd-scripts": "ignored"},
    "loha": {"InvokeAI": "exact", "diffusers": "error"},
    "lokr": {"Forge": "exact", "diffusers": "error"},
    "full": {"ComfyUI": "exact", "diffusers": "error"},
    "dora": {"ComfyUI": "exact", "InvokeAI": "exact", "diffusers": "approximate"},
    "dora-out": {"ComfyUI": "approximate", "A1111": "approximate", "lycoris-lora": "exact"},
    "diag-oft": {"ComfyUI": "approximate", "A1111": "exact", "Forge": "ignored", "InvokeAI": "error"},
    "boft": {"ComfyUI": "exact", "InvokeAI": "error"},
    "ia3": {"ComfyUI": "ignored", "A1111": "exact", "lycoris-lora": "error"},
    "glora": {"ComfyUI": "exact", "A1111": "error", "InvokeAI": "error"},
}


@pytest.mark.parametrize("algo", list(EXPECTED_VERDICTS))
def test_inspect_compatibility(algo, tmp_path, capsys):
    from lyco.cli import main
    pipe = make_pipeline("sd1")
    f = _saved(pipe, algo, tmp_path / f"{algo}.safetensors")
    assert main(["inspect", str(f), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base_model"] == "sd1"
    for client, level in EXPECTED_VERDICTS[algo].items():
        assert info["compatibility"][client]["level"] == level, (client, info["compatibility"][client])
    if algo in ("lora", "loha", "lokr", "full"):
        assert all(b["modules_without_norm"] == 0 for b in info["blocks"].values())
        assert sum(b["modules"] for b in info["blocks"].values()) == info["modules"]
