"""``lyco generate``: several adapters with their strengths, seeds per image, A1111 parameters in the PNGs,
A1111 numbering that never replaces an image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import lyco.sd
from lyco.cli import main
from lyco.errors import ConfigError
from lyco.generate import (
    AdapterSpec,
    Settings,
    infotext,
    parse_adapter,
    parse_parameters,
    parse_size,
    quote,
    sampler_name,
)
from lyco.io.files import data_section_sha256


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    pipe = lyco.sd.load_pipeline("builtin:tiny", tokenizer=False)
    out = []
    for i, name in enumerate(("olis", "style")):
        net = lyco.sd.attach(pipe, algo="lora", dim=2, seed=i)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        net.save(d / f"{name}.safetensors")
        net.detach()
        out.append(d / f"{name}.safetensors")
    return out


@pytest.mark.parametrize("text, spec", [
    ("a.safetensors", AdapterSpec("a.safetensors")),
    ("a.safetensors:0.8", AdapterSpec("a.safetensors", 0.8)),
    ("a.safetensors:0.8:0.5", AdapterSpec("a.safetensors", 0.8, 0.5)),
    ("a.safetensors:-1", AdapterSpec("a.safetensors", -1.0)),
    ("C:/loras/a.safetensors:0.5", AdapterSpec("C:/loras/a.safetensors", 0.5)),
    ("C:\\loras\\a.safetensors", AdapterSpec("C:\\loras\\a.safetensors")),
    ("dir:x/a.safetensors:0.5", AdapterSpec("dir:x/a.safetensors", 0.5)),
])
def test_parse_adapter(text, spec):
    assert parse_adapter(text) == spec


def test_parse_size_and_sampler():
    assert parse_size("512") == (512, 512) and parse_size("512x768") == (512, 768)
    for bad in ("513", "512x", "big"):
        with pytest.raises(ConfigError, match="--size"):
            parse_size(bad)
    assert sampler_name("Euler a") == "euler_a" and sampler_name("DPM++ 2M") == "dpm++2m"
    assert sampler_name("ddim") == "ddim" and sampler_name("PLMS") == "pndm"
    with pytest.raises(ConfigError, match="did you mean 'euler'"):
        sampler_name("eulr")


def test_parameters_are_written_and_read_as_a1111_does():
    s = Settings(prompt="olis creature, on a field", negative="blurry, lowres", steps=20, cfg=7.0, sampler="euler_a",
                 adapters=[AdapterSpec("x/olis.safetensors", 0.8), AdapterSpec("y/style.safetensors", 0.3, 0.5)])
    text = infotext(s, 1234, (512, 768), {"name": "v1-5-pruned", "hash": "6ce0161689"},
                    {"olis": "aaaaaaaaaaaa", "style": "bbbbbbbbbbbb"})
    assert text.splitlines() == [
        "olis creature, on a field <lora:olis:0.8> <lora:style:te=0.5:unet=0.3>",
        "Negative prompt: blurry, lowres",
        'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, '
        'Model: v1-5-pruned, Lora hashes: "olis: aaaaaaaaaaaa, style: bbbbbbbbbbbb"']
    p = parse_parameters(text)
    assert p["Prompt"].startswith("olis creature, on a field") and p["Negative prompt"] == "blurry, lowres"
    assert (p["Steps"], p["Sampler"], p["CFG scale"], p["Seed"]) == ("20", "Euler a", "7", "1234")
    assert (p["Size-1"], p["Size-2"], p["Model hash"]) == ("512", "768", "6ce0161689")
    assert p["Lora hashes"] == "olis: aaaaaaaaaaaa, style: bbbbbbbbbbbb"
    assert quote("builtin:tiny") == '"builtin:tiny"' and quote("plain") == "plain"
    no_negative = infotext(Settings(prompt="a"), 1, (32, 32), {"name": "m"}, {})
    assert no_negative == "a\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, Size: 32x32, Model: m"


def _params(path):
    raw = path.read_bytes()
    assert b"tEXtparameters\x00" in raw  # a tEXt chunk keyed 'parameters', as A1111 writes it
    return parse_parameters(Image.open(path).text["parameters"])


def test_generate_end_to_end(adapters, tmp_path, capsys):
    a, b = adapters
    out = tmp_path / "imgs"
    argv = ["generate", "builtin:tiny", "olis creature, blue background", "--adapter", f"{a}:0.8",
            "--adapter", f"{b}:0.3:0.5", "--negative", "red", "--seed", "1234", "--steps", "3", "--cfg", "5",
            "--sampler", "Euler a", "-n", "3", "--batch-size", "2", "-o", str(out)]
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00000-1234.png", "00001-1235.png", "00002-1236.png"]
    p = _params(out / "00001-1235.png")
    assert p["Prompt"] == "olis creature, blue background <lora:olis:0.8> <lora:style:te=0.5:unet=0.3>"
    assert p["Negative prompt"] == "red"
    assert (p["Steps"], p["Sampler"], p["CFG scale"], p["Seed"], p["Size-1"], p["Size-2"], p["Model"]) == \
        ("3", "Euler a", "5", "1235", "32", "32", "builtin:tiny")
    assert p["Lora hashes"] == f"olis: {data_section_sha256(a)[:12]}, style: {data_section_sha256(b)[:12]}"

    # image k depends on seed + k only (not on the batch), and a second run never replaces an image
    first = {n: np.asarray(Image.open(out / n)) for n in names}
    assert main(argv[:-6] + ["-n", "1", "--seed", "1235", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == names + ["00003-1235.png"]
    alone = np.asarray(Image.open(out / "00003-1235.png")).astype(int)
    assert np.abs(alone - first["00001-1235.png"].astype(int)).max() <= 2
    assert all(np.array_equal(np.asarray(Image.open(out / n)), img) for n, img in first.items())


def test_adapter_strengths_are_those_of_lyco_sd_load(adapters, tmp_path):
    """The PNG equals what the Python API draws with the same adapters, strengths, sampler and seed."""
    from diffusers import EulerDiscreteScheduler
    a, b = adapters
    assert main(["generate", "builtin:tiny", "olis creature", "--adapter", f"{a}:0.7:0.2", "--adapter", str(b),
                 "--te-multiplier", "0", "--seed", "7", "--steps", "2", "--sampler", "euler", "-o", str(tmp_path)]) == 0
    pipe = lyco.sd.load_pipeline("builtin:tiny")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    na = lyco.sd.load(pipe, a, multiplier=0.7)
    na.set_multiplier(0.2, prefix="lora_te")
    nb = lyco.sd.load(pipe, b, te_multiplier=0.0)
    with torch.no_grad():
        ref = pipe("olis creature", num_inference_steps=2, guidance_scale=7.0, height=32, width=32,
                   generator=[torch.Generator().manual_seed(7)], output_type="np").images[0]
    nb.detach()
    na.detach()
    got = np.asarray(Image.open(tmp_path / "00000-7.png")).astype(float) / 255
    assert np.abs(got - ref).max() <= 1.5 / 255
    assert "<lora:olis:te=0.2:unet=0.7> <lora:style:te=0:unet=1>" in _params(tmp_path / "00000-7.png")["Prompt"]


def test_generate_errors(adapters, tmp_path, capsys):
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    assert main(["generate", "builtin:tiny", "x", "-o", str(f), "--steps", "1"]) == 1
    assert "is a file" in capsys.readouterr().err
    assert main(["generate", "builtin:tiny", "x", "--adapter", "nope.safetensors:0.5"]) == 1
    assert "nope.safetensors" in capsys.readouterr().err
    assert f.read_bytes() == b"x"


def test_png_files_are_whole_and_have_normal_permissions(tmp_path):
    import os

    from lyco.generate import save_png
    img = Image.new("RGB", (8, 8))
    (tmp_path / "00000-5.png").write_bytes(b"keep")
    old = os.umask(0o022)
    try:
        p = save_png(img, tmp_path, 0, 5, "a\nSteps: 1, Sampler: DDIM, Seed: 5")
    finally:
        os.umask(old)
    assert p.name == "00001-5.png" and (tmp_path / "00000-5.png").read_bytes() == b"keep"
    assert p.stat().st_mode & 0o777 == 0o644
    assert sorted(q.name for q in tmp_path.iterdir()) == ["00000-5.png", "00001-5.png"]  # no temporary left
