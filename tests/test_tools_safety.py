"""The tools never lose a file: no overwriting of inputs, no silent replacing of outputs, no half-written outputs."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

import lyco
import lyco.sd
from lyco.cli import main

TOOLS = ("resize", "merge", "merge-adapter", "extract", "convert")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    lora = d / "plain.safetensors"
    lyco.attach(nn.Sequential(nn.Linear(8, 8)), algo="lora", dim=4, seed=0).save(lora)
    pipe = lyco.sd.load_pipeline("builtin:tiny", tokenizer=False)
    net = lyco.sd.attach(pipe, algo="lora", dim=2, preset="attn-only", seed=0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    sd_lora = d / "tiny_lora.safetensors"
    net.save(sd_lora)
    net.detach()
    return {"lora": lora, "sd": sd_lora}


def argv(tool: str, files: dict, out) -> list[str]:
    """A valid command line of ``tool`` writing to ``out``."""
    return {
        "resize": ["resize", str(files["lora"]), "-o", str(out), "--rank", "2"],
        "merge": ["merge", "builtin:tiny", str(files["sd"]), "-o", str(out)],
        "merge-adapter": ["merge", "builtin:tiny", str(files["sd"]), "--adapter", "-o", str(out)],
        "extract": ["extract", "builtin:tiny", str(files["sd"]), "-o", str(out)],
        "convert": ["convert", str(files["sd"]), "-o", str(out), "--to", "ui-safe"],
    }[tool]


def input_of(tool: str, files: dict):
    return files["lora"] if tool == "resize" else files["sd"]


@pytest.mark.parametrize("tool", TOOLS)
def test_existing_output_is_refused_without_overwrite(tool, files, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    assert main(argv(tool, files, out)) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "relative"])
@pytest.mark.parametrize("tool", TOOLS)
def test_input_is_never_written_over_even_with_overwrite(tool, how, files, tmp_path, capsys, monkeypatch):
    src = input_of(tool, files)
    before = src.read_bytes()
    if how == "same":
        out = src
    elif how == "symlink":
        out = tmp_path / "link.safetensors"
        out.symlink_to(src)
    elif how == "hardlink":
        out = tmp_path / "hard.safetensors"
        os.link(src, out)
    else:
        monkeypatch.chdir(src.parent)
        out = os.path.join("..", src.parent.name, src.name)
    assert main(argv(tool, files, out) + ["--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "input" in err and "never writes over its inputs" in err
    assert src.read_bytes() == before


@pytest.mark.parametrize("tool", TOOLS)
def test_output_naming_a_folder_gets_a_message(tool, files, tmp_path, capsys):
    d = tmp_path / "outdir"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    code = main(argv(tool, files, d))
    err = capsys.readouterr().err
    if tool == "merge":  # a folder output is a diffusers folder: it exists, so it needs --overwrite
        assert code == 1 and "already exists" in err
    else:
        assert code == 1 and "is a folder" in err and str(d / "") in err
    assert "Traceback" not in err
    assert (d / "keep.txt").read_text() == "x"


def test_resize_overwrite_replaces_the_output(files, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    assert main(argv("resize", files, out) + ["--overwrite"]) == 0
    tensors, _ = lyco.io.files.read_file(out)
    assert tensors["lycoris_0.lora_down.weight"].shape[0] == 2


def test_merge_folder_output_holding_an_input_is_refused(files, tmp_path, capsys):
    d = tmp_path / "models"
    d.mkdir()
    adapter = d / "a.safetensors"
    adapter.write_bytes(files["sd"].read_bytes())
    assert main(["merge", "builtin:tiny", str(adapter), "-o", str(d), "--overwrite"]) == 1
    assert "holds the input" in capsys.readouterr().err
    assert adapter.read_bytes() == files["sd"].read_bytes()


def test_resize_rank_zero_is_an_error(files, tmp_path, capsys):
    assert main(["resize", str(files["lora"]), "-o", str(tmp_path / "o.safetensors"), "--rank", "0"]) == 1
    assert "--rank 0" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


# ------------------------------------------------------------------------------------- failed runs write nothing
def _listing(d):
    return sorted(p.name for p in d.iterdir())


def test_failed_folder_merge_leaves_nothing_and_keeps_the_old_output(files, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from lyco.tools.merge import merge_into_checkpoint

    def broken(self, path, **kw):
        os.makedirs(os.path.join(path, "unet"), exist_ok=True)
        open(os.path.join(path, "unet", "half.bin"), "wb").write(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(StableDiffusionPipeline, "save_pretrained", broken)
    out = tmp_path / "merged"
    with pytest.raises(OSError):
        merge_into_checkpoint("builtin:tiny", [(str(files["sd"]), 1.0)], str(out))
    assert _listing(tmp_path) == []
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OSError):
        merge_into_checkpoint("builtin:tiny", [(str(files["sd"]), 1.0)], str(out), overwrite=True)
    assert _listing(tmp_path) == ["merged"] and (out / "old.txt").read_text() == "old"


def test_failed_single_file_merge_leaves_nothing(files, tmp_path, monkeypatch):
    from lyco.sd import single_file
    from lyco.tools.merge import merge_into_checkpoint

    def broken(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(single_file, "save_file", broken)
    with pytest.raises(OSError):
        merge_into_checkpoint("builtin:tiny", [(str(files["sd"]), 1.0)], str(tmp_path / "m.safetensors"))
    assert _listing(tmp_path) == []


def test_failed_peft_conversion_leaves_nothing(files, tmp_path, monkeypatch, capsys):
    from lyco.tools import convert

    calls = []
    real = convert.write_file

    def broken(path, tensors, meta):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(path, tensors, meta)

    monkeypatch.setattr(convert, "write_file", broken)
    out = tmp_path / "peft"
    with pytest.raises(OSError):
        main(["convert", str(files["sd"]), "-o", str(out), "--to", "peft", "--base", "builtin:tiny"])
    assert len(calls) == 2 and _listing(tmp_path) == []


def test_staged_folder_has_normal_permissions(tmp_path):
    from lyco.tools.outputs import staged_folder
    old = os.umask(0o022)
    try:
        with staged_folder(tmp_path / "x") as d:
            (d / "f").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o755
