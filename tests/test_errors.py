"""Every error case names the file, key or module and says what to do."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lyco
from lyco.errors import ConfigError, FileFormatError, StateError, TargetError


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.proj(x))


def _saved(tmp_path, **kw):
    m = Small()
    net = lyco.attach(m, **kw)
    f = tmp_path / "a.safetensors"
    net.save(f)
    net.detach()
    return m, f


def test_no_matched_modules_lists_candidates_and_patterns():
    with pytest.raises(TargetError) as e:
        lyco.attach(Small(), target_modules=["Attention"])
    msg = str(e.value)
    assert "Attention" in msg and "proj" in msg and "head" in msg


def test_unknown_algorithm_lists_choices():
    with pytest.raises(ConfigError) as e:
        lyco.AdapterConfig(algo="lohaa")
    assert "'loha'" in str(e.value) and "lokr" in str(e.value)


def test_unknown_option_suggests():
    with pytest.raises(ConfigError) as e:
        lyco.AdapterConfig(dora_wdd=True)
    assert "did you mean 'dora_wd'" in str(e.value)


def test_string_booleans_rejected():
    with pytest.raises(ConfigError) as e:
        lyco.AdapterConfig(decompose_both="False")
    assert "decompose_both" in str(e.value)


def test_override_option_validated():
    with pytest.raises(ConfigError) as e:
        lyco.AdapterConfig(name_algo_map={"head": {"algo": "loha", "dimm": 4}})
    assert "dimm" in str(e.value) and "did you mean 'dim'" in str(e.value)
    with pytest.raises(ConfigError):
        lyco.AdapterConfig(module_algo_map={"Linear": {"algo": "nope"}})


def test_unsupported_target_layer_named():
    m = nn.Sequential(nn.Embedding(4, 8), nn.Linear(8, 8))
    with pytest.raises(TargetError) as e:
        lyco.attach(m, target_names=["0"])
    assert "'0'" in str(e.value) and "Embedding" in str(e.value)


def test_bad_combination_names_module():
    with pytest.raises(ConfigError) as e:
        lyco.attach(Small(), algo="lora", dora_wd=True, dropout=0.1)
    assert "lycoris_proj" in str(e.value) and "dropout" in str(e.value)


def test_truncated_file(tmp_path):
    m, f = _saved(tmp_path)
    raw = f.read_bytes()
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(raw[: len(raw) - 10])
    with pytest.raises(FileFormatError) as e:
        lyco.load(bad, m)
    assert "trunc.safetensors" in str(e.value) and "truncated" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"\x00\x01", b"garbage garbage garbage",
                                     b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxx"])
def test_corrupt_file(tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(FileFormatError) as e:
        lyco.load(bad, Small())
    assert "bad.safetensors" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileFormatError) as e:
        lyco.load(tmp_path / "nope.safetensors", Small())
    assert "nope.safetensors" in str(e.value)


def test_shape_mismatch_names_key_and_module(tmp_path):
    _, f = _saved(tmp_path)

    class Other(Small):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 8)

    with pytest.raises(FileFormatError) as e:
        lyco.load(f, Other())
    msg = str(e.value)
    assert "lycoris_proj.lora_down.weight" in msg and "a.safetensors" in msg


def test_keys_for_missing_modules(tmp_path):
    _, f = _saved(tmp_path)
    only_head = nn.Module()
    only_head.head = nn.Linear(8, 4)
    with pytest.raises(FileFormatError) as e:
        lyco.load(f, only_head)
    assert "lycoris_proj" in str(e.value) and "strict=False" in str(e.value)
    net = lyco.load(f, only_head, strict=False)
    assert net.names() == ["lycoris_head"]


def test_file_for_another_model_entirely(tmp_path):
    _, f = _saved(tmp_path)
    with pytest.raises(FileFormatError) as e:
        lyco.load(f, nn.Sequential(nn.Linear(8, 8)))
    assert "no module of the file matches" in str(e.value)


def test_unknown_parts_reported(tmp_path):
    from safetensors.torch import load_file, save_file
    _, f = _saved(tmp_path)
    sd = load_file(str(f))
    sd["lycoris_proj.weird"] = torch.zeros(2)
    g = tmp_path / "weird.safetensors"
    save_file(sd, str(g))
    with pytest.raises(FileFormatError) as e:
        lyco.load(g, Small())
    assert "lycoris_proj" in str(e.value) and "weird" in str(e.value)


def test_refuses_nan(tmp_path):
    m = Small()
    net = lyco.attach(m)
    with torch.no_grad():
        net.adapters["lycoris_head"].lora_down[0, 0] = float("nan")
    with pytest.raises(FileFormatError) as e:
        net.save(tmp_path / "nan.safetensors")
    assert "lycoris_head.lora_down.weight" in str(e.value)
    assert not (tmp_path / "nan.safetensors").exists()


def test_fp16_overflow_refused(tmp_path):
    m = Small()
    net = lyco.attach(m)
    with torch.no_grad():
        net.adapters["lycoris_head"].lora_up.fill_(1e6)
    with pytest.raises(FileFormatError):
        net.save(tmp_path / "big.safetensors", dtype=torch.float16)


def test_unmerge_out_of_order():
    m = Small()
    n1 = lyco.attach(m)
    n2 = lyco.attach(m)
    n1.merge()
    n2.merge()
    with pytest.raises(StateError) as e:
        n1.unmerge()
    assert "unmerge it first" in str(e.value)
    n2.unmerge()
    n1.unmerge()
    n2.detach()
    n1.detach()
    with pytest.raises(StateError):
        n2.merge()


def test_merge_out_of_order():
    m = Small()
    lyco.attach(m)
    n2 = lyco.attach(m)
    with pytest.raises(StateError) as e:
        n2.merge()
    assert "attached before" in str(e.value)


def test_model_that_is_a_layer():
    with pytest.raises(TargetError) as e:
        lyco.attach(nn.Linear(3, 3))
    assert "nn.Sequential" in str(e.value)


def test_non_string_metadata(tmp_path):
    net = lyco.attach(Small())
    with pytest.raises(ConfigError):
        net.save(tmp_path / "m.safetensors", metadata={"epochs": 3})
