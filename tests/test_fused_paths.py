"""The fused training paths on a frozen nn.Linear (algos/functional/fused.py) give the values and gradients of
autograd on the dense adapted weight: x and every adapter parameter, in float64, for each kernel and each way in.

Every case also asserts which fused function ran, so a silent fallback to the generic path cannot pass for it."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lyco
from lyco.algos.functional import dora as dora_f
from lyco.algos.functional import fused

# (id, options, in, out, expected fused function name)
CASES = [  # dimensions chosen so that the static path rule and the token-count rules pick the named function
    ("lora", dict(algo="lora", dim=3, alpha=2.0), 40, 36, "FusedLinear"),
    ("loha-bypass", dict(algo="loha", dim=2, alpha=3.0, path="bypass"), 40, 36, "FusedLinear"),
    ("loha-auto-many-tokens", dict(algo="loha", dim=2, alpha=3.0), 64, 64, "RebuildLinear"),
    ("loha-rebuild", dict(algo="loha", dim=2, alpha=3.0, path="rebuild"), 40, 36, "RebuildLinear"),
    ("lokr-lowrank", dict(algo="lokr", dim=2, alpha=3.0, factor=-1), 64, 48, "FusedLinear"),
    ("lokr-both", dict(algo="lokr", dim=1, alpha=3.0, factor=4, decompose_both=True), 48, 64, "FusedLinear"),
    ("lokr-full-bypass", dict(algo="lokr", dim=4, factor=4, full_matrix=True, path="bypass"), 24, 16, "FusedLinear"),
    ("lokr-full-auto", dict(algo="lokr", dim=4, factor=4, full_matrix=True), 64, 64, "RebuildLinear"),
    ("lokr-full-rebuild", dict(algo="lokr", dim=4, factor=4, full_matrix=True, path="rebuild"), 64, 64,
     "RebuildLinear"),
]
DORA_CASES = [c for c in CASES if c[0] in ("lora", "loha-bypass", "lokr-lowrank", "lokr-full-bypass")]


def _spy(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = fused.run

    def run(fn, *a, **k):
        calls.append(fn.__name__)
        return real(fn, *a, **k)

    monkeypatch.setattr(fused, "run", run)
    return calls


def _setup(opts, n_in, n_out, bias, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, n_out, bias=bias)).double()
    net = lyco.attach(model, seed=seed, **opts)
    net.double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 * p.abs().mean() + 0.1))
    (adapter,) = net.adapters.values()
    return model, net, adapter


def _reference(adapter, layer, x, m, mask):
    """Autograd on the dense adapted weight, all in float64 (adapted_weight itself accumulates in fp32)."""
    W, b = layer.weight, layer.bias
    V = W + adapter.scalar * adapter.scale() * adapter.delta_raw(mask)
    if adapter.dora_axis is None:
        return torch.nn.functional.linear(x, W + m * (V - W), b)
    # the norms as the module computes them (fp32 as docs say for DoRA, from the factors); the rest in float64
    n = adapter.dora_norms(W, mask).to(W.dtype)
    n = n.reshape(-1, 1) if adapter.dora_axis == "out" else n.reshape(1, -1)
    W1 = V * adapter.dora_scale.reshape(n.shape) / (n + dora_f.EPS)
    return torch.nn.functional.linear(x, W + m * (W1 - W), b)


def _check(model, net, adapter, x, m, monkeypatch, expected, mask_seed=None):
    params = [p for p in net.parameters() if p.requires_grad]
    calls = _spy(monkeypatch)
    xi = x.clone().requires_grad_(True)
    if mask_seed is not None:
        torch.manual_seed(mask_seed)
    y = model(xi)
    assert calls == [expected], f"expected {expected} to run, got {calls}"
    w = torch.randn_like(y)
    got = torch.autograd.grad((y * w).sum(), [xi, *params])
    mask = None
    if mask_seed is not None:
        torch.manual_seed(mask_seed)
        mask = adapter.draw_mask(x.device)
    xr = x.clone().requires_grad_(True)
    layer = model[0].raw_layer()
    yr = _reference(adapter, layer, xr, m, mask)
    ref = torch.autograd.grad((yr * w).sum(), [xr, *params])
    torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-10)
    for name, a, r in zip(["x"] + [n for n, p in net.named_parameters() if p.requires_grad], got, ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10, msg=lambda s, n=name: f"gradient of {n}: {s}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fused_matches_dense_autograd(case, bias, monkeypatch):
    _, opts, n_in, n_out, expected = case
    model, net, adapter = _setup(opts, n_in, n_out, bias)
    x = torch.randn(3, 200, n_in, dtype=torch.float64)
    _check(model, net, adapter, x, 1.0, monkeypatch, expected)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fused_multiplier_and_flat_input(case, monkeypatch):
    _, opts, n_in, n_out, expected = case
    model, net, adapter = _setup(opts, n_in, n_out, True, seed=3)
    net.set_multiplier(0.6)
    _check(model, net, adapter, torch.randn(600, n_in, dtype=torch.float64), 0.6, monkeypatch, expected)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("lora", "loha-bypass", "loha-auto-many-tokens",
                                                                 "loha-rebuild")], ids=lambda c: c[0])
def test_fused_rank_dropout_mask(case, monkeypatch):
    """The rank-dropout mask drawn in the forward is the one the dense reference uses."""
    _, opts, n_in, n_out, expected = case
    model, net, adapter = _setup(dict(opts, rank_dropout=0.4), n_in, n_out, True)
    _check(model, net, adapter, torch.randn(3, 200, n_in, dtype=torch.float64), 1.0, monkeypatch, expected,
           mask_seed=11)


@pytest.mark.parametrize("axis", ["out", "in"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", DORA_CASES, ids=[c[0] for c in DORA_CASES])
def test_fused_dora(case, axis, bias, monkeypatch):
    _, opts, n_in, n_out, _ = case
    model, net, adapter = _setup(dict(opts, dora_wd=True, wd_on_output=axis == "out"), n_in, n_out, bias)
    expected = "FusedDoraOut" if axis == "out" else "FusedDoraIn"
    _check(model, net, adapter, torch.randn(3, 200, n_in, dtype=torch.float64), 1.0, monkeypatch, expected)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fused_autocast_bf16(case, monkeypatch):
    """Under autocast the fused node computes in bf16 and the fp32 master factors get fp32 gradients close to
    the fp32 ones."""
    _, opts, n_in, n_out, expected = case
    model, net, adapter = _setup(opts, n_in, n_out, True)
    model.float()
    net.float()
    params = [p for p in net.parameters() if p.requires_grad]
    x = torch.randn(3, 200, n_in)
    calls = _spy(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x.requires_grad_(True))
    assert calls == [expected] and y.dtype == torch.bfloat16
    got = torch.autograd.grad(y.float().square().mean(), params)
    ref_y = model(x)
    ref = torch.autograd.grad(ref_y.square().mean(), params)
    assert torch.allclose(y.float(), ref_y, rtol=0.05, atol=0.05 * ref_y.abs().max().item())
    for a, r in zip(got, ref):
        assert a.dtype == torch.float32
        assert (a - r).norm() <= 0.05 * r.norm() + 1e-6


def test_no_fused_path_for_trainable_base(monkeypatch):
    """A base weight that trains (or any non-plain Linear) keeps autograd's generic path."""
    model, net, adapter = _setup(dict(algo="lora", dim=2), 8, 6, True)
    model[0].raw_layer().weight.requires_grad_(True)
    calls = _spy(monkeypatch)
    model(torch.randn(4, 8, dtype=torch.float64)).sum().backward()
    assert calls == [] and model[0].raw_layer().weight.grad is not None


def test_scalar_buffer_written_in_place_is_seen():
    """The bypass reads the scalar buffer's value once per change (no GPU sync per call); max-norm writes it in
    place, and the next forward uses the new value."""
    model, net, adapter = _setup(dict(algo="lora", dim=3, alpha=2.0), 40, 36, True)
    x = torch.randn(5, 40, dtype=torch.float64)
    with torch.no_grad():
        y1 = model(x)
        adapter.scalar.mul_(0.5)
        y2 = model(x)
        base = model[0].raw_layer()(x)
    torch.testing.assert_close(y2 - base, 0.5 * (y1 - base))


@pytest.mark.parametrize("case", CASES + [("dora-out", dict(algo="lora", dim=3, dora_wd=True, wd_on_output=True),
                                           40, 36, "FusedDoraOut")], ids=lambda c: c[0])
def test_fused_output_takes_inplace_ops(case, monkeypatch):
    """The fused node's output is a fresh tensor, not a view: models that modify a Linear's output in place work."""
    _, opts, n_in, n_out, expected = case
    model, net, adapter = _setup(opts, n_in, n_out, True)
    calls = _spy(monkeypatch)
    x = torch.randn(3, 200, n_in, dtype=torch.float64, requires_grad=True)
    y = model(x)
    y.mul_(2.0).add_(1.0)
    y.sum().backward()
    assert calls == [expected] and x.grad is not None and torch.isfinite(x.grad).all()
