"""lyco.kohya builds what lycoris.kohya (lycoris-lora 4.1.3) builds from the same sd-scripts command line.

Models: tiny-width versions of the real SD1.5 UNet / CLIP-L (diffusers' tree, which is sd-scripts' SD1 tree) and
of the SDXL UNet in sd-scripts' LDM layout (tests/sd_ldm.py) with CLIP-L + CLIP-G.  Their module names are first
checked against sd-scripts' real-size name lists.  Compared per module: the name, the algorithm, every tensor's
key and shape, and alpha.  The one reference bug left out: on SD1/SD2 UNets lycoris.kohya's ``full`` preset builds
``time_embedding.linear_1/2`` twice (by class and by name) and stops with an AssertionError; the reference here
builds them once.
"""
from __future__ import annotations

import copy
import json
import logging
from functools import cache
from pathlib import Path

import pytest
import torch

import lyco
from lyco import kohya
from sd_ldm import sdxl_ldm_unet

lk = pytest.importorskip("lycoris.kohya")

DATA = Path(__file__).parent / "data" / "kohya_names"
CONFIGS = Path(lyco.__file__).parent / "data" / "sd_configs"
ALGOS = {"LoConModule": "lora", "LohaModule": "loha", "LokrModule": "lokr"}
EXTRA_SD15 = {"lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_1",
              "lora_unet_time_embedding_linear_2"}


def _names(fname: str) -> set[str]:
    return set((DATA / fname).read_text().split())


def _te(layers: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    cfg = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=layers,
                         max_position_embeddings=16, vocab_size=100, projection_dim=32)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


@cache
def models(kind: str):
    """(unet, text encoder(s)) with the real architecture's tree at 1/10 of its widths."""
    torch.manual_seed(0)
    if kind == "sdxl":
        return sdxl_ldm_unet(32, 64), [_te(12), _te(32, projection=True)]
    from diffusers import UNet2DConditionModel
    cfg = {k: v for k, v in json.loads((CONFIGS / "sd15" / "unet" / "config.json").read_text()).items()
           if not k.startswith("_")}
    cfg.update(block_out_channels=[32, 64, 128, 128], cross_attention_dim=32, sample_size=8)
    return UNet2DConditionModel(**cfg), _te(12)


def _te_spelling(name: str) -> str:
    """lycoris names text-encoder modules after the installed transformers' paths (transformers 5: no text_model)."""
    for p in ("lora_te1_", "lora_te2_", "lora_te_"):
        if name.startswith(p) and not name.startswith(p + "text_model_"):
            return p + "text_model_" + name[len(p):]
    return name


def reference(kind: str, algo: str, dim: int, alpha: float, monkeypatch, **args) -> dict[str, tuple[str, dict]]:
    """lycoris.kohya.create_network's modules: name -> (algo, {key: (shape, alpha value)})."""
    full = copy.deepcopy(lk.PRESET["full"])
    full["unet_target_name"] = [n for n in full["unet_target_name"] if not n.startswith("time_embedding")]
    monkeypatch.setitem(lk.PRESET, "full", full)
    cls = lk.LycorisNetworkKohya
    for attr in ("ENABLE_CONV", "UNET_TARGET_REPLACE_MODULE", "UNET_TARGET_REPLACE_NAME",
                 "TEXT_ENCODER_TARGET_REPLACE_MODULE", "TEXT_ENCODER_TARGET_REPLACE_NAME", "MODULE_ALGO_MAP",
                 "NAME_ALGO_MAP", "USE_FNMATCH", "TARGET_EXCLUDE_NAME"):
        monkeypatch.setattr(cls, attr, getattr(cls, attr))  # restored after the test: apply_preset mutates them
    unet, te = models(kind)
    logging.disable(logging.WARNING)
    try:
        net = lk.create_network(1.0, dim, alpha, None, te, unet, algo=algo, **args)
    finally:
        logging.disable(logging.NOTSET)
    out = {}
    for m in net.loras:
        sd = m.state_dict()
        out[_te_spelling(m.lora_name)] = (ALGOS[type(m).__name__],
                                          {k: tuple(v.shape) for k, v in sd.items()}, float(sd["alpha"]))
    return out


def ours(kind: str, algo: str, dim: int, alpha: float, **args) -> dict[str, tuple[str, dict]]:
    return dict(_ours(kind, algo, dim, alpha, tuple(sorted(args.items()))))


@cache
def _ours(kind: str, algo: str, dim: int, alpha: float, args: tuple) -> tuple:
    unet, te = models(kind)
    n = kohya.create_network(1.0, dim, alpha, None, te, unet, algo=algo, **dict(args))
    n.apply_to(te, unet)
    try:
        parts: dict[str, dict[str, tuple]] = {}
        for key, t in n.state_dict().items():  # the file's keys: <module>.<part>
            name, part = key.split(".", 1)
            parts.setdefault(name, {})[part] = (tuple(t.shape), float(t) if part == "alpha" else None)
        return tuple((name, (a.algo, {p: s for p, (s, _) in parts[name].items()}, parts[name]["alpha"][1]))
                     for name, a in n.net.adapters.items())
    finally:
        n.net.detach()


def counts(modules: dict) -> tuple[int, int]:
    unet = sum(1 for k in modules if k.startswith("lora_unet"))
    return unet, len(modules) - unet


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("algo", ["lora", "locon", "loha", "lokr"])
def test_same_modules_as_lycoris_kohya(kind, algo, monkeypatch):
    ref = reference(kind, algo, 8, 4.0, monkeypatch)
    got = ours(kind, algo, 8, 4.0)
    assert sorted(set(ref) - set(got)) == [] and sorted(set(got) - set(ref)) == []
    diff = {k: (ref[k], got[k]) for k in ref if ref[k] != got[k]}
    assert not diff, f"{len(diff)} modules differ, e.g. {next(iter(diff.items()))}"
    k3 = [k for k, (_, parts, _) in got.items() if parts.get("lora_down.weight", (0,))[2:] == (3, 3)]
    assert algo not in ("lora", "locon") or k3 and all(got[k][1]["lora_down.weight"][0] == 8 for k in k3)


@pytest.mark.parametrize("args", [{"conv_dim": "2", "conv_alpha": "1"}, {"preset": "attn-mlp"},
                                  {"factor": "4", "decompose_both": "true"}])
def test_same_modules_with_network_args(args, monkeypatch):
    algo = "lokr" if "factor" in args else "locon"
    assert ours("sd15", algo, 8, 4.0, **args) == reference("sd15", algo, 8, 4.0, monkeypatch, **args)


@pytest.mark.parametrize("kind,files", [
    ("sd15", {"lora_unet": ("sd15_unet_kohya_conv.txt",), "lora_te": ("sd15_te_kohya.txt",)}),
    ("sdxl", {"lora_unet": ("sdxl_unet_kohya_conv.txt",), "lora_te1": ("sdxl_te1_kohya.txt",),
              "lora_te2": ("sdxl_te2_kohya.txt",)}),
])
def test_tiny_models_have_the_real_module_names(kind, files):
    """The default set on the tiny models = sd-scripts' LoCon names of the real models (+ LyCORIS's extras)."""
    got = ours(kind, "lora", 8, 4.0)
    for prefix, (fname,) in files.items():
        names = {k for k in got if k.startswith(prefix + "_")}
        if prefix == "lora_te":
            names = {k for k in got if k.startswith("lora_te_")}
        expected = _names(fname) | (EXTRA_SD15 if kind == "sd15" and prefix == "lora_unet" else set())
        assert names == expected, (prefix, sorted(names ^ expected)[:6])


def test_real_sdxl_ldm_tree_matches_sd_scripts_names():
    from lyco.inject import select_targets
    unet = sdxl_ldm_unet(320, 2048, meta=True)
    roots = kohya.make_roots(None, unet)
    for preset, fname in (("kohya", "sdxl_unet_kohya.txt"), ("kohya-conv", "sdxl_unet_kohya_conv.txt"),
                          ("full", "sdxl_unet_kohya_conv.txt")):
        got = {t.name for t in select_targets(roots, lyco.AdapterConfig(preset=preset))}
        assert got == _names(fname), preset


def test_reference_bug_is_real_and_not_reproduced(monkeypatch):
    """lycoris.kohya's own default fails on an SD1 UNet; lyco.kohya builds each module once."""
    unet, te = models("sd15")
    for attr in ("UNET_TARGET_REPLACE_MODULE", "UNET_TARGET_REPLACE_NAME", "ENABLE_CONV"):
        monkeypatch.setattr(lk.LycorisNetworkKohya, attr, getattr(lk.LycorisNetworkKohya, attr))
    logging.disable(logging.WARNING)
    try:
        with pytest.raises(AssertionError, match="duplicated lora name: lora_unet_time_embedding_linear_1"):
            lk.create_network(1.0, 4, 1.0, None, te, unet, algo="lora")
    finally:
        logging.disable(logging.NOTSET)
    got = ours("sd15", "lora", 8, 4.0)
    assert {"lora_unet_time_embedding_linear_1", "lora_unet_time_embedding_linear_2"} <= set(got)
    assert counts(got) == (282, 72)
