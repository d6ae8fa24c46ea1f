"""Network behaviour: target selection, overrides, presets, dropouts, paths, dtypes, stacking rules."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lyco
from helpers import assert_close_i1


class Block(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.to_q = nn.Linear(c, c)
        self.to_k = nn.Linear(c, c)
        self.ff = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.ff(self.norm(self.to_q(x) + self.to_k(x)))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.pw = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        h = self.pw(self.stem(x))
        t = h.flatten(2).transpose(1, 2)
        for b in self.blocks:
            t = b(t)
        return t


def test_default_targets_every_linear_and_conv():
    net = lyco.attach(ConvNet())
    assert len(net) == 2 + 2 * 4
    assert "lycoris_blocks_0_ff_0" in net.names() and "lycoris_stem" in net.names()


def test_target_modules_by_block_class():
    net = lyco.attach(ConvNet(), target_modules=["Block"])
    assert sorted(net.names()) == sorted(f"lycoris_blocks_{i}_{n}"
                                         for i in (0, 1) for n in ("to_q", "to_k", "ff_0", "ff_2"))


def test_target_names_regex_and_glob_and_exclude():
    net = lyco.attach(ConvNet(), target_names=[r"blocks\.\d+\.to_"])
    assert len(net) == 4
    net2 = lyco.attach(ConvNet(), target_names=["blocks.*.ff.*"], use_fnmatch=True, exclude_names=["blocks.1.*"])
    assert sorted(net2.names()) == ["lycoris_blocks_0_ff_0", "lycoris_blocks_0_ff_2"]


def test_conv_dim_rules():
    m = ConvNet()
    net = lyco.attach(m, dim=4, conv_dim=2, conv_alpha=1.0, alpha=4.0)
    stem, pw = net.adapters["lycoris_stem"], net.adapters["lycoris_pw"]
    assert stem.rank == 2 and stem.scale() == 0.5  # 3x3 conv: conv_dim / conv_alpha
    assert pw.rank == 4 and pw.scale() == 1.0  # 1x1 conv: dim / alpha
    net.detach()
    net = lyco.attach(m, conv_dim=0)
    assert "lycoris_stem" not in net.names() and "lycoris_pw" in net.names()


def test_module_and_name_overrides():
    m = ConvNet()
    net = lyco.attach(m, algo="lora", dim=4,
                      module_algo_map={"Block": {"algo": "loha", "dim": 2}},
                      name_algo_map={r"blocks\.1\.ff\.2": {"algo": "lokr", "factor": 4}})
    assert net.adapters["lycoris_blocks_0_to_q"].algo == "loha"
    assert net.adapters["lycoris_blocks_0_to_q"].rank == 2
    assert net.adapters["lycoris_blocks_1_ff_2"].algo == "lokr"
    assert net.adapters["lycoris_stem"].algo == "lora"
    assert net.algo_counts() == {"lora": 2, "loha": 7, "lokr": 1}


def test_preset_file(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('unet_target_module = ["Block"]\nexclude_name = ["blocks.0.ff.*"]\nuse_fnmatch = true\n'
                 '[module_algo_map.Block]\nalgo = "loha"\n')
    net = lyco.attach(ConvNet(), preset=str(p))
    assert len(net) == 6 and set(net.algo_counts()) == {"loha"}
    bad = tmp_path / "bad.toml"
    bad.write_text('unet_target_modul = ["Block"]\n')
    with pytest.raises(lyco.ConfigError) as e:
        lyco.attach(ConvNet(), preset=str(bad))
    assert "did you mean 'unet_target_module'" in str(e.value)


def test_presets_are_independent():
    m1, m2 = ConvNet(), ConvNet()
    n1 = lyco.attach(m1, preset="all")
    n2 = lyco.attach(m2, target_modules=["Block"])
    n3 = lyco.attach(ConvNet(), preset="all")
    assert len(n1) == len(n3) == 10 and len(n2) == 8


def test_rank_dropout_same_mask_in_both_paths():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 24))
    x = torch.randn(4, 16)
    for algo in ("lora", "loha", "lokr", "full"):
        net = lyco.attach(m, algo=algo, dim=4, rank_dropout=0.5, factor=4)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        net.train()
        outs = []
        for path in ("bypass", "rebuild"):
            for a in net.adapters.values():
                a.opts = a.opts.replace(path=path)
            torch.manual_seed(123)
            outs.append(m(x))
        assert torch.allclose(outs[0], outs[1], atol=1e-5), algo
        net.eval()
        y_eval = m(x)
        assert torch.equal(y_eval, m(x))
        net.detach()


def test_rank_dropout_scale_default_keeps_expectation():
    m = nn.Sequential(nn.Linear(64, 64))
    net = lyco.attach(m, algo="lora", dim=32, rank_dropout=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    x = torch.randn(8, 64)
    net.eval()
    with torch.no_grad():
        ref = m(x) - net.site("lycoris_0").wrapper.raw_layer()(x)
        net.train()
        torch.manual_seed(0)
        mean = sum(m(x) - net.site("lycoris_0").wrapper.raw_layer()(x) for _ in range(400)) / 400
    assert (mean - ref).abs().mean() / ref.abs().mean() < 0.1


def test_module_dropout_skips_adapter_in_training_only():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8))
    x = torch.randn(2, 8)
    base = m(x)
    net = lyco.attach(m, module_dropout=0.5)
    with torch.no_grad():
        net.adapters["lycoris_0"].lora_up.fill_(0.5)
    net.train()
    outs = [torch.equal(m(x), base) for _ in range(200)]
    assert 40 < sum(outs) < 160
    net.eval()
    assert not torch.equal(m(x), base)


def test_neuron_dropout_forces_bypass_and_eval_ignores_it():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8))
    x = torch.randn(2, 8)
    net = lyco.attach(m, dropout=0.5, path="rebuild")
    with torch.no_grad():
        net.adapters["lycoris_0"].lora_up.fill_(0.5)
    a = net.adapters["lycoris_0"]
    net.train()
    assert not a.use_rebuild(net.site("lycoris_0").wrapper.base_layer)
    net.eval()
    assert a.use_rebuild(net.site("lycoris_0").wrapper.base_layer)
    y1 = m(x)
    a.opts = a.opts.replace(path="bypass")
    assert torch.allclose(m(x), y1, atol=1e-6)


def test_auto_path_selection():
    big = nn.Sequential(nn.Linear(1280, 1280))
    net = lyco.attach(big, algo="lora", dim=8)
    assert not net.adapters["lycoris_0"].use_rebuild(big[0].base_layer)  # 3·r(I+O) << O·I: bypass
    net.detach()
    net = lyco.attach(big, algo="full")
    assert net.adapters["lycoris_0"].use_rebuild(big[0].base_layer)
    net.detach()
    net = lyco.attach(big, algo="loha", dim=32)  # r² = 1024: rebuild is cheaper
    assert net.adapters["lycoris_0"].use_rebuild(big[0].base_layer)


def test_non_standard_linear_uses_bypass():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2.0  # opaque behaviour: only bypass is exact

    torch.manual_seed(0)
    m = nn.Sequential(MyLinear(8, 8))
    x = torch.randn(3, 8)
    base = m(x)
    net = lyco.attach(m, path="rebuild")
    with torch.no_grad():
        net.adapters["lycoris_0"].lora_up.normal_()
    a = net.adapters["lycoris_0"]
    delta = a.apply_delta(x, None)
    assert torch.allclose(m(x), base + delta, atol=1e-6)
    with pytest.raises(lyco.StateError):
        net.merge()


def test_unbatched_conv_input():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))
    x = torch.randn(4, 5, 5)
    net = lyco.attach(m, algo="lokr", dim=1, factor=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    y = m(x)
    assert y.shape == (6, 5, 5)
    assert torch.allclose(y, m(x.unsqueeze(0))[0], atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("algo", ["lora", "loha", "lokr", "full"])
def test_low_precision_base(dtype, algo):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 32), nn.Conv1d(32, 32, 3, padding=1))

    def run(mod, x):
        return mod[1](mod[0](x).transpose(1, 2))

    x = torch.randn(2, 5, 32)
    net = lyco.attach(m, algo=algo, dim=4, factor=4, dora_wd=algo != "full", seed=0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        y32 = run(m, x)
        m.to(dtype)  # casts the adapters too (as PEFT does); training keeps fp32 masters:
        net.to(torch.float32)
        for a in net.adapters.values():
            assert all(p.dtype == torch.float32 for p in a.parameters())  # fp32 masters
        for path in ("bypass", "rebuild"):
            for a in net.adapters.values():
                a.opts = a.opts.replace(path=path)
            y = run(m, x.to(dtype))
            assert y.dtype == dtype and torch.isfinite(y).all()
            assert (y.float() - y32).abs().max() <= 2e-2 * y32.abs().max()


def test_train_a_toy_task_reduces_loss():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    teacher = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    teacher.load_state_dict(m.state_dict())
    with torch.no_grad():
        teacher[0].weight.add_(torch.randn(16, 2) @ torch.randn(2, 16) * 0.3)
    x = torch.randn(256, 16)
    y = teacher(x).detach()
    for algo in ("lora", "loha", "lokr", "full"):
        net = lyco.attach(m, algo=algo, dim=4, alpha=4.0, factor=4, seed=0)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        first = None
        for _ in range(150):
            loss = (m(x) - y).pow(2).mean()
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < (0.5 if algo == "lokr" else 0.2) * first, algo
        net.detach()


def test_set_multiplier_while_merged_remerges():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8))
    x = torch.randn(2, 8)
    base = m(x)
    net = lyco.attach(m)
    with torch.no_grad():
        net.adapters["lycoris_0"].lora_up.normal_()
    net.set_multiplier(0.5)
    y_half = m(x)
    net.set_multiplier(1.0)
    net.merge()
    net.set_multiplier(0.5)
    assert_close_i1(m(x), y_half, base)
    net.detach()
    assert torch.equal(m(x), base)


def test_attach_keyword_or_config_not_both():
    with pytest.raises(lyco.ConfigError):
        lyco.attach(ConvNet(), lyco.AdapterConfig(), dim=4)


def test_seeded_init_is_deterministic():
    n1 = lyco.attach(ConvNet(), seed=7)
    n2 = lyco.attach(ConvNet(), seed=7)
    for k, t in n1.state_tensors().items():
        assert torch.equal(t, n2.state_tensors()[k])


def test_state_dict_of_model_with_adapters_round_trips():
    m = ConvNet()
    net = lyco.attach(m, algo="loha", seed=1)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    net.load_state_dict(sd)
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k])
