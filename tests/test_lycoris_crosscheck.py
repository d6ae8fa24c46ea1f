"""Cross-checks against the reference implementation, lycoris-lora 4.1.3 (test-only dependency).

Both directions compare *forward outputs*: a lyco file loaded by lycoris must reproduce lyco's output, and a
lycoris-written file loaded by lyco must reproduce lycoris's forward (not its merge helpers, which apply the
scale twice for LoHa/LoKr, a known bug of the reference).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import lyco
from helpers import assert_close_i1

lycoris = pytest.importorskip("lycoris")
from lycoris import LycorisNetwork, create_lycoris, create_lycoris_from_weights  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(24, 32)
        self.conv = nn.Conv2d(32, 48, 3, padding=1, stride=2)
        self.pw = nn.Conv2d(48, 40, 1)

    def forward(self, x):
        return self.pw(self.conv(self.lin(x).permute(0, 3, 1, 2)))


VARIANTS = {
    "lora": dict(algo="lora", dim=4, alpha=2.0),
    "locon-tucker": dict(algo="lora", dim=4, alpha=2.0, use_tucker=True),
    "loha": dict(algo="loha", dim=4, alpha=2.0),
    "loha-tucker": dict(algo="loha", dim=4, alpha=2.0, use_tucker=True),
    "lokr-full": dict(algo="lokr", dim=10000, alpha=1.0, factor=8),
    "lokr-decomposed": dict(algo="lokr", dim=2, alpha=1.0, factor=4),
    "lokr-both": dict(algo="lokr", dim=1, alpha=1.0, factor=8, decompose_both=True),
    "lokr-unbalanced": dict(algo="lokr", dim=1, alpha=1.0, factor=8, unbalanced_factorization=True),
    "full": dict(algo="full"),
}


def _setup():
    torch.manual_seed(0)
    m = Net()
    x = torch.randn(2, 6, 6, 24)
    with torch.no_grad():
        y_base = m(x)
    return m, x, y_base


def _randomize(params, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.05))


# lycoris's loader rebuilds LoKr modules from a guessed factor and ignores unbalanced_factorization, so it cannot
# load unbalanced files (a reference limitation; lyco reads factor sizes from the shapes).
LYCO_TO_LYCORIS = [v for v in VARIANTS if v != "lokr-unbalanced"]


@pytest.mark.parametrize("variant", LYCO_TO_LYCORIS)
def test_lyco_file_in_lycoris(variant, tmp_path):
    m, x, y_base = _setup()
    net = lyco.attach(m, **VARIANTS[variant])
    _randomize(net.parameters())
    with torch.no_grad():
        y = m(x)
    f = tmp_path / "lyco.safetensors"
    net.save(f)
    net.detach()
    m2 = copy.deepcopy(m)
    ref_net, _ = create_lycoris_from_weights(1.0, str(f), m2)
    assert len(ref_net.loras) == 3
    ref_net.apply_to()
    with torch.no_grad():
        y_ref = m2(x)
    assert_close_i1(y_ref, y, y_base, 'lycoris forward of a lyco file')


def _lycoris_kwargs(v: dict) -> dict:
    kw = {k: v[k] for k in ("algo", "use_tucker", "factor", "decompose_both", "unbalanced_factorization") if k in v}
    return kw


@pytest.mark.parametrize("variant", VARIANTS)
def test_lycoris_file_in_lyco(variant, tmp_path):
    m, x, y_base = _setup()
    v = VARIANTS[variant]
    m_ref = copy.deepcopy(m)
    LycorisNetwork.apply_preset({"target_module": ["Linear", "Conv2d"], "target_name": [], "module_algo_map": {},
                                 "name_algo_map": {}, "exclude_name": [], "enable_conv": True})
    ref = create_lycoris(m_ref, 1.0, linear_dim=v.get("dim", 4), linear_alpha=v.get("alpha", 1.0),
                         conv_dim=v.get("dim", 4), conv_alpha=v.get("alpha", 1.0), **_lycoris_kwargs(v))
    ref.apply_to()
    _randomize(ref.parameters())
    with torch.no_grad():
        y_ref = m_ref(x)
    f = tmp_path / "ref.safetensors"
    ref.save_weights(str(f), torch.float32, None)
    net = lyco.load(f, m)
    assert len(net) == 3
    with torch.no_grad():
        y = m(x)
    assert_close_i1(y, y_ref, y_base, 'lyco forward of a lycoris file')
    # the exact same tensors come back out (lyco reads and re-writes the reference's layout)
    from safetensors.torch import load_file
    ref_sd = load_file(str(f))
    ours = net.state_tensors()
    for k, t in ref_sd.items():
        assert k in ours, k
        assert torch.allclose(ours[k], t.float(), atol=0, rtol=1e-6), k


def test_lycoris_merge_tool_double_scale_is_not_reproduced():
    """Reference bug #1: LoHa get_diff_weight applies alpha/rank twice; lyco's merge equals its forward."""
    m, x, y_base = _setup()
    net = lyco.attach(m, algo="loha", dim=4, alpha=1.0)  # s = 1/4: s² != s
    _randomize(net.parameters())
    with torch.no_grad():
        y_forward = m(x)
        net.merge()
        y_merged = m(x)
        net.unmerge()
    assert_close_i1(y_merged, y_forward, y_base, 'merge vs forward')


def test_rs_lora_alpha_is_folded_for_other_loaders(tmp_path):
    m, x, y_base = _setup()
    net = lyco.attach(m, algo="lora", dim=16, alpha=4.0, rs_lora=True)
    _randomize(net.parameters())
    with torch.no_grad():
        y = m(x)
    f = tmp_path / "rs.safetensors"
    net.save(f)
    from safetensors.torch import load_file
    sd = load_file(str(f))
    assert sd["lycoris_lin.alpha"].item() == pytest.approx(4.0 * 16 ** 0.5)
    net.detach()
    m2 = copy.deepcopy(m)
    ref, _ = create_lycoris_from_weights(1.0, str(f), m2)
    ref.apply_to()
    with torch.no_grad():
        assert_close_i1(m2(x), y, y_base, 'rs-LoRA file in lycoris')
