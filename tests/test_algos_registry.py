"""The algorithm registry and the capabilities each algorithm class declares (adding an algorithm = one file + one
line in registry.ALGORITHM_MODULES; nothing else in lyco names an algorithm)."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch.nn as nn

import lyco
import lyco.algos.functional as functional
from lyco.algos import registry
from lyco.algos.base import AdapterModule
from lyco.algos.options import AlgoOptions
from lyco.algos.orthogonal import OrthogonalModule
from lyco.algos.support import CLIENTS
from lyco.config import OVERRIDE_KEYS, AdapterConfig
from lyco.kohya.args import ARG_FIELDS
from lyco.network import needs_find_unused

SRC = Path(lyco.__file__).parent


def test_every_algorithm_option_exists_on_adapter_config_with_the_same_default():
    for f in dataclasses.fields(AlgoOptions):
        assert f.name in AdapterConfig.model_fields, f"AlgoOptions.{f.name} is missing on AdapterConfig"
        assert AdapterConfig.model_fields[f.name].default == f.default, f.name
        assert f.name in OVERRIDE_KEYS and f.name in ARG_FIELDS, f.name
    assert set(OVERRIDE_KEYS) == set(AlgoOptions.field_names()) | {"conv_dim", "conv_alpha"}


def test_detection_order_is_the_one_tuple():
    order = [c.__module__.rsplit(".", 1)[-1] for c in registry.detection_order()]
    assert order == [m for m in registry.ALGORITHM_MODULES if m in order]
    assert set(order) == set(registry.ALGORITHM_MODULES), "every listed module registers an algorithm"
    assert [c.algo for c in registry.detection_order()][:4] == ["ia3", "lora", "loha", "lokr"]


def test_register_refuses_unlisted_modules_and_duplicates():
    fake = type("Fake", (AdapterModule,), {"algo": "fake", "__module__": "somewhere.fake"})
    with pytest.raises(RuntimeError, match="ALGORITHM_MODULES"):
        registry.register(fake)
    dup = type("Dup", (AdapterModule,), {"algo": "lora", "__module__": "lyco.algos.lora"})
    with pytest.raises(RuntimeError, match="already registered"):
        registry.register(dup)


def test_no_algorithm_name_outside_the_algorithm_files():
    """Algorithm knowledge stays in algos/: no code elsewhere compares with an algorithm's name."""
    names = sorted(registry.classes(), key=len, reverse=True)
    alts = "|".join(map(re.escape, names))
    pat = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*["']({alts})["']|["']({alts})["']\s*(==|!=)""")
    offenders = []
    train = sorted(p.relative_to(SRC).as_posix() for p in (SRC / "train").glob("*.py"))
    for f in ("network.py", "inject.py", "layer.py", "config.py", "tools/compat.py", "tools/inspect.py", *train):
        path = SRC / f
        if path.exists():
            offenders += [f"{f}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
                          if pat.search(line)]
    assert not offenders, offenders


def test_capabilities():
    dylora, lora = registry.get("dylora"), registry.get("lora")
    assert dylora.truncatable and dylora.stochastic_graph
    assert not any(c.truncatable or c.stochastic_graph for n, c in registry.classes().items() if n != "dylora")
    assert registry.for_layer_kind("norm").algo == "norm"
    assert all(c.layer_kinds for c in registry.classes().values())
    for cls in registry.classes().values():
        for feature, support in cls.support.items():
            assert set(support.levels) == set(CLIENTS), (cls.algo, feature)
    assert lora.needs_find_unused(AlgoOptions(module_dropout=0.1)) and not lora.needs_find_unused(AlgoOptions())


@pytest.mark.parametrize("config,expected", [
    (dict(algo="lora"), False),
    (dict(algo="lora", module_dropout=0.2), True),
    (dict(algo="dylora", dim=4, block_size=2), True),
    (dict(algo="lora", name_algo_map={r".*attn.*": {"algo": "dylora", "block_size": 2}}), True),
    (dict(algo="loha", module_algo_map={"Attention": {"module_dropout": 0.1}}), True),
    (dict(algo="lokr", rank_dropout=0.3, dropout=0.1), False),
])
def test_needs_find_unused(config, expected):
    assert needs_find_unused(AdapterConfig(**config)) is expected


def test_needs_find_unused_reads_preset_files(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('unet_target_module = ["Attention"]\n[name_algo_map.".*to_k"]\nalgo = "dylora"\n'
                      'block_size = 2\n')
    assert needs_find_unused(AdapterConfig(algo="lora", preset=str(preset)))


def test_diag_oft_and_boft_share_the_orthogonal_base():
    oft, boft = registry.get("diag-oft"), registry.get("boft")
    assert issubclass(oft, OrthogonalModule) and issubclass(boft, OrthogonalModule)
    assert oft not in boft.__mro__, "BOFT must not skip a diag-OFT parent's __init__"
    m = nn.Sequential(nn.Linear(8, 32))
    net = lyco.attach(m, algo="boft", dim=8, rescaled=True, constraint=0.01)
    a = net.adapters["lycoris_0"]
    assert (a.m_stages, a.n, a.bs) == (3, 4, 8) and a.rescale is not None and a.constraint == 0.01


def test_functional_modules_hold_no_modules():
    for info in pkgutil.iter_modules(functional.__path__):
        mod = importlib.import_module(f"{functional.__name__}.{info.name}")
        assert not [v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, nn.Module)], info.name
    assert {"glora", "ia3", "norm", "lora", "loha", "lokr", "oft", "dora"} <= {
        i.name for i in pkgutil.iter_modules(functional.__path__)}


def test_adding_an_algorithm_doc_lists_every_capability():
    doc = (SRC.parents[1] / "docs" / "adding-an-algorithm.md").read_text()
    hooks = ["layer_kinds", "stochastic_graph", "truncatable", "support", "file_features", "file_summary",
             "file_geometry", "portable_parts", "integer_parts", "scalar_parts", "detect", "from_file", "export",
             "ALGORITHM_MODULES", "AlgoOptions"]
    assert not [h for h in hooks if h not in doc]
