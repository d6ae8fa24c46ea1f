"""Pure tensor math: factorisation rules, identities behind the fast paths, DoRA norm formulas."""
from __future__ import annotations

import pytest
import torch

from lyco.algos.functional import dora as dora_f
from lyco.algos.functional import loha as loha_f
from lyco.algos.functional import lokr as lokr_f
from lyco.algos.functional.common import factorization, power2factorization
from lyco.algos.geometry import Geometry


@pytest.mark.parametrize("dim,f,expected", [
    (320, 4, (4, 80)), (320, 8, (8, 40)), (320, 12, (10, 32)), (320, 16, (16, 20)), (320, 32, (10, 32)),
    (320, -1, (16, 20)), (640, 8, (8, 80)), (768, 8, (8, 96)), (768, -1, (24, 32)), (1280, 8, (8, 160)),
    (1280, 12, (10, 128)), (128, -1, (8, 16)), (360, -1, (18, 20)), (360, 16, (15, 24)), (250, -1, (10, 25)),
    (13, -1, (1, 13)), (97, 8, (1, 97)),
])
def test_factorization_table(dim, f, expected):
    assert factorization(dim, f) == expected


@pytest.mark.parametrize("dim,f,expected", [
    (320, 16, (10, 32)), (320, 32, (20, 16)), (320, 8, None), (768, 8, (6, 128)), (3072, 8, (6, 512)),
    (640, 16, (10, 64)), (1280, 16, (10, 128)),
])
def test_power2factorization_table(dim, f, expected):
    assert power2factorization(dim, f) == expected


def test_face_splitting_identity():
    torch.manual_seed(0)
    w1a, w1b, w2a, w2b = torch.randn(7, 3), torch.randn(3, 11), torch.randn(7, 3), torch.randn(3, 11)
    u, v = loha_f.face_split(w1a, w1b, w2a, w2b)
    assert u.shape == (7, 9) and v.shape == (9, 11)
    assert torch.allclose(u @ v, (w1a @ w1b) * (w2a @ w2b), atol=1e-5)


def test_tucker_loha_factors():
    torch.manual_seed(0)
    r, o, i = 3, 5, 4
    t1, t2 = torch.randn(r, r, 3, 3), torch.randn(r, r, 3, 3)
    w1a, w2a = torch.randn(r, o), torch.randn(r, o)
    w1b, w2b = torch.randn(r, i), torch.randn(r, i)
    dense = loha_f.delta(w1a, w1b, w2a, w2b, t1, t2, (o, i, 3, 3))
    u, v = loha_f.lowrank(w1a, w1b, w2a, w2b, t1, t2)
    assert torch.allclose((u @ v).reshape(o, i, 3, 3), dense, atol=1e-4)


def test_hada_custom_autograd_matches_autograd():
    torch.manual_seed(0)
    ps = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in ((6, 3), (3, 5), (6, 3), (3, 5))]
    torch.autograd.gradcheck(loha_f._HadaWeight.apply, ps)


@pytest.mark.parametrize("axis", ["out", "in"])
@pytest.mark.parametrize("shape", [(12, 8), (12, 8, 3, 3), (6, 4, 3)])
def test_lowrank_dora_norms(axis, shape):
    torch.manual_seed(0)
    W = torch.randn(shape)
    r = 5
    u, v = torch.randn(shape[0], r), torch.randn(r, int(torch.tensor(shape[1:]).prod()))
    t = 0.37
    dense = dora_f.dense_norms(W, t * (u @ v).reshape(shape), axis)
    fast = dora_f.lowrank_norms(W, u, v, t, axis)
    assert torch.allclose(fast, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_lokr_kron_norms(kind):
    torch.manual_seed(0)
    a, b, c, d = 3, 4, 2, 5
    k = (3, 3) if kind == "conv" else ()
    W = torch.randn(a * b, c * d, *k)
    w1, w2 = torch.randn(a, c), torch.randn(b, d, *k)
    delta = lokr_f.delta(w1, w2, tuple(W.shape))
    for axis, fn in (("out", lokr_f.row_norms_sq_terms), ("in", lokr_f.col_norms_sq_terms)):
        cross, sq = fn(W, w1, w2, a, b, c, d)
        Wr = W.reshape(W.shape[0], -1) if axis == "out" else W.transpose(0, 1).reshape(W.shape[1], -1)
        Dr = delta.reshape(W.shape[0], -1) if axis == "out" else delta.transpose(0, 1).reshape(W.shape[1], -1)
        assert torch.allclose(cross, (Wr * Dr).sum(1), atol=1e-4)
        assert torch.allclose(sq, Dr.pow(2).sum(1), atol=1e-4)


@pytest.mark.parametrize("a,b,c,d", [(2, 16, 16, 2), (16, 2, 2, 16), (4, 6, 3, 8)])
def test_lokr_linear_both_association_orders(a, b, c, d):
    torch.manual_seed(0)
    g = Geometry("linear", c * d, a * b)
    w1, w2 = torch.randn(a, c), torch.randn(b, d)
    x = torch.randn(5, c * d)
    ref = x @ lokr_f.delta(w1, w2, (a * b, c * d)).T
    assert torch.allclose(lokr_f.apply(x, g, (a, b, c, d), w1, lokr_f.W2Parts(w2=w2)), ref, atol=1e-4)


def test_lokr_conv_bypass_matches_dense():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 12, 3, stride=2, padding=1, dilation=1)
    g = Geometry.from_module(conv)
    a, b, c, d = 3, 4, 2, 4
    w1, w2 = torch.randn(a, c), torch.randn(b, d, 3, 3)
    x = torch.randn(2, 8, 7, 7)
    dense = lokr_f.delta(w1, w2, g.weight_shape)
    ref = torch.nn.functional.conv2d(x, dense, None, 2, 1)
    assert torch.allclose(lokr_f.apply(x, g, (a, b, c, d), w1, lokr_f.W2Parts(w2=w2)), ref, atol=1e-4)


@pytest.mark.parametrize("order_a", [True, False])
def test_kron_apply_custom_autograd(order_a):
    from lyco.algos.functional.lokr import _KronApply
    torch.manual_seed(0)
    X = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda X, a, b: _KronApply.apply(X, a, b, order_a), (X, w1, w2))
