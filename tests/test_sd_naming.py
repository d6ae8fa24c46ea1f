"""kohya names and presets on the real SD1.5 / SD2.1 / SDXL architectures (built on the meta device)."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lyco
import lyco.sd
from lyco.inject import select_targets

DATA = Path(__file__).parent / "data" / "kohya_names"
CONFIGS = Path(lyco.__file__).parent / "data" / "sd_configs"


def names_file(name: str) -> set[str]:
    return set((DATA / name).read_text().split())


@cache
def meta_pipe(kind: str):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = CONFIGS / kind
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
        te = CLIPTextModel(CLIPTextConfig(**json.loads((folder / "text_encoder" / "config.json").read_text())))
        te2 = None
        if (folder / "text_encoder_2").is_dir():
            te2_config = json.loads((folder / "text_encoder_2" / "config.json").read_text())
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2_config))
    sched = SimpleNamespace(config={"prediction_type": "epsilon"})
    return SimpleNamespace(unet=unet, text_encoder=te, text_encoder_2=te2, scheduler=sched, vae=None)


def target_names(kind: str, text_encoder: bool = False, **cfg) -> dict[str, set[str]]:
    pipe = meta_pipe(kind)
    roots = lyco.sd.roots(pipe, unet=not text_encoder, text_encoder=text_encoder)
    out: dict[str, set[str]] = {}
    for t in select_targets(roots, lyco.AdapterConfig(**cfg)):
        out.setdefault(t.root.prefix, set()).add(t.name)
    return out


@pytest.mark.parametrize("kind,prefix", [("sd15", "sd15"), ("sd21-v", "sd21"), ("sdxl", "sdxl")])
def test_unet_kohya_lora_names(kind, prefix):
    got = target_names(kind, preset="kohya")["lora_unet"]
    assert got == names_file(f"{prefix}_unet_kohya.txt")


@pytest.mark.parametrize("kind,prefix", [("sd15", "sd15"), ("sd21-base", "sd21"), ("sdxl", "sdxl")])
def test_unet_kohya_locon_names(kind, prefix):
    got = target_names(kind, preset="kohya-conv")["lora_unet"]
    assert got == names_file(f"{prefix}_unet_kohya_conv.txt")


@pytest.mark.parametrize("kind,files", [("sd15", {"lora_te": "sd15_te_kohya.txt"}),
                                        ("sd21-v", {"lora_te": "sd21_te_kohya.txt"}),
                                        ("sdxl", {"lora_te1": "sdxl_te1_kohya.txt", "lora_te2": "sdxl_te2_kohya.txt"})])
def test_text_encoder_names(kind, files):
    got = target_names(kind, text_encoder=True, preset="kohya")
    assert set(got) == set(files)
    for prefix, fname in files.items():
        assert got[prefix] == names_file(fname)


@pytest.mark.parametrize("preset,fname", [("attn-mlp", "sd15_unet_lycoris_attn-mlp.txt"),
                                          ("unet-transformer-only", "sd15_unet_lycoris_unet-transformer-only.txt"),
                                          ("unet-convblock-only", "sd15_unet_lycoris_unet-convblock-only.txt")])
def test_lycoris_presets_sd15(preset, fname):
    assert target_names("sd15", preset=preset)["lora_unet"] == names_file(fname)


def test_full_preset_sd15_and_sdxl():
    full = target_names("sd15", preset="full")["lora_unet"]
    extra = {"lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_1",
             "lora_unet_time_embedding_linear_2"}
    assert full == names_file("sd15_unet_kohya_conv.txt") | extra and len(full) == 282
    assert target_names("sdxl", preset="full")["lora_unet"] == names_file("sdxl_unet_kohya_conv.txt")


def test_attn_only_matches_attention_projections():
    got = target_names("sd15", preset="attn-only")["lora_unet"]
    assert len(got) == 16 * 2 * 4
    assert all(n.endswith(("to_q", "to_k", "to_v", "to_out_0")) for n in got)
    te = target_names("sd15", text_encoder=True, preset="attn-only")["lora_te"]
    assert len(te) == 12 * 4


@pytest.mark.parametrize("kind", ["sd15", "sd21-v", "sdxl"])
@pytest.mark.parametrize("preset", ["kohya", "kohya-conv", "full", "full-lin", "attn-mlp", "attn-only",
                                    "unet-transformer-only", "unet-convblock-only", "ia3"])
def test_every_preset_matches_modules(kind, preset):
    got = target_names(kind, preset=preset)
    assert len(got["lora_unet"]) > 0


def test_sdxl_names_never_mix_layouts():
    got = target_names("sdxl", preset="full")["lora_unet"]
    assert not any(n.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_unet_mid_block")) for n in got)
    sd15 = target_names("sd15", preset="full")["lora_unet"]
    assert not any(n.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks", "lora_unet_middle_block"))
                   for n in sd15)
