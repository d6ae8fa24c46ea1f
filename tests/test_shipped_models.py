"""Every shipped model loads identically under every dependency version lyco declares.

``builtin:tiny`` (tokenizer, text encoder, UNet, VAE, a 3-step generation), the tiny CLIP / DINOv2 / VGG-19
backbones and the world classifier are loaded through lyco's own loaders; their weights (an order- and
name-independent hash of every parameter) must equal, and their outputs on fixed inputs match, the reference
numbers in tests/data/shipped_models.json, written in the main environment with

    python tests/test_shipped_models.py --write

The same test runs in the minimum-versions environment (``make test-min``): a model that loads with missing or
unexpected keys fails the loader, one that loads other numbers fails here.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

import lyco

REFERENCE = Path(__file__).parent / "data" / "shipped_models.json"
DATA = Path(lyco.__file__).parent / "data"
PROMPTS = ["a red circle on a beach", "a small teal star, pixel style"]


def weights_hash(module: torch.nn.Module) -> dict:
    """sha256 over the sorted per-parameter digests (fp32 bytes): equal iff the same numbers were loaded."""
    digests = sorted(hashlib.sha256(p.detach().float().contiguous().numpy().tobytes()).hexdigest()
                     for p in module.parameters())
    dtypes = sorted({str(p.dtype) for p in module.parameters()})
    return {"sha256": hashlib.sha256("".join(digests).encode()).hexdigest(), "n": len(digests), "dtypes": dtypes}


def fixed(*shape: int, scale: float = 1.0, phase: float = 0.0) -> torch.Tensor:
    """A deterministic input that does not depend on any random generator's version."""
    n = math.prod(shape)
    return (torch.sin(torch.arange(n, dtype=torch.float64) * 0.7371 + phase) * scale).float().reshape(shape)


def summary(t: torch.Tensor) -> dict:
    x = t.detach().double().flatten()
    idx = torch.linspace(0, x.numel() - 1, 12).round().long()
    return {"shape": list(t.shape), "sum": float(x.sum()), "abs": float(x.abs().sum()), "at": x[idx].tolist()}


def images(n: int = 2, size: int = 32) -> list:
    from PIL import Image
    out = []
    for i in range(n):
        a = (fixed(size, size, 3, phase=i) * 0.5 + 0.5) * 255
        out.append(Image.fromarray(a.clamp(0, 255).round().to(torch.uint8).numpy(), "RGB"))
    return out


def measure_tiny() -> dict:
    import lyco.sd
    pipe = lyco.sd.load_pipeline("builtin:tiny")
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        cond = pipe.text_encoder(ids)[0]
        lat = fixed(2, 4, 8, 8)
        eps = pipe.unet(lat, torch.tensor([500, 20]), encoder_hidden_states=cond).sample
        dec = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    from diffusers import DDIMScheduler
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(PROMPTS[0], num_inference_steps=3, guidance_scale=4.0, latents=fixed(1, 4, 8, 8),
               output_type="np").images
    out = {f"tiny.{n}": weights_hash(getattr(pipe, n)) for n in ("text_encoder", "unet", "vae")}
    out["tiny.outputs"] = {"token_ids": ids.tolist(), "text_encoder": summary(cond), "unet": summary(eps),
                           "vae_decode": summary(dec), "generate": summary(torch.from_numpy(np.asarray(img)))}
    return out


def measure_backbones() -> dict:
    from lyco.eval import backbones as B
    from lyco.world.checks import load_classifier
    out: dict = {}
    clip, dino, vgg = B.load_clip("builtin"), B.load_dino("builtin"), B.load_vgg("builtin")
    for name, bb in (("clip", clip), ("dino", dino), ("vgg", vgg)):
        batch = torch.stack([bb.preprocess(im) for im in images()])
        out[f"{name}"] = weights_hash(bb.model)
        out[f"{name}.outputs"] = {"image": summary(bb.encode_image(batch))}
    out["clip.outputs"]["text"] = summary(clip.encode_text(PROMPTS))
    net = load_classifier()
    with torch.no_grad():
        logits = net(fixed(2, 3, 32, 32))
    out["classifier"] = weights_hash(net)
    out["classifier.outputs"] = {k: summary(v) for k, v in sorted(logits.items())}
    return out


@cache
def measured() -> dict:
    torch.manual_seed(0)
    return {**measure_tiny(), **measure_backbones()}


@cache
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def close(a, b, path: str = "") -> list[str]:
    """Differences between two measurement trees (numbers: |a-b| <= 1e-4 + 2e-3·|b|; ints and strings exact)."""
    if isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in
                (close(a.get(k), b.get(k), f"{path}.{k}") if k in a and k in b else [f"{path}.{k}: missing"])]
    if isinstance(b, list):
        if not isinstance(a, list) or len(a) != len(b):
            return [f"{path}: {a!r} != {b!r}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in close(x, y, f"{path}[{i}]")]
    if isinstance(b, float):
        return [] if abs(a - b) <= 1e-4 + 2e-3 * abs(b) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


MODELS = ["tiny.text_encoder", "tiny.unet", "tiny.vae", "clip", "dino", "vgg", "classifier"]


@pytest.mark.parametrize("name", MODELS)
def test_same_weights_as_the_reference(name):
    got, ref = measured()[name], reference()[name]
    assert got["n"] == ref["n"] and got["sha256"] == ref["sha256"], f"{name} loaded other weights than the reference"
    assert got["dtypes"] == ["torch.float32"]


@pytest.mark.parametrize("name", ["tiny", "clip", "dino", "vgg", "classifier"])
def test_same_outputs_as_the_reference(name):
    diffs = close(measured()[f"{name}.outputs"], reference()[f"{name}.outputs"], name)
    assert not diffs, f"{len(diffs)} numbers differ from the reference: {diffs[:5]}"


def test_text_encoder_files_are_portable():
    """Stored in the layout transformers 4.x and 5.x both read: prefixed keys, string merges, preprocessor file."""
    from safetensors import safe_open
    with safe_open(str(DATA / "tiny" / "text_encoder" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())
    for folder in (DATA / "tiny" / "tokenizer", DATA / "backbones" / "clip"):
        merges = json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]
        assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    assert (DATA / "backbones" / "clip" / "preprocessor_config.json").is_file()



# ------------------------------------------------------------------------------------------------------------
# a checkpoint that would leave weights randomly initialised is an error, never a warning


def _copy_with(tmp_path, src: Path, weights: str, edit) -> Path:
    """A copy of ``src`` whose ``weights`` file (relative path) went through ``edit(tensors) -> tensors``."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    with safe_open(str(dst / weights), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(edit(tensors), str(dst / weights), metadata=meta)
    return dst


def _drop(key):
    return lambda t: {k: v for k, v in t.items() if k != key}


@pytest.mark.parametrize("weights,key", [("text_encoder/model.safetensors", "text_model.final_layer_norm.weight"),
                                         ("unet/diffusion_pytorch_model.safetensors", "conv_in.weight")])
def test_pipeline_with_a_missing_weight_is_an_error(tmp_path, weights, key):
    import lyco.sd
    folder = _copy_with(tmp_path, DATA / "tiny", weights, _drop(key))
    with pytest.raises(lyco.FileFormatError) as e:
        lyco.sd.load_pipeline(folder)
    assert key.removeprefix("text_model.") in str(e.value)


def test_text_encoder_in_the_flat_layout(tmp_path):
    """transformers 5 writes CLIPTextModel keys without ``text_model.``; 4.x would load them RANDOMLY: an error."""
    import transformers

    import lyco.sd
    flat = _copy_with(tmp_path, DATA / "tiny", "text_encoder/model.safetensors",
                      lambda t: {k.removeprefix("text_model."): v for k, v in t.items()})
    if int(transformers.__version__.split(".")[0]) >= 5:
        pipe = lyco.sd.load_pipeline(flat)
        assert weights_hash(pipe.text_encoder) == reference()["tiny.text_encoder"]
        return
    with pytest.raises(lyco.FileFormatError, match="randomly initialised") as e:
        lyco.sd.load_pipeline(flat)
    assert "36 weights missing" in str(e.value) and "text_model.embeddings.position_embedding.weight" in str(e.value)


@pytest.mark.parametrize("loader", ["eval", "world"])
def test_backbone_with_a_missing_weight_is_an_error(tmp_path, loader):
    from lyco.eval import backbones as EB
    from lyco.world import backbones as WB
    folder = _copy_with(tmp_path, DATA / "backbones" / "clip", "model.safetensors",
                        _drop("vision_model.post_layernorm.weight"))
    with pytest.raises(lyco.FileFormatError, match="randomly initialised.*post_layernorm.weight"):
        (EB.load_clip if loader == "eval" else WB.load_clip)(str(folder))


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_shipped_models.py --write   (in the main environment)")
    REFERENCE.write_text(json.dumps(measured(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")
