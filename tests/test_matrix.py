"""PEFT-style case matrix: algorithm × layer × DoRA × Tucker × scalar × rs-LoRA, each behaviour a test."""
from __future__ import annotations

import pytest
import torch

import lyco
from helpers import ADDITIVE, MULTIPLICATIVE, all_cases, assert_close_i1, make, randomize, set_path

CASES = all_cases()
IDS = [c.id for c in CASES]


def _attach(case, model, seed=0, **extra):
    return lyco.attach(model, lyco.AdapterConfig(seed=seed, **case.options(), **extra))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_zero_init_identity(case):
    model, x = make(case)
    y_base = model(x)
    net = _attach(case, model)
    for path in ("bypass", "rebuild"):
        set_path(net, path)
        y = model(x)
        if case.dora or case.algo in MULTIPLICATIVE:
            assert_close_i1(y, y_base, y_base, f"{path} multiplicative zero init")
        else:
            assert torch.equal(y, y_base), f"{path}: zero-init output differs from the base"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_paths_agree(case):
    model, x = make(case)
    with torch.no_grad():
        y_base = model(x)
    net = _attach(case, model)
    randomize(net)
    net.eval()
    for m in (1.0, 0.5, 1.7):
        net.set_multiplier(m)
        with torch.no_grad():
            set_path(net, "rebuild")
            y_rebuild = model(x)
            set_path(net, "bypass")
            y_bypass = model(x)
            net.merge()
            y_merged = model(x)
            net.unmerge()
        assert (y_rebuild - y_base).abs().max() > 1e-4, "randomised adapter should change the output"
        assert_close_i1(y_bypass, y_rebuild, y_base, f"bypass vs rebuild at m={m}")
        assert_close_i1(y_merged, y_rebuild, y_base, f"merged vs rebuild at m={m}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_multiplier_zero_is_base(case):
    model, x = make(case)
    y_base = model(x)
    net = _attach(case, model)
    randomize(net)
    net.set_multiplier(0.0)
    for path in ("bypass", "rebuild"):
        set_path(net, path)
        assert torch.equal(model(x), y_base)
    net.merge()
    assert torch.equal(model(x), y_base)
    net.unmerge()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_save_load_round_trip(case, tmp_path):
    model, x = make(case)
    net = _attach(case, model)
    randomize(net)
    y = model(x)
    tensors = net.state_tensors()
    f = tmp_path / "a.safetensors"
    net.save(f)
    net.detach()
    net2 = lyco.load(f, model)
    assert torch.allclose(model(x), y, rtol=0, atol=1e-6 + 1e-6 * y.abs().max().item())
    tensors2 = net2.state_tensors()
    assert tensors.keys() == tensors2.keys()
    for k in tensors:
        assert torch.equal(tensors[k], tensors2[k]), k
    # the loaded modules rebuild exactly the same hyper-parameters
    for name, a in net.adapters.items():
        b = net2.adapters[name]
        expected = "lora" if case.algo == "dylora" else a.algo  # DyLoRA files are LoCon files
        assert b.algo == expected and a.dora_axis == b.dora_axis
        assert a.rank == b.rank or case.algo == "lokr_full"
        assert abs(a.scale() - b.scale()) < 1e-6 * max(1.0, abs(a.scale()))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_only_adapter_params_get_grads(case):
    model, x = make(case)
    base_params = dict(model.named_parameters())
    net = _attach(case, model)
    randomize(net)
    net.train()
    for path in ("bypass", "rebuild"):
        set_path(net, path)
        model.zero_grad(set_to_none=True)
        net.zero_grad(set_to_none=True)
        model(x.clone().requires_grad_(True)).square().mean().backward()
        for n, p in base_params.items():
            assert p.grad is None, f"{path}: base parameter {n} received a gradient"
        for n, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{path}: adapter parameter {n} has no gradient"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_detach_restores_bit_exactly(case):
    model, x = make(case)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    y = model(x)
    net = _attach(case, model)
    randomize(net)
    net.merge()
    net.detach()
    sd2 = model.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}
    assert torch.equal(model(x), y)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_unmerge(case):
    model, x = make(case)
    w0 = model.layer.weight.detach().clone()
    net = _attach(case, model)
    randomize(net)
    net.merge()
    assert not torch.equal(model.layer.weight, w0)
    net.unmerge()
    assert (model.layer.weight - w0).abs().max() <= 1e-6


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("order", ["fifo", "lifo"])
def test_stacking(case, order):
    model, x = make(case)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y_base = model(x)
    n1 = _attach(case, model, seed=1)
    randomize(n1, seed=11)
    n2 = _attach(case, model, seed=2)
    randomize(n2, seed=12)
    with torch.no_grad():
        y12 = model(x)
        if not case.dora and case.algo in ADDITIVE:
            # additive algorithms: the effects add up
            n2.set_multiplier(0.0)
            y1 = model(x)
            n2.set_multiplier(1.0)
            n1.set_multiplier(0.0)
            y2 = model(x)
            n1.set_multiplier(1.0)
            assert_close_i1(y12 - y_base, (y1 - y_base) + (y2 - y_base), y_base, "stacked effects")
        # merging both (in attach order) gives the stacked output
        n1.merge()
        n2.merge()
        assert_close_i1(model(x), y12, y_base, "stacked merge")
        n2.unmerge()
        n1.unmerge()
    first, second = (n1, n2) if order == "fifo" else (n2, n1)
    first.detach()
    with torch.no_grad():
        y_rest = model(x)
    second.detach()
    sd2 = model.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert torch.equal(model(x), y_base)
    assert not torch.equal(y_rest, y_base)
