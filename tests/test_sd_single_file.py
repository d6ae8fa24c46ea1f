"""Single-file SD checkpoints: family detection, offline load / save, lossless round trips (tiny models)."""
from __future__ import annotations

import argparse
import json
import logging
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lyco.errors import FileFormatError, MissingTokenizerError
from lyco.sd.ldm_convert import (
    TEXT_PREFIXES,
    fit_problems,
    text_encoder_class,
    text_encoder_weights,
    unet_weights,
    vae_weights,
)
from lyco.sd.single_file import (
    detect_family,
    inspect_checkpoint,
    load_single_file,
    resolve_prediction_type,
    save_single_file,
    shipped_config_dir,
    to_ldm_state_dict,
)
from lyco.sd.tokenizers import resolve_tokenizer
from sd_tiny import FAMILIES, generate, make_pipeline, tokenizer_dir

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
ENV = ("LYCO_TOKENIZER_PATH", "LYCO_TOKENIZER_2_PATH")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny ops on shared cores: one intra-op thread is far faster
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path_factory):
    """No tokenizer env vars and an empty Hugging Face cache unless a test sets them."""
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path_factory.mktemp("hf-empty")
    monkeypatch.setenv("HF_HOME", str(empty))
    monkeypatch.setenv("HF_HUB_CACHE", str(empty / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class Saved:
    def __init__(self, family, root, prediction_type="epsilon"):
        self.family = family
        self.pipe = make_pipeline(family, prediction_type=prediction_type)
        self.config = root / f"{family}-{prediction_type}-diffusers"
        self.pipe.save_pretrained(self.config)
        self.file = save_single_file(self.pipe, root / f"{family}-{prediction_type}.safetensors")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("single-file")
    cache: dict[str, Saved] = {}

    def get(family: str) -> Saved:
        if family not in cache:
            cache[family] = Saved(family, root)
        return cache[family]

    return get


def assert_same_weights(a, b):
    for name in COMPONENTS:
        ma, mb = getattr(a, name, None), getattr(b, name, None)
        assert (ma is None) == (mb is None), name
        if ma is None:
            continue
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{name}.{k}"


def without_tokenizers(folder, tmp_path):
    dst = tmp_path / "config-no-tokenizer"
    shutil.copytree(folder, dst)
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(dst / sub, ignore_errors=True)
    return dst


# ----------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_lossless(saved, family):
    s = saved(family)
    loaded = load_single_file(s.file, config=s.config)
    assert type(loaded) is type(s.pipe)
    assert_same_weights(s.pipe, loaded)
    assert type(loaded.scheduler) is type(s.pipe.scheduler)
    assert loaded.scheduler.config.prediction_type == "epsilon"
    assert loaded.tokenizer is not None and (family != "sdxl" or loaded.tokenizer_2 is not None)
    assert (generate(s.pipe) == generate(loaded)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_own_loader_reads_our_files(saved, family):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    s = saved(family)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    loaded = cls.from_single_file(str(s.file), config=str(s.config), local_files_only=True)
    if family == "sdxl":
        # diffusers tells SDXL's two encoders apart by width; the tiny ones have the same width
        loaded.text_encoder_2 = s.pipe.text_encoder_2
    assert_same_weights(s.pipe, loaded)


def test_round_trip_with_pipeline_as_config(saved):
    s = saved("sd1")
    loaded = load_single_file(s.file, config=s.pipe)
    assert_same_weights(s.pipe, loaded)
    assert loaded.tokenizer is s.pipe.tokenizer


def test_round_trip_through_ckpt_weights_only(saved, tmp_path):
    s = saved("sd2")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(s.file), "global_step": 12}, ckpt)
    assert_same_weights(s.pipe, load_single_file(ckpt, config=s.config))
    assert detect_family(ckpt) == "sd2"


def test_ckpt_with_pickled_objects_is_refused(tmp_path):
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.bias": torch.zeros(4)}, "args": argparse.Namespace()},
               ckpt)
    with pytest.raises(FileFormatError, match=r"evil\.ckpt.*weights_only=True"):
        load_single_file(ckpt)


def test_torch_dtype(saved):
    s = saved("sd1")
    loaded = load_single_file(s.file, config=s.config, torch_dtype=torch.float16, tokenizer=False)
    assert loaded.unet.dtype == torch.float16 and loaded.text_encoder.dtype == torch.float16
    assert torch.equal(loaded.vae.encoder.conv_in.weight, s.pipe.vae.encoder.conv_in.weight.half())


# ------------------------------------------------------------------------------------------------ file layout
@pytest.mark.parametrize("family", FAMILIES)
def test_file_has_original_layout(saved, family):
    s = saved(family)
    sd = load_file(s.file)
    allowed = ("model.diffusion_model.", "first_stage_model.") + TEXT_PREFIXES[family]
    assert all(k.startswith(allowed) for k in sd), [k for k in sd if not k.startswith(allowed)][:5]
    vae = s.pipe.vae.encoder.mid_block.attentions[0]
    q = sd["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert q.ndim == 4 and torch.equal(q[:, :, 0, 0], vae.to_q.weight)
    assert torch.equal(sd["first_stage_model.decoder.mid.attn_1.proj_out.weight"][:, :, 0, 0],
                       s.pipe.vae.decoder.mid_block.attentions[0].to_out[0].weight)
    # decoder up blocks are numbered in reverse in the original layout
    assert torch.equal(sd["first_stage_model.decoder.up.0.block.0.conv1.weight"],
                       s.pipe.vae.decoder.up_blocks[-1].resnets[0].conv1.weight)
    assert torch.equal(sd["model.diffusion_model.input_blocks.0.0.weight"], s.pipe.unet.conv_in.weight)
    te = s.pipe.text_encoder
    att = {k.removeprefix("text_model."): v for k, v in te.state_dict().items()}  # transformers 4 and 5 keys
    if family == "sd1":
        assert torch.equal(sd["cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight"],
                           att["encoder.layers.1.mlp.fc2.weight"])
        assert sd["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    if family == "sd2":
        p = "cond_stage_model.model."
        fused = torch.cat([att[f"encoder.layers.0.self_attn.{x}_proj.weight"] for x in "qkv"])
        assert torch.equal(sd[p + "transformer.resblocks.0.attn.in_proj_weight"], fused)
        assert torch.equal(sd[p + "transformer.resblocks.1.mlp.c_fc.weight"], att["encoder.layers.1.mlp.fc1.weight"])
        # diffusers drops OpenCLIP's last block (SD2 uses the penultimate layer): padded back for strict loaders
        layers = te.config.num_hidden_layers
        assert torch.equal(sd[p + f"transformer.resblocks.{layers}.ln_1.weight"],
                           sd[p + f"transformer.resblocks.{layers - 1}.ln_1.weight"])
        assert torch.equal(sd[p + "text_projection"], torch.eye(te.config.hidden_size))
    if family == "sdxl":
        te2 = s.pipe.text_encoder_2
        assert torch.equal(sd["conditioner.embedders.1.model.text_projection"], te2.text_projection.weight.T)
        assert "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_bias" in sd
        assert torch.equal(sd["model.diffusion_model.label_emb.0.0.weight"], s.pipe.unet.add_embedding.linear_1.weight)
        assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in sd
    with safe_open(str(s.file), framework="pt") as f:
        meta = f.metadata()
    assert meta["modelspec.prediction_type"] == "epsilon"


@pytest.mark.parametrize("family,pt", [("sd1", "epsilon"), ("sd2", "v_prediction"), ("sdxl", "epsilon")])
def test_shipped_configs_give_the_real_layout(family, pt):
    """Real-size models on the meta device: our LDM layout converts back through diffusers' converters."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    d = shipped_config_dir(family, pt)
    with torch.device("meta"):
        comps = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d / "unet")),
                 "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(d / "vae"))}
        te_cfgs = {}
        for name, prefix in zip(("text_encoder", "text_encoder_2"), TEXT_PREFIXES[family]):
            te_cfgs[name] = (CLIPTextConfig.from_pretrained(d / name), prefix)
            comps[name] = text_encoder_class(prefix)(te_cfgs[name][0])
    sd = to_ldm_state_dict(comps, family)
    info = inspect_checkpoint(sd)
    assert info.family == family and info.in_channels == 4
    assert info.context_dim == {"sd1": 768, "sd2": 1024, "sdxl": 2048}[family] == sum(info.text_widths)
    assert not fit_problems(comps["unet"].state_dict(), unet_weights(sd, comps["unet"].config))
    assert not fit_problems(comps["vae"].state_dict(), vae_weights(sd, comps["vae"].config))
    for name, (cfg, prefix) in te_cfgs.items():
        expected = {k: v for k, v in comps[name].state_dict().items() if not k.endswith("position_ids")}
        assert not fit_problems(expected, text_encoder_weights(sd, cfg, prefix)), name
    real = {  # keys and shapes of the released checkpoints
        "sd1": {"model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
                "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)},
        "sd2": {"cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight": (3072, 1024),
                "cond_stage_model.model.positional_embedding": (77, 1024),
                "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320)},
        "sdxl": {"conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
                 "conditioner.embedders.1.model.text_projection": (1280, 1280),
                 "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
                 "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
                 "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048)},
    }[family]
    for key, shape in {**real, "first_stage_model.decoder.mid.attn_1.v.weight": (512, 512, 1, 1)}.items():
        assert tuple(sd[key].shape) == shape, key


def test_shipped_configs_match_real_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(model):
        return sum(p.numel() for p in model.parameters())

    expected = {  # released SD1.5 / SD2.1 / SDXL base models (diffusers layout)
        ("sd1", "unet"): 859_520_964, ("sd1", "vae"): 83_653_863, ("sd1", "text_encoder"): 123_060_480,
        ("sd2", "unet"): 865_910_724, ("sd2", "vae"): 83_653_863, ("sd2", "text_encoder"): 340_387_840,
        ("sdxl", "unet"): 2_567_463_684, ("sdxl", "vae"): 83_653_863, ("sdxl", "text_encoder"): 123_060_480,
        ("sdxl", "text_encoder_2"): 694_659_840,
    }
    for pt in ("epsilon", "v_prediction"):
        for (family, name), n in expected.items():
            d = shipped_config_dir(family, pt) / name
            with torch.device("meta"):
                if name == "unet":
                    model = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d))
                elif name == "vae":
                    model = AutoencoderKL.from_config(AutoencoderKL.load_config(d))
                else:
                    cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
                    model = cls(CLIPTextConfig.from_pretrained(d))
            assert count(model) == n, (family, pt, name)
    v = json.loads((shipped_config_dir("sd2", "v_prediction") / "scheduler" / "scheduler_config.json").read_text())
    e = json.loads((shipped_config_dir("sd2", "epsilon") / "scheduler" / "scheduler_config.json").read_text())
    assert (v["prediction_type"], e["prediction_type"]) == ("v_prediction", "epsilon")


# ----------------------------------------------------------------------------------------- family detection
SD1_KEYS = ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight",
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
SD2_KEYS = SD1_KEYS[:2] + ["cond_stage_model.model.token_embedding.weight",
                           "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
SDXL_KEYS = SD1_KEYS[:2] + ["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                            "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
                            "model.diffusion_model.label_emb.0.0.weight"]


@pytest.mark.parametrize("keys,family", [(SD1_KEYS, "sd1"), (SD2_KEYS, "sd2"), (SDXL_KEYS, "sdxl"),
                                         (SDXL_KEYS[:2] + SDXL_KEYS[-1:], "sdxl")])
def test_detect_family_from_keys(keys, family):
    assert detect_family(keys) == family


@pytest.mark.parametrize("family", FAMILIES)
def test_detect_family_of_saved_files(saved, family):
    s = saved(family)
    assert detect_family(s.file) == family
    sd = load_file(s.file)
    assert detect_family(sd) == family
    assert detect_family({"state_dict": sd}) == family
    info = inspect_checkpoint(sd)
    assert info.context_dim == sum(info.text_widths) == s.pipe.unet.config.cross_attention_dim


def meta(*shape):
    return torch.empty(shape, device="meta")


def test_detect_unet_only_by_projection_shapes():
    conv = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": meta(320, 320, 1, 1)}
    lin = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": meta(320, 320)}
    assert detect_family(conv) == "sd1" and detect_family(lin) == "sd2"
    with pytest.raises(FileFormatError, match="family="):
        detect_family(list(conv))
    assert inspect_checkpoint(list(conv), family="sd1").family == "sd1"


UNSUPPORTED = [
    ({"model.diffusion_model.input_blocks.0.0.weight": meta(320, 9, 3, 3), **dict.fromkeys(SD1_KEYS[1:])},
     "inpainting"),
    ({"model.diffusion_model.input_blocks.0.0.weight": meta(320, 8, 3, 3)}, "InstructPix2Pix"),
    (dict.fromkeys(["model.diffusion_model.input_blocks.0.0.weight",
                    "conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight"]), "SDXL refiner"),
    (dict.fromkeys(["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"]),
     "Stable Diffusion 3"),
    (dict.fromkeys(["model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"]), "Flux"),
    (dict.fromkeys(["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]), "LoRA"),
    (dict.fromkeys(["down_blocks.0.resnets.0.conv1.weight"]), "diffusers-layout"),
    (dict.fromkeys(["first_stage_model.encoder.conv_in.weight"]), "no UNet"),
    (dict.fromkeys(SD1_KEYS + SD2_KEYS), "mixes text encoder layouts"),
]


@pytest.mark.parametrize("keys,what", UNSUPPORTED, ids=[w for _, w in UNSUPPORTED])
def test_unsupported_layouts_are_named(keys, what):
    with pytest.raises(FileFormatError, match=what) as exc:
        detect_family(keys, source="weird.safetensors")
    assert "weird.safetensors" in str(exc.value)


def test_width_mismatch_is_refused():
    sd = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": meta(320, 1024),
          "cond_stage_model.transformer.text_model.final_layer_norm.weight": meta(768)}
    with pytest.raises(FileFormatError, match=r"cross-attention width \(1024\).*\(768\)"):
        detect_family(sd)


def test_requested_family_must_match(saved):
    s = saved("sd1")
    with pytest.raises(FileFormatError, match="family 'sdxl' was requested"):
        load_single_file(s.file, family="sdxl", config=s.config)


def test_wrong_config_is_a_clear_error(saved):
    s, other = saved("sd1"), saved("sd2")
    with pytest.raises(FileFormatError, match="do not fit"):
        load_single_file(s.file, family="sd1", config=other.pipe, tokenizer=False)


def test_incomplete_checkpoint_is_refused(saved, tmp_path):
    sd = {k: v for k, v in load_file(saved("sd1").file).items() if not k.startswith("first_stage_model.")}
    save_file(sd, tmp_path / "no-vae.safetensors")
    with pytest.raises(FileFormatError, match=r"no-vae\.safetensors.*first_stage_model"):
        load_single_file(tmp_path / "no-vae.safetensors", config=saved("sd1").config)


# ------------------------------------------------------------------------------------------------ tokenizers
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_load_without_tokenizers(saved, family):
    s = saved(family)
    loaded = load_single_file(s.file, config=s.config, tokenizer=False)
    assert loaded.tokenizer is None and getattr(loaded, "tokenizer_2", None) is None
    assert_same_weights(s.pipe, loaded)


def test_sdxl_second_tokenizer_only(saved, tmp_path):
    s = saved("sdxl")
    loaded = load_single_file(s.file, config=without_tokenizers(s.config, tmp_path), tokenizer=False,
                              tokenizer_2=tokenizer_dir())
    assert loaded.tokenizer is None and loaded.tokenizer_2 is not None


def test_missing_tokenizer_says_how_to_provide_it(saved, tmp_path):
    s = saved("sdxl")
    with pytest.raises(MissingTokenizerError) as exc:
        load_single_file(s.file, config=without_tokenizers(s.config, tmp_path))
    msg = str(exc.value)
    for part in ("SDXL text encoder 1", "`tokenizer`", "LYCO_TOKENIZER_PATH",
                 "huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0 --include 'tokenizer/*'",
                 "tokenizer=False"):
        assert part in msg, part
    with pytest.raises(MissingTokenizerError) as exc:
        resolve_tokenizer("sdxl", 2)
    msg = str(exc.value)
    assert "tokenizer_2" in msg and "LYCO_TOKENIZER_2_PATH" in msg and "--include 'tokenizer_2/*'" in msg
    with pytest.raises(MissingTokenizerError, match="stabilityai/stable-diffusion-2-1 --include 'tokenizer/"):
        resolve_tokenizer("sd2")


def test_tokenizer_sources(monkeypatch, tmp_path):
    tok = object()
    assert resolve_tokenizer("sd1", 1, tok) is tok
    assert resolve_tokenizer("sd1", 1, False) is None
    assert resolve_tokenizer("sd1", 1, tokenizer_dir()).model_max_length == 16
    monkeypatch.setenv("LYCO_TOKENIZER_2_PATH", tokenizer_dir())
    assert resolve_tokenizer("sdxl", 2) is not None
    monkeypatch.setenv("LYCO_TOKENIZER_PATH", str(tmp_path))
    with pytest.raises(MissingTokenizerError, match="LYCO_TOKENIZER_PATH"):
        resolve_tokenizer("sd1")


def test_tokenizer_from_hf_cache(monkeypatch, tmp_path):
    """A repo in the local Hugging Face cache is found without network; plain CLIP repos get the model's pad."""
    cache = tmp_path / "hub"
    repo = cache / "models--openai--clip-vit-large-patch14"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tokenizer_dir(), snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_tokenizer("sd1").pad_token == "<|endoftext|>"
    assert resolve_tokenizer("sd2").pad_token == "!"  # SD2's OpenCLIP tokenizer pads with "!"


# ------------------------------------------------------------------------------------------- saving details
def test_save_refuses_to_overwrite(saved, tmp_path):
    s = saved("sd1")
    with pytest.raises(FileFormatError, match="already exists"):
        save_single_file(s.pipe, s.file)
    target = tmp_path / "copy.safetensors"
    target.write_bytes(b"old")
    save_single_file(s.pipe, target, dtype=torch.float16, overwrite=True)
    assert load_file(target)["model.diffusion_model.out.2.weight"].dtype == torch.float16
    with pytest.raises(FileFormatError, match="safetensors only"):
        save_single_file(s.pipe, tmp_path / "model.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["copy.safetensors"]  # no temporary files left


def test_save_dtype_and_metadata(saved, tmp_path):
    s = saved("sdxl")
    out = save_single_file(s.pipe, tmp_path / "half.safetensors", dtype="fp16", metadata={"note": "hi"})
    sd = load_file(out)
    floats = {v.dtype for v in sd.values() if v.is_floating_point()}
    assert floats == {torch.float16}
    assert sd["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["note"] == "hi" and meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    with pytest.raises(FileFormatError, match="strings"):
        save_single_file(s.pipe, tmp_path / "bad.safetensors", metadata={"steps": 3})


def test_to_ldm_refuses_unknown_parameters():
    pipe = make_pipeline("sd1")
    pipe.unet.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(FileFormatError, match="'extra'.*adapter"):
        to_ldm_state_dict(pipe, "sd1")


def test_v_prediction_round_trip(saved, tmp_path):
    root = tmp_path
    v = Saved("sd2", root, prediction_type="v_prediction")
    sd = load_file(v.file)
    assert "v_pred" in sd
    eps_config = saved("sd2").config
    assert load_single_file(v.file, config=eps_config, tokenizer=False).scheduler.config.prediction_type == \
        "v_prediction"
    forced = load_single_file(v.file, config=eps_config, tokenizer=False, prediction_type="epsilon")
    assert forced.scheduler.config.prediction_type == "epsilon"


def test_prediction_type_resolution(caplog):
    assert resolve_prediction_type("sd2", "v", None) == "v_prediction"
    assert resolve_prediction_type("sd2", None, ("epsilon", "global_step 875000")) == "epsilon"
    assert resolve_prediction_type("sd2", None, None, "epsilon") == "epsilon"
    assert resolve_prediction_type("sd1", None, None) == "epsilon"
    with caplog.at_level(logging.WARNING, logger="lyco"):
        assert resolve_prediction_type("sd2", None, None, source="x.safetensors") == "v_prediction"
    assert "assuming 768 v-prediction" in caplog.text
    assert shipped_config_dir("sd2", "v_prediction").name == "sd21-v"
    assert shipped_config_dir("sd2", "epsilon").name == "sd21-base"
