"""Fused training kernels for an adapter on a plain ``nn.Linear`` (pure tensor math, hand-written backward).

Autograd on the factorised bypass ``y = x·Wᵀ + b + α·ΔW_raw·x`` allocates and re-reads several activation-sized
tensors per layer (the delta, the sum, two input gradients and their sum).  The functions here compute the same
values in one autograd node each, adding into the layer's own output and input gradient in place:

* :class:`FusedLinear` - additive bypass: ``y = x·Wᵀ + b + α·ΔW_raw·x``;
* :class:`RebuildLinear` - the same ``y`` as one GEMM on ``W + α·ΔW_raw`` (the rebuild path's forward), with the
  factor gradients computed from the factors (never the O×I weight gradient ``gYᵀ·x``): cheaper than the bypass
  when ΔW_raw has a high rank (LoHa's r², LoKr's full Kronecker product) and the batch has many tokens;
* :class:`FusedDoraOut` / :class:`FusedDoraIn` - DoRA at multiplier 1 on the output / input axis.

Each algorithm provides a *kernel*: an object that adds α·ΔW_raw·x into an output, computes the factor gradients
(and adds ΔW_rawᵀ·g into an input gradient), and for :class:`RebuildLinear` builds ΔW_raw.  Inputs are 2-D
(tokens, features); the base weight and bias must not require gradients (they are frozen; callers check).
Every path is exact: the tests compare values and gradients with autograd on the dense ΔW.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch

Grads = tuple[torch.Tensor | None, ...]
Params = Sequence[torch.Tensor]
#: what a kernel's forward keeps for its backward
Saved = tuple[torch.Tensor, ...]


def _scaled(t: torch.Tensor, alpha: float) -> torch.Tensor:
    return t if alpha == 1 else t * alpha


class Kernel:
    """ΔW_raw of one algorithm for the functions below: ``add_`` (the bypass forward), ``grads`` (every backward)
    and ``delta`` (:class:`RebuildLinear`); a kernel implements the methods of the functions it is used with."""

    def delta(self, params: Params) -> torch.Tensor:
        """ΔW_raw from the factors."""
        raise NotImplementedError

    def add_(self, y: torch.Tensor, x: torch.Tensor, alpha: float, params: Params) -> Saved:
        """y += α·ΔW_raw·x in place (2-D x and y); returns what the backward reuses."""
        raise NotImplementedError

    def grads(self, g: torch.Tensor, x: torch.Tensor, dx: torch.Tensor | None, alpha: float, saved: Saved | None,
              needs: Sequence[bool], params: Params) -> Grads:
        """The factor gradients (None where not ``needs``) for the output gradient ``g``; adds α·ΔW_rawᵀ·g into
        ``dx`` when given."""
        raise NotImplementedError


#: a kernel and the tensors it takes (an algorithm's ``linear_kernel``)
KernelCall = tuple[Kernel, list[torch.Tensor]]


class LowRankKernel(Kernel):
    """ΔW_raw = U·V with U (O, R), V (R, I): LoRA, and LoHa after the face-splitting identity."""

    def delta(self, params: Params) -> torch.Tensor:
        U, V = params
        return U @ V

    def add_(self, y: torch.Tensor, x: torch.Tensor, alpha: float, params: Params) -> Saved:
        U, V = params
        h = x @ V.t()
        y.addmm_(h, U.t(), alpha=alpha)
        return (h,)

    def grads(self, g: torch.Tensor, x: torch.Tensor, dx: torch.Tensor | None, alpha: float, saved: Saved | None,
              needs: Sequence[bool], params: Params) -> Grads:
        U, V = params
        h = saved[0] if saved else x @ V.t()
        gh = g @ U
        if alpha != 1:
            gh.mul_(alpha)
        dU = _scaled((h.t() @ g).t(), alpha) if needs[0] else None
        if dx is not None:
            dx.addmm_(gh, V)
        dV = gh.t() @ x if needs[1] else None
        return dU, dV


class HadaKernel(Kernel):
    """LoHa, ΔW_raw = (w1a·w1b) ⊙ (w2a·w2b), for :class:`RebuildLinear`: ΔW is built from the two rank-r
    products (O·I·2r) and the factor gradients come from the rank-r² face-splitting form."""

    def delta(self, params: Params) -> torch.Tensor:
        w1a, w1b, w2a, w2b = params
        return (w1a @ w1b).mul_(w2a @ w2b)

    def grads(self, g: torch.Tensor, x: torch.Tensor, dx: torch.Tensor | None, alpha: float, saved: Saved | None,
              needs: Sequence[bool], params: Params) -> Grads:
        w1a, w1b, w2a, w2b = params
        o, r = w1a.shape
        U = (w1a[:, :, None] * w2a[:, None, :]).reshape(o, r * r)
        V = (w1b[:, None, :] * w2b[None, :, :]).reshape(r * r, -1)
        dU, dV = LowRankKernel().grads(g, x, dx, alpha, None, (True, True), (U, V))
        assert dU is not None and dV is not None
        dU3, dV3 = dU.reshape(o, r, r), dV.reshape(r, r, -1)
        return (torch.einsum("opq,oq->op", dU3, w2a) if needs[0] else None,
                torch.einsum("pqi,qi->pi", dV3, w2b) if needs[1] else None,
                torch.einsum("opq,op->oq", dU3, w1a) if needs[2] else None,
                torch.einsum("pqi,pi->qi", dV3, w1b) if needs[3] else None)


class KronLowRankKernel(Kernel):
    """LoKr with a low-rank second block, ΔW_raw = W1 ⊗ (w2a·w2b): W1 (a, c), w2a (b, r), w2b (r, d).

    x (M, c·d) is read as M·c rows of d; the rank-r intermediates are kept transposed, (r, M·c) and (r, M·a), so
    that every GEMM has a long output row (skinny GEMMs with 8-16 output columns are several times slower)."""

    def add_(self, y: torch.Tensor, x: torch.Tensor, alpha: float, params: Params) -> Saved:
        w1, w2a, w2b = params
        _, zt = self._inner(x, w1, w2b)
        y.view(zt.shape[1], -1).addmm_(zt.t(), w2a.t(), alpha=alpha)
        return ()  # ht, zt (together up to the size of x) are recomputed in backward: memory stays the base's

    @staticmethod
    def _inner(x: torch.Tensor, w1: torch.Tensor, w2b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w2b·X per row slice, (r, M·c); then W1 applied, (r, M·a))."""
        a, c = w1.shape
        r, d = w2b.shape
        m = x.shape[0]
        ht = w2b @ x.reshape(m * c, d).t()
        return ht, (ht.view(r * m, c) @ w1.t()).view(r, m * a)

    def grads(self, g: torch.Tensor, x: torch.Tensor, dx: torch.Tensor | None, alpha: float, saved: Saved | None,
              needs: Sequence[bool], params: Params) -> Grads:
        w1, w2a, w2b = params
        a, c = w1.shape
        r, d = w2b.shape
        m = x.shape[0]
        ht, zt = self._inner(x, w1, w2b)
        g2 = g.reshape(m * a, -1)
        gzt = w2a.t() @ g2.t()                                      # (r, M·a)
        if alpha != 1:
            gzt.mul_(alpha)
        dw2a = _scaled((zt @ g2).t(), alpha) if needs[1] else None
        gz = gzt.view(r * m, a)
        ght = (gz @ w1).view(r, m * c)                              # (r, M·c)
        dw1 = gz.t() @ ht.view(r * m, c) if needs[0] else None
        if dx is not None:
            dx.view(m * c, d).addmm_(ght.t(), w2b)
        dw2b = ght @ x.reshape(m * c, d) if needs[2] else None
        return dw1, dw2a, dw2b


class KronKernel(Kernel):
    """LoKr with two full blocks, ΔW_raw = W1 ⊗ W2: W1 (a, c), W2 (b, d)."""

    def delta(self, params: Params) -> torch.Tensor:
        return torch.kron(*params)

    def add_(self, y: torch.Tensor, x: torch.Tensor, alpha: float, params: Params) -> Saved:
        w1, w2 = params
        a, c = w1.shape
        b, d = w2.shape
        m = x.shape[0]
        t = (x.reshape(m * c, d) @ w2.t()).view(m, c, b)
        y.view(m, a, b).baddbmm_(w1.expand(m, a, c), t, alpha=alpha)
        return ()  # t (as large as the output) is recomputed in backward: training memory stays the base layer's

    def grads(self, g: torch.Tensor, x: torch.Tensor, dx: torch.Tensor | None, alpha: float, saved: Saved | None,
              needs: Sequence[bool], params: Params) -> Grads:
        w1, w2 = params
        a, c = w1.shape
        b, d = w2.shape
        m = x.shape[0]
        g3 = g.reshape(m, a, b)
        dw1 = None
        if needs[0]:
            t = (x.reshape(m * c, d) @ w2.t()).view(m, c, b)
            dw1 = _scaled(torch.bmm(g3, t.transpose(1, 2)).sum(0), alpha)  # Σ_m g[m]·t[m]ᵀ, no activation copies
        u = torch.matmul(w1.t(), g3)                                # (M, c, b)
        if alpha != 1:
            u.mul_(alpha)
        u2 = u.view(m * c, b)
        if dx is not None:
            dx.view(m * c, d).addmm_(u2, w2)
        dw2 = u2.t() @ x.reshape(m * c, d) if needs[1] else None
        return dw1, dw2


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, W, b) as a fresh tensor in x's leading shape, computed through its 2-D view.

    A custom Function must not return a view of one of its own tensors (autograd refuses an in-place op on it
    downstream, common after a Linear), and F.linear returns a view for N-D inputs; this is the same addmm."""
    y = x.new_empty(*x.shape[:-1], W.shape[0])
    if b is None:
        torch.mm(_flat(x), W.t(), out=_flat(y))
    else:
        torch.addmm(b, _flat(x), W.t(), out=_flat(y))
    return y


class FusedLinear(torch.autograd.Function):
    """y = x·Wᵀ + b + α·ΔW_raw·x, the delta added into the base output and its input gradient in place."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, kernel: Kernel, alpha: float,
                *params: torch.Tensor) -> torch.Tensor:
        x2 = _flat(x)
        y = _linear(x, W, b)
        saved = kernel.add_(_flat(y), x2, alpha, params)
        ctx.save_for_backward(x2, W, *params, *saved)
        ctx.kernel, ctx.alpha, ctx.n = kernel, alpha, len(params)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Grads:
        x2, W, *rest = ctx.saved_tensors
        params, saved = rest[:ctx.n], tuple(rest[ctx.n:])
        dx = torch.matmul(gy, W) if ctx.needs_input_grad[0] else None
        grads = ctx.kernel.grads(_flat(gy), x2, None if dx is None else _flat(dx), ctx.alpha, saved,
                                 ctx.needs_input_grad[5:], params)
        return (dx, None, None, None, None, *grads)


class RebuildLinear(torch.autograd.Function):
    """y = x·(W + α·ΔW_raw)ᵀ + b (one GEMM, as the rebuild path), factor gradients from the factors.

    Nothing activation-sized is saved beyond x; the adapted weight is rebuilt in backward."""

    @staticmethod
    def weight(kernel: Kernel, W: torch.Tensor, alpha: float, params: Params) -> torch.Tensor:
        """W + α·ΔW_raw, accumulated in fp32 at least (like :meth:`AdapterModule.adapted_weight`), in W's dtype."""
        delta = kernel.delta([p.float() if p.dtype in (torch.float16, torch.bfloat16) else p for p in params])
        if alpha != 1:
            delta.mul_(alpha)
        return delta.add_(W) if delta.dtype == W.dtype else delta.add_(W.to(delta.dtype)).to(W.dtype)

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, kernel: Kernel, alpha: float,
                *params: torch.Tensor) -> torch.Tensor:
        y = _linear(x, RebuildLinear.weight(kernel, W, alpha, params), b)
        ctx.save_for_backward(_flat(x), W, *params)
        ctx.kernel, ctx.alpha = kernel, alpha
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Grads:
        x2, W, *params = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.matmul(gy, RebuildLinear.weight(ctx.kernel, W, ctx.alpha, params))
        grads = ctx.kernel.grads(_flat(gy), x2, None, ctx.alpha, None, ctx.needs_input_grad[5:],
                                 [p.to(gy.dtype) for p in params])
        return (dx, None, None, None, None, *(None if d is None else d.to(p.dtype) for d, p in zip(grads, params)))


class FusedDoraOut(torch.autograd.Function):
    """DoRA on the output axis at multiplier 1: y = gain ⊙ (x·Wᵀ + α·ΔW_raw·x) + b, gain = d / (‖W + ΔW‖ + ε)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, gain: torch.Tensor,
                kernel: Kernel, alpha: float, *params: torch.Tensor) -> torch.Tensor:
        x2 = _flat(x)
        z = _linear(x, W, None)
        saved = kernel.add_(_flat(z), x2, alpha, params)
        y = torch.addcmul(b, z, gain) if b is not None else z * gain
        ctx.save_for_backward(x2, W, gain, z, *params, *saved)
        ctx.kernel, ctx.alpha, ctx.n = kernel, alpha, len(params)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Grads:
        x2, W, gain, z, *rest = ctx.saved_tensors
        params, saved = rest[:ctx.n], tuple(rest[ctx.n:])
        dgain = torch.linalg.vecdot(_flat(gy), _flat(z), dim=0) if ctx.needs_input_grad[3] else None
        gz = gy * gain
        dx = torch.matmul(gz, W) if ctx.needs_input_grad[0] else None
        grads = ctx.kernel.grads(_flat(gz), x2, None if dx is None else _flat(dx), ctx.alpha, saved,
                                 ctx.needs_input_grad[6:], params)
        return (dx, None, None, dgain, None, None, *grads)


class FusedDoraIn(torch.autograd.Function):
    """DoRA on the input axis at multiplier 1: y = (x⊙h)·Wᵀ + b + α·ΔW_raw·(x⊙h), h = d / (‖W + ΔW‖ + ε)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, h: torch.Tensor,
                kernel: Kernel, alpha: float, *params: torch.Tensor) -> torch.Tensor:
        xh = x * h
        y = _linear(xh, W, b)
        saved = kernel.add_(_flat(y), _flat(xh), alpha, params)
        ctx.save_for_backward(_flat(x), W, h, _flat(xh), *params, *saved)
        ctx.kernel, ctx.alpha, ctx.n = kernel, alpha, len(params)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Grads:
        x2, W, h, xh, *rest = ctx.saved_tensors
        params, saved = rest[:ctx.n], tuple(rest[ctx.n:])
        need_x, need_h = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        dxh = torch.matmul(gy, W) if (need_x or need_h) else None
        grads = ctx.kernel.grads(_flat(gy), xh, None if dxh is None else _flat(dxh), ctx.alpha, saved,
                                 ctx.needs_input_grad[6:], params)
        dh = torch.linalg.vecdot(_flat(dxh), x2, dim=0) if need_h and dxh is not None else None
        dx = dxh.mul_(h) if need_x and dxh is not None else None
        return (dx, None, None, dh, None, None, *grads)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast compute dtype active for ``device``, or None."""
    kind = device.type
    try:
        on = torch.is_autocast_enabled(kind)
    except TypeError:  # torch < 2.4
        on = torch.is_autocast_enabled() if kind == "cuda" else torch.is_autocast_cpu_enabled()
    if not on:
        return None
    try:
        return torch.get_autocast_dtype(kind)
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_gpu_dtype() if kind == "cuda" else torch.get_autocast_cpu_dtype()


def run(fn: type[torch.autograd.Function], x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None,
        extra: torch.Tensor | None, kernel: Kernel, alpha: float, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Apply one of the functions above in a single compute dtype: the autocast dtype when autocast is on, otherwise
    x's dtype.  The casts stay outside the function, so fp32 master factors receive fp32 gradients;
    :class:`RebuildLinear` takes the factors as they are and builds the adapted weight in fp32."""
    amp = autocast_dtype(x.device)
    dt = amp or x.dtype

    def c(t: torch.Tensor | None) -> torch.Tensor | None:
        return t if t is None or t.dtype == dt else t.to(dt)

    ps = list(params) if fn is RebuildLinear else [c(p) for p in params]
    args: list[Any] = [c(x), c(W), c(b)] + ([c(extra)] if extra is not None else []) + [kernel, alpha] + ps
    if amp is None:
        return cast(torch.Tensor, fn.apply(*args))
    with torch.autocast(x.device.type, enabled=False):
        return cast(torch.Tensor, fn.apply(*args))


def wants_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will need gradients through any of ``tensors`` (training)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def frozen_linear(base: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W, b) of a plain ``nn.Linear`` whose weight and bias are frozen: the layers the fused kernels replace."""
    if type(base) is not torch.nn.Linear:
        return None
    W, b = base.weight, base.bias
    if W.requires_grad or (b is not None and b.requires_grad):
        return None
    return W, b
