"""DyLoRA, GLoRA, (IA)³, diag-OFT, BOFT and norm adapters: math, files, and cross-checks with lycoris-lora 4.1.3."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import lyco
from helpers import assert_close_i1
from lyco.algos.functional import oft as F_oft

lycoris = pytest.importorskip("lycoris")
from lycoris import LycorisNetwork, create_lycoris, create_lycoris_from_weights  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(24, 32)
        self.conv = nn.Conv2d(32, 48, 3, padding=1)

    def forward(self, x):
        return self.conv(self.lin(x).permute(0, 3, 1, 2))


def _setup():
    torch.manual_seed(0)
    m = Net().eval()
    x = torch.randn(2, 5, 5, 24)
    with torch.no_grad():
        y = m(x)
    return m, x, y


def _randomize(params, scale=1.0, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g) * scale * (p.abs().mean() + 0.05))


def _reset_lycoris_preset():
    LycorisNetwork.apply_preset({"target_module": ["Linear", "Conv2d"], "target_name": [], "module_algo_map": {},
                                 "name_algo_map": {}, "exclude_name": [], "enable_conv": True})


CROSS = {
    "glora": (dict(algo="glora", dim=4, alpha=2.0), dict(algo="glora")),
    "diag-oft": (dict(algo="diag-oft", dim=8), dict(algo="diag-oft")),
    "boft": (dict(algo="boft", dim=8), dict(algo="boft")),
}


@pytest.mark.parametrize("variant", CROSS)
def test_lyco_file_in_lycoris(variant, tmp_path):
    m, x, y_base = _setup()
    net = lyco.attach(m, **CROSS[variant][0])
    _randomize(net.parameters(), 0.3)
    with torch.no_grad():
        y = m(x)
    f = tmp_path / "a.safetensors"
    net.save(f)
    net.detach()
    m2 = copy.deepcopy(m)
    ref, _ = create_lycoris_from_weights(1.0, str(f), m2)
    assert len(ref.loras) == 2
    ref.apply_to()
    with torch.no_grad():
        assert_close_i1(m2(x), y, y_base, f"lycoris forward of a lyco {variant} file")


@pytest.mark.parametrize("variant", CROSS)
def test_lycoris_file_in_lyco(variant, tmp_path):
    """lycoris's default (rebuild) forward is correct for these without a constraint; lyco reproduces it."""
    m, x, y_base = _setup()
    ours, theirs = CROSS[variant]
    m_ref = copy.deepcopy(m)
    _reset_lycoris_preset()
    ref = create_lycoris(m_ref, 1.0, linear_dim=ours["dim"], linear_alpha=ours.get("alpha", 1.0),
                         conv_dim=ours["dim"], conv_alpha=ours.get("alpha", 1.0), **theirs)
    ref.apply_to()
    _randomize(ref.parameters(), 0.3)
    with torch.no_grad():
        y_ref = m_ref(x)
    f = tmp_path / "ref.safetensors"
    ref.save_weights(str(f), torch.float32, None)
    net = lyco.load(f, m)
    assert net.algo_counts() == {ours["algo"]: 2}
    with torch.no_grad():
        assert_close_i1(m(x), y_ref, y_base, f"lyco forward of a lycoris {variant} file")


def test_ia3_matches_reference_merge_math_and_loads_its_files(tmp_path):
    """Reference bug #5: lycoris cannot load its own IA3 files (TypeError); its rebuild math is right."""
    m, x, y_base = _setup()
    m_ref = copy.deepcopy(m)
    _reset_lycoris_preset()
    ref = create_lycoris(m_ref, 1.0, linear_dim=4, linear_alpha=1.0, algo="ia3")
    ref.apply_to()
    _randomize(ref.parameters(), 0.5)
    with torch.no_grad():
        y_ref = m_ref(x)
    f = tmp_path / "ia3.safetensors"
    ref.save_weights(str(f), torch.float32, None)
    with pytest.raises(TypeError):
        create_lycoris_from_weights(1.0, str(f), copy.deepcopy(m))
    net = lyco.load(f, m)
    assert net.algo_counts() == {"ia3": 2}
    with torch.no_grad():
        assert_close_i1(m(x), y_ref, y_base, "lyco forward of a lycoris IA3 file")


def test_ia3_bias_untouched_and_on_input_saved(tmp_path):
    m, x, y_base = _setup()
    net = lyco.attach(m, algo="ia3", train_on_input=True)
    _randomize(net.parameters())
    net.merge()
    assert torch.equal(m.lin.bias, net.site("lycoris_lin").wrapper._merge_backup[1])
    net.unmerge()
    f = tmp_path / "a.safetensors"
    net.save(f)
    sd = load_file(str(f))
    assert sd["lycoris_lin.on_input"].dtype == torch.int64 and sd["lycoris_lin.on_input"].item() == 1
    assert sd["lycoris_lin.weight"].shape == (24,) and sd["lycoris_conv.weight"].shape == (1, 32, 1, 1)
    assert "lycoris_lin.alpha" not in sd


def test_ia3_preset_targets():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.to_k, self.to_v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    class TB(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn1 = Attn()
            self.ff = nn.Module()
            self.ff.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    m = nn.Module()
    m.block = TB()
    net = lyco.attach(m, algo="ia3", preset="ia3")
    assert sorted(net.names()) == ["lycoris_block_attn1_to_k", "lycoris_block_attn1_to_v", "lycoris_block_ff_net_2"]
    assert net.adapters["lycoris_block_ff_net_2"].on_input is True
    assert net.adapters["lycoris_block_attn1_to_k"].on_input is False


def test_oft_defaults_are_interop_safe(tmp_path):
    m, _, _ = _setup()
    net = lyco.attach(m, algo="diag-oft", dim=8)
    f = tmp_path / "a.safetensors"
    net.save(f)
    sd = load_file(str(f))
    assert sd["lycoris_lin.alpha"].item() == 0.0 and "lycoris_lin.rescale" not in sd
    assert sd["lycoris_lin.oft_blocks"].shape == (8, 4, 4)  # factorization(32, 8) = (4, 8): 8 blocks of 4


def test_oft_block_size_rule():
    m = nn.Sequential(nn.Linear(8, 320))
    for dim, bs in ((16, 16), (32, 10)):
        net = lyco.attach(m, algo="diag-oft", dim=dim)
        assert net.adapters["lycoris_0"].bs == bs
        net.detach()


def test_boft_impossible_split_is_a_clear_error():
    with pytest.raises(lyco.ConfigError) as e:
        lyco.attach(nn.Sequential(nn.Linear(8, 320)), algo="boft", dim=8)
    assert "320" in str(e.value) and "dim" in str(e.value)


def test_boft_any_batch_shape():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32))
    net = lyco.attach(m, algo="boft", dim=4)
    _randomize(net.parameters())
    x = torch.randn(3, 2, 5, 16)
    y = m(x)
    for i in range(3):
        assert torch.allclose(m(x[i]), y[i], atol=1e-6)


def test_cayley_is_orthogonal_and_constraint_caps_norm():
    torch.manual_seed(0)
    A = torch.randn(5, 6, 6)
    R = F_oft.cayley(A)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(6).expand(5, 6, 6), atol=1e-5)
    q = A - A.transpose(-1, -2)
    tau = 0.1 * q.norm().item()
    Rc = F_oft.cayley(A, tau)
    assert torch.allclose(Rc, F_oft.cayley(A * tau / (q.norm() + 1e-8)), atol=1e-6)


def test_oft_bypass_rotates_before_the_bias():
    """Reference bug #10: the rotation must not touch the bias, so bypass equals merge."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16))
    with torch.no_grad():
        m[0].bias.fill_(3.0)
    x = torch.randn(4, 8)
    net = lyco.attach(m, algo="diag-oft", dim=4, path="bypass")
    _randomize(net.parameters())
    y = m(x)
    net.merge()
    assert torch.allclose(m(x), y, atol=1e-5)
    assert torch.equal(m[0].bias, torch.full((16,), 3.0))


def test_glora_math():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 10))
    W, b = m[0].weight.detach().clone(), m[0].bias.detach().clone()
    net = lyco.attach(m, algo="glora", dim=3, alpha=1.5)
    _randomize(net.parameters())
    a = net.adapters["lycoris_0"]
    s = 1.5 / 3
    A = a.a1.detach() @ a.a2.detach()
    B = a.b1.detach() @ a.b2.detach()
    x = torch.randn(5, 12)
    expected = x @ (W + s * (W @ A + B)).T + b
    for path in ("bypass", "rebuild"):
        a.opts = a.opts.replace(path=path)
        assert torch.allclose(m(x), expected, atol=1e-5), path


def test_glora_rejects_tucker_keys(tmp_path):
    from safetensors.torch import save_file
    m = nn.Sequential(nn.Conv2d(4, 4, 3))
    net = lyco.attach(m, algo="glora", dim=2)
    sd = net.state_tensors()
    net.detach()
    sd["lycoris_0.bm.weight"] = torch.zeros(2, 2, 3, 3)
    f = tmp_path / "g.safetensors"
    save_file(sd, str(f))
    with pytest.raises(lyco.FileFormatError) as e:
        lyco.load(f, m)
    assert "bm.weight" in str(e.value)


def test_glora_rank_dropout_masks_both_branches_independently():
    m = nn.Sequential(nn.Linear(8, 8))
    net = lyco.attach(m, algo="glora", dim=4, rank_dropout=0.5)
    assert net.adapters["lycoris_0"].mask_size() == 8


def test_dylora_trains_random_prefix_with_rank_scale():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16))
    net = lyco.attach(m, algo="dylora", dim=8, alpha=4.0, block_size=2)
    a = net.adapters["lycoris_0"]
    _randomize(net.parameters())
    x = torch.randn(3, 16)
    base = m[0].base_layer(x)
    up, down = a.lora_up.detach(), a.lora_down.detach()
    m.train()
    seen = set()
    for _ in range(40):
        m.zero_grad()
        y = m(x)
        # find which truncation this forward used: it must be exactly base + (alpha/r_j)·up_j·down_j·x
        matches = [r for r in (2, 4, 6, 8)
                   if torch.allclose(y, base + (4.0 / r) * x @ (up[:, :r] @ down[:r]).T, atol=1e-5)]
        assert len(matches) == 1
        r = matches[0]
        seen.add(r)
        y.sum().backward()
        # only block j (the last one used) gets gradients
        g = a.lora_down.grad
        assert g[: r - 2].abs().sum() == 0 and g[r - 2: r].abs().sum() > 0 and g[r:].abs().sum() == 0
    assert seen == {2, 4, 6, 8}
    m.eval()
    y1, y2 = m(x), m(x)
    assert torch.equal(y1, y2)
    assert torch.allclose(y1, base + 0.5 * x @ (up @ down).T, atol=1e-5)


@pytest.mark.parametrize("rank", [2, 4, 6])
def test_dylora_truncated_export_is_a_valid_locon_file(rank, tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.Conv2d(16, 8, 3, padding=1))
    net = lyco.attach(m, algo="dylora", dim=8, alpha=4.0, block_size=2)
    _randomize(net.parameters())
    a = net.adapters["lycoris_1"]
    f = tmp_path / "t.safetensors"
    net.save(f, dylora_rank=rank)
    sd = load_file(str(f))
    assert sd["lycoris_1.lora_up.weight"].shape == (8, rank, 1, 1)
    assert sd["lycoris_1.lora_down.weight"].shape == (rank, 16, 3, 3)
    assert sd["lycoris_1.alpha"].item() == 4.0
    x = torch.randn(1, 16, 4, 4)
    expected = m[1].base_layer(x) + (4.0 / rank) * nn.functional.conv2d(
        nn.functional.conv2d(x, a.lora_down.detach()[:rank], padding=1), a.lora_up.detach()[:, :rank, None, None])
    net.detach()
    net2 = lyco.load(f, m)
    assert net2.algo_counts() == {"lora": 2}
    assert torch.allclose(m[1](x), expected, atol=1e-5)
    # and lycoris (every UI's loader family) reads it as LoCon
    net2.detach()
    m2 = copy.deepcopy(m)
    ref, _ = create_lycoris_from_weights(1.0, str(f), m2)
    ref.apply_to()
    assert torch.allclose(m2[1](x), expected, atol=1e-5)


def test_norm_adapters_layernorm_without_bias_and_lycoris_math():
    """Reference bug #13: lycoris crashes on LayerNorm(bias=False); lyco adapts it (w_norm only)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.LayerNorm(8, bias=False), nn.Linear(8, 8), nn.GroupNorm(2, 8))
    net = lyco.attach(m, train_norm=True, target_modules=["LayerNorm", "GroupNorm"])
    assert net.algo_counts() == {"norm": 2}
    a0, a2 = net.adapters["lycoris_0"], net.adapters["lycoris_2"]
    assert a0.b_norm is None and a2.b_norm is not None
    _randomize(net.parameters())
    x = torch.randn(3, 8)
    ln = nn.functional.layer_norm(x, (8,), m[0].weight + a0.w_norm, None, 1e-5)
    assert torch.allclose(m[0](x), ln, atol=1e-6)
    xg = torch.randn(2, 8, 3)
    gn = nn.functional.group_norm(xg, 2, m[2].weight + a2.w_norm, m[2].bias + a2.b_norm, 1e-5)
    assert torch.allclose(m[2](xg), gn, atol=1e-6)


def test_norm_adapters_only_inside_targeted_blocks():
    class Blk(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.proj = nn.Linear(8, 8)

    m = nn.Module()
    m.a, m.b = Blk(), Blk()
    m.final_norm = nn.LayerNorm(8)
    net = lyco.attach(m, train_norm=True, target_names=[r"a$"])
    assert sorted(net.names()) == ["lycoris_a_norm", "lycoris_a_proj"]
    assert net.adapters["lycoris_a_norm"].algo == "norm"


def test_train_norm_loads_back(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    net = lyco.attach(m, train_norm=True)
    _randomize(net.parameters())
    x = torch.randn(2, 8)
    y = m(x)
    f = tmp_path / "n.safetensors"
    net.save(f)
    sd = load_file(str(f))
    assert set(k for k in sd if k.startswith("lycoris_1.")) == {"lycoris_1.w_norm", "lycoris_1.b_norm"}
    net.detach()
    lyco.load(f, m)
    assert torch.allclose(m(x), y, atol=1e-6)
