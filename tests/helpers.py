"""Tiny in-code models and the case matrix shared by the tests."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class LayerCase:
    id: str
    make: object  # () -> nn.Module
    x_shape: tuple
    conv: bool
    spatial: bool  # kernel > 1
    groups: int = 1
    norm: bool = False


class RMSNormLike(nn.Module):
    """A LLaMA-style RMSNorm (weight + _norm), the kind of module norm adapters must handle."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim) + 0.1 * torch.randn(dim))

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        return self._norm(x.float()).type_as(x) * self.weight


def _affine(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


LAYERS = [
    LayerCase("linear", lambda: nn.Linear(16, 24), (3, 5, 16), False, False),
    LayerCase("linear_nobias", lambda: nn.Linear(16, 24, bias=False), (4, 16), False, False),
    LayerCase("conv1d", lambda: nn.Conv1d(16, 24, 3, padding=1), (2, 16, 9), True, True),
    LayerCase("conv2d_k1", lambda: nn.Conv2d(16, 24, 1), (2, 16, 5, 5), True, False),
    LayerCase("conv2d_k3", lambda: nn.Conv2d(16, 24, 3, padding=1), (2, 16, 6, 6), True, True),
    LayerCase("conv2d_k3_s2", lambda: nn.Conv2d(16, 24, 3, stride=2, padding=1), (2, 16, 7, 7), True, True),
    LayerCase("conv2d_k3_g2", lambda: nn.Conv2d(16, 24, 3, padding=1, groups=2), (2, 16, 6, 6), True, True, 2),
    LayerCase("conv2d_k3_d2", lambda: nn.Conv2d(16, 24, 3, padding=2, dilation=2), (2, 16, 7, 7), True, True),
    LayerCase("conv2d_reflect", lambda: nn.Conv2d(16, 24, 3, padding=1, padding_mode="reflect"), (1, 16, 6, 6),
              True, True),
    LayerCase("conv3d", lambda: nn.Conv3d(16, 24, 3, padding=1), (1, 16, 3, 4, 4), True, True),
    LayerCase("layernorm", lambda: _affine(nn.LayerNorm(24)), (3, 5, 24), False, False, norm=True),
    LayerCase("layernorm_nobias", lambda: _affine(nn.LayerNorm(24, bias=False)), (3, 24), False, False, norm=True),
    LayerCase("groupnorm", lambda: _affine(nn.GroupNorm(4, 24)), (2, 24, 3, 3), True, False, norm=True),
    LayerCase("rmsnorm", lambda: _affine(nn.RMSNorm(24)), (2, 4, 24), False, False, norm=True),
    LayerCase("rmsnorm_like", lambda: RMSNormLike(24), (2, 4, 24), False, False, norm=True),
]
LAYER_BY_ID = {c.id: c for c in LAYERS}

# algorithm variants: (id, options)
ALGOS = {
    "lora": dict(algo="lora", dim=4, alpha=2.0),
    "loha": dict(algo="loha", dim=3, alpha=2.0),
    "lokr": dict(algo="lokr", dim=1, alpha=2.0),                      # W1 full, W2 low-rank
    "lokr_both": dict(algo="lokr", dim=1, alpha=2.0, decompose_both=True),
    "lokr_full": dict(algo="lokr", dim=4, full_matrix=True),           # W1, W2 full: scale 1
    "full": dict(algo="full"),
    "dylora": dict(algo="dylora", dim=4, alpha=2.0, block_size=2),
    "glora": dict(algo="glora", dim=3, alpha=2.0),
    "ia3": dict(algo="ia3"),
    "ia3_in": dict(algo="ia3", train_on_input=True),
    "oft": dict(algo="diag-oft", dim=4),
    "oft_coft": dict(algo="diag-oft", dim=4, constraint=1e-3, rescaled=True),
    "boft": dict(algo="boft", dim=8),
    "boft_coft": dict(algo="boft", dim=8, constraint=1e-3, rescaled=True),
    "norm": dict(train_norm=True),
}
SCALED = {"lora", "loha", "lokr", "lokr_both", "dylora", "glora"}
DORA_ALGOS = {"lora", "loha", "lokr", "lokr_both", "lokr_full"}
MULTIPLICATIVE = {"ia3", "ia3_in", "oft", "oft_coft", "boft", "boft_coft"}
#: composing two networks adds their effects (ΔW does not depend on W)
ADDITIVE = {"lora", "loha", "lokr", "lokr_both", "lokr_full", "full", "dylora", "norm"}
TUCKER_ALGOS = {"lora", "loha", "lokr", "lokr_both"}


class Wrap(nn.Module):
    """A model holding one layer (attach replaces layers inside a model)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


@dataclass(frozen=True)
class Case:
    layer: str
    algo: str
    dora: str | None = None  # None | "out" | "in"
    tucker: bool = False
    scalar: bool = False
    rs: bool = False

    @property
    def id(self) -> str:
        bits = [self.algo, self.layer]
        if self.dora:
            bits.append(f"dora-{self.dora}")
        if self.tucker:
            bits.append("tucker")
        if self.scalar:
            bits.append("scalar")
        if self.rs:
            bits.append("rs")
        return "-".join(bits)

    def options(self) -> dict:
        o = dict(ALGOS[self.algo])
        if self.dora:
            o.update(dora_wd=True, wd_on_output=self.dora == "out")
        if self.tucker:
            o["use_tucker"] = True
        if self.scalar:
            o["use_scalar"] = True
        if self.rs:
            o["rs_lora"] = True
        return o


def valid(c: Case) -> bool:
    lc = LAYER_BY_ID[c.layer]
    if lc.norm != (c.algo == "norm"):
        return False
    if c.tucker and (not lc.spatial or c.algo not in TUCKER_ALGOS):
        return False  # identical to the plain case
    if c.tucker and c.algo == "lora" and lc.groups > 1:
        return False  # rejected (tested separately)
    if c.algo.startswith("boft") and lc.groups > 1:
        return False  # rejected: butterfly stages cross conv groups (tested separately)
    if c.dora and c.algo not in DORA_ALGOS:
        return False
    if (c.scalar or c.rs) and c.algo not in SCALED:
        return False
    return True


def all_cases() -> list[Case]:
    out = []
    for layer, algo, dora, tucker, scalar, rs in itertools.product(
        LAYER_BY_ID, ALGOS, (None, "out", "in"), (False, True), (False, True), (False, True)
    ):
        c = Case(layer, algo, dora, tucker, scalar, rs)
        if valid(c):
            out.append(c)
    return out


def make(case: Case, seed: int = 0):
    torch.manual_seed(seed)
    lc = LAYER_BY_ID[case.layer]
    model = Wrap(lc.make()).eval()  # eval: DyLoRA trains random ranks in train mode
    x = torch.randn(*lc.x_shape)
    return model, x


def randomize(net, scale: float = 0.5, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.abs().mean() + 0.1))


def set_path(net, path: str) -> None:
    for a in net.adapters.values():
        a.opts = a.opts.replace(path=path)


def assert_close_i1(y, y_ref, y_base, what=""):
    """Spec invariant I1: |Δy| <= 1e-5·max|y_ref - y_base| + 1e-6, the absolute term taken relative to the
    output's scale (fp32 rounding of the base op itself grows with |y|)."""
    tol = 1e-5 * (y_ref - y_base).abs().max().item() + 1e-6 * max(1.0, y_base.abs().max().item())
    err = (y - y_ref).abs().max().item()
    assert err <= tol, f"{what}: max error {err:.3e} > tolerance {tol:.3e}"


def toml_dumps(data: dict) -> str:
    """A minimal TOML writer for test configs: scalars, lists, inline tables, [tables] and [[arrays of tables]];
    None values are left out."""
    import json

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items() if x is not None) + " }"
        raise TypeError(v)

    def table(d: dict) -> list[str]:
        return [f"{k} = {val(x)}" for k, x in d.items() if x is not None]

    def is_table_array(v) -> bool:
        return isinstance(v, list) and bool(v) and isinstance(v[0], dict)

    lines = table({k: v for k, v in data.items() if not isinstance(v, dict) and not is_table_array(v)})
    for k, v in data.items():
        if isinstance(v, dict):
            lines += [f"[{k}]", *table(v)]
        elif is_table_array(v):
            for item in v:
                lines += [f"[[{k}]]", *table(item)]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous in tests that may run side by side)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
