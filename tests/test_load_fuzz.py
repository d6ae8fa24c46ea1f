"""Malformed adapter files: every case ends in a lyco error naming the file (and the key or module where there is
one) or loads with an explicit warning, never in a foreign exception or a silent success.  `lyco inspect` on the
same files returns a description or a lyco error."""
from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import lyco
from lyco.errors import LycoError
from lyco.tools.inspect import summarize


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 32)
        self.conv = nn.Conv2d(32, 24, 3, padding=1)


ALGOS = {"lora": dict(algo="lora", dim=4, alpha=2.0), "loha": dict(algo="loha", dim=2, alpha=1.0),
         "lokr": dict(algo="lokr", dim=2, factor=4)}
#: the two halves (or all parts) that must come together, per algorithm
REQUIRED = {"lora": ("lora_down.weight", "lora_up.weight"),
            "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
            "lokr": ("lokr_w1", "lokr_w2_a", "lokr_w2_b")}
LIN = "lycoris_lin"


@dataclass(frozen=True)
class Case:
    id: str
    #: tensors -> tensors (a dict), or bytes -> bytes (``raw=True``)
    mutate: Callable
    raw: bool = False
    #: text the error must contain besides the file name (a key or module), if any
    names: str = ""


def _set(key: str, fn) -> Callable:
    def mutate(t):
        t = dict(t)
        t[key] = fn(t[key])
        return t
    return mutate


def _drop(key: str) -> Callable:
    return lambda t: {k: v for k, v in t.items() if k != key}


def _add(key: str, value: torch.Tensor) -> Callable:
    return lambda t: {**t, key: value}


def _hlen(raw: bytes) -> int:
    return struct.unpack("<Q", raw[:8])[0]


def _header(fn) -> Callable:
    def mutate(raw: bytes) -> bytes:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        header = fn(header)
        blob = json.dumps(header).encode()
        return struct.pack("<Q", len(blob)) + blob + raw[8 + n:]
    return mutate


def _first_tensor_entry(h: dict) -> str:
    return sorted(k for k in h if k != "__metadata__" and h[k]["shape"])[0]


def _bad_offsets(h):
    k = _first_tensor_entry(h)
    h[k]["data_offsets"] = [h[k]["data_offsets"][1], h[k]["data_offsets"][0] - 1]
    return h


def _bad_shape(h):
    k = _first_tensor_entry(h)
    h[k]["shape"] = [x * 2 for x in h[k]["shape"]]
    return h


def byte_cases() -> list[Case]:
    return [
        Case("empty", lambda b: b"", True),
        Case("four-bytes", lambda b: b[:4], True),
        Case("truncated-half", lambda b: b[: len(b) // 2], True),
        Case("truncated-1", lambda b: b[:-1], True),
        Case("trailing-garbage", lambda b: b + b"\x00garbage", True),
        Case("header-len-huge", lambda b: struct.pack("<Q", 2 ** 40) + b[8:], True),
        Case("header-len-zero", lambda b: struct.pack("<Q", 0) + b[8:], True),
        Case("header-not-json", lambda b: b[:8] + b"\xff" * _hlen(b) + b[8 + _hlen(b):], True),
        Case("header-array", _header(lambda h: [1, 2]), True),
        Case("header-no-offsets", _header(lambda h: {k: ({kk: vv for kk, vv in v.items() if kk != "data_offsets"}
                                                         if k != "__metadata__" else v) for k, v in h.items()}), True),
        Case("header-bad-dtype", _header(lambda h: {k: ({**v, "dtype": "F99"} if k != "__metadata__" else v)
                                                    for k, v in h.items()}), True),
        Case("header-bad-offsets", _header(_bad_offsets), True),
        Case("header-shape-vs-offsets", _header(_bad_shape), True),
        Case("header-metadata-not-strings", _header(lambda h: {**h, "__metadata__": {"ss_network_dim": 4}}), True),
        Case("png-bytes", lambda b: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, True),
        Case("text-bytes", lambda b: b"this is not an adapter\n", True),
    ]


def tensor_cases(algo: str) -> list[Case]:
    req = REQUIRED[algo]
    k0 = f"{LIN}.{req[0]}"
    k1 = f"{LIN}.{req[-1]}"
    alpha = f"{LIN}.alpha"
    cases = [
        Case("nan", _set(k0, lambda t: t.index_fill(0, torch.tensor([0]), float("nan"))), names=k0),
        Case("inf", _set(k1, lambda t: t.index_fill(0, torch.tensor([0]), float("inf"))), names=k1),
        Case("nan-fp16", _set(k0, lambda t: t.half().index_fill(0, torch.tensor([0]), float("nan"))), names=k0),
        Case("alpha-nan", _set(alpha, lambda t: torch.tensor(float("nan"))), names=alpha),
        Case("alpha-neg-inf", _set(alpha, lambda t: torch.tensor(float("-inf"))), names=alpha),
        Case("int32", _set(k0, lambda t: t.to(torch.int32)), names=k0),
        Case("int64", _set(k1, lambda t: t.to(torch.int64)), names=k1),
        Case("uint8", _set(k0, lambda t: t.to(torch.uint8)), names=k0),
        Case("bool", _set(k0, lambda t: t > 0), names=k0),
        Case("alpha-int", _set(alpha, lambda t: torch.tensor(2)), names=alpha),
        Case("alpha-bool", _set(alpha, lambda t: torch.tensor(True)), names=alpha),
        Case("alpha-1d", _set(alpha, lambda t: torch.tensor([2.0, 3.0])), names=alpha),
        Case("alpha-2d", _set(alpha, lambda t: torch.ones(2, 2)), names=alpha),
        Case("alpha-1-element", _set(alpha, lambda t: t.reshape(1)), names=alpha),
        Case("alpha-empty", _set(alpha, lambda t: torch.ones(0)), names=alpha),
        Case("scale-2d", _add(f"{LIN}.scale", torch.ones(2, 2)), names=f"{LIN}.scale"),
        Case("extra-part", _add(f"{LIN}.mystery", torch.ones(3)), names="mystery"),
        Case("extra-module", _add("lycoris_nowhere.lora_up.weight", torch.ones(3, 3)), names="lycoris_nowhere"),
        Case("no-module-name", _add("alpha", torch.tensor(1.0)), names="alpha"),
        Case("leading-dot", _add(".lora_up.weight", torch.ones(2, 2))),
        Case("other-model", lambda t: {k.replace("lycoris_", "lycoris_other_"): v for k, v in t.items()},
             names="lycoris_other_"),
        Case("two-spellings", lambda t: {**t, **{k.replace(LIN, "lora_lin"): v.clone() for k, v in t.items()
                                                 if k.startswith(LIN + ".")}}, names="lin"),
        Case("transposed", _set(k1, lambda t: t.transpose(0, 1).contiguous()), names=LIN),
        Case("flattened", _set(k0, lambda t: t.reshape(-1)), names=LIN),
        Case("zero-d", _set(k0, lambda t: t.reshape(-1)[0].clone()), names=LIN),
        Case("three-d", _set(k0, lambda t: t.reshape(1, *t.shape)), names=LIN),
        Case("rank-plus-one", _set(k0, lambda t: torch.cat([t, t[:1]], 0)), names=LIN),
        Case("rank-zero", _set(k0, lambda t: t[:0]), names=LIN),
        Case("wider", _set(k1, lambda t: torch.cat([t, t], -1)), names=LIN),
        Case("dora-bad-shape", _add(f"{LIN}.dora_scale", torch.ones(5, 1)), names="dora_scale"),
        Case("on-input-hijack", _add(f"{LIN}.on_input", torch.tensor(1)), names=LIN),
        Case("on-input-float", lambda t: {f"{LIN}.on_input": torch.tensor(0.5), f"{LIN}.weight": torch.ones(32)},
             names="on_input"),
        Case("on-input-3", lambda t: {f"{LIN}.on_input": torch.tensor(3), f"{LIN}.weight": torch.ones(32)},
             names="on_input"),
        Case("oft-blocks-2d", lambda t: {f"{LIN}.oft_blocks": torch.ones(4, 4)}, names=LIN),
        Case("oft-blocks-bad-tiling", lambda t: {f"{LIN}.oft_blocks": torch.zeros(3, 5, 5)}, names=LIN),
        Case("diff-wrong-shape", lambda t: {f"{LIN}.diff": torch.zeros(32, 15)}, names=LIN),
        Case("norm-on-linear", lambda t: {f"{LIN}.w_norm": torch.zeros(32)}, names=LIN),
        Case("glora-incomplete", lambda t: {f"{LIN}.a1.weight": torch.zeros(16, 2)}, names=LIN),
        Case("only-alpha", lambda t: {alpha: torch.tensor(1.0)}, names=LIN),
        Case("no-tensors", lambda t: {}),
    ]
    cases += [Case(f"missing-{p.replace('.weight', '')}", _drop(f"{LIN}.{p}"), names=LIN) for p in req]
    cases += [Case(f"only-{p.replace('.weight', '')}", lambda t, p=p: {f"{LIN}.{p}": t[f"{LIN}.{p}"]}, names=LIN)
              for p in req]
    return cases


def _valid_file(algo: str, path) -> None:
    torch.manual_seed(0)
    net = lyco.attach(Net(), **ALGOS[algo])
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)
    net.save(path)


CASES = [(a, c) for a in ALGOS for c in byte_cases() + tensor_cases(a)]


def test_at_least_fifty_cases_per_algorithm():
    for a in ALGOS:
        assert sum(1 for algo, _ in CASES if algo == a) >= 50


@pytest.mark.parametrize("algo,case", CASES, ids=[f"{a}-{c.id}" for a, c in CASES])
def test_malformed_file_is_a_lyco_error_or_reported(algo, case, tmp_path, caplog):
    good = tmp_path / "good.safetensors"
    _valid_file(algo, good)
    bad = tmp_path / f"bad-{case.id}.safetensors"
    if case.raw:
        bad.write_bytes(case.mutate(good.read_bytes()))
    else:
        save_file({k: v.contiguous() for k, v in case.mutate(load_file(str(good))).items()}, str(bad))
    caplog.set_level(logging.WARNING, logger="lyco")
    try:
        lyco.load(bad, Net())
    except LycoError as exc:
        msg = str(exc)
        assert str(bad) in msg, msg
        assert case.names in msg, msg
    else:
        assert caplog.records, f"{case.id}: a malformed file loaded without any report"
    try:
        info = summarize(str(bad))
    except LycoError as exc:
        assert str(bad) in str(exc)
    else:
        assert info["file"] == str(bad)


def test_allow_nonfinite_opts_in(tmp_path):
    good = tmp_path / "good.safetensors"
    _valid_file("lora", good)
    t = load_file(str(good))
    t[f"{LIN}.lora_up.weight"][0, 0] = float("nan")
    save_file(t, str(tmp_path / "nan.safetensors"))
    with pytest.raises(lyco.FileFormatError, match="allow_nonfinite"):
        lyco.load(tmp_path / "nan.safetensors", Net())
    net = lyco.load(tmp_path / "nan.safetensors", Net(), allow_nonfinite=True)
    assert torch.isnan(net.adapters[LIN].lora_up).any()
