"""``builtin:`` ids resolve in one place (lyco.builtin): shipped folders, and errors that say what is wrong."""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from lyco import builtin
from lyco.errors import LycoError


@pytest.mark.parametrize("name, kind, marker", [
    ("builtin:tiny", "model", "model_index.json"),
    ("builtin:clip", "clip", "model.safetensors"),
    ("builtin:dino", "dino", "model.safetensors"),
    ("builtin:vgg", "vgg", "model.safetensors"),
])
def test_shipped_ids_resolve_to_package_data(name, kind, marker):
    folder = builtin.resolve(name, kind)
    assert (folder / marker).is_file()
    assert folder.is_relative_to(builtin.DATA_DIR)
    assert builtin.folders(kind) == {name: folder}


@pytest.mark.parametrize("name, kind, error, message", [
    ("builtin:tinyy", "model", builtin.ModelNotFoundError,
     r"unknown built-in model 'builtin:tinyy' \(did you mean 'tiny'\?\); built-ins: builtin:tiny"),
    ("builtin:clip", "model", builtin.ModelNotFoundError, "'builtin:clip' is a clip backbone, not a model"),
    ("builtin:tiny", "vgg", builtin.BackboneNotFoundError, "'builtin:tiny' is a model, not a vgg backbone"),
    ("builtin:clap", "clip", builtin.BackboneNotFoundError, r"did you mean 'clip'\?"),
    ("models/sd15", "model", builtin.ModelNotFoundError, "'models/sd15' is not a builtin: id"),
])
def test_bad_ids_name_the_problem(name, kind, error, message):
    with pytest.raises(error, match=message) as info:
        builtin.resolve(name, kind)
    assert isinstance(info.value, LycoError) and isinstance(info.value, FileNotFoundError)


def test_missing_files_say_how_to_rebuild(monkeypatch, tmp_path):
    fake = builtin.Builtin("tiny", "model", tmp_path / "tiny", "model_index.json", "run scripts/pretrain_tiny.py")
    monkeypatch.setattr(builtin, "BUILTINS", MappingProxyType({"tiny": fake}))
    with pytest.raises(builtin.ModelNotFoundError, match="missing its files at .*tiny; run scripts/pretrain_tiny.py"):
        builtin.resolve("builtin:tiny")


@pytest.mark.parametrize("name, expected", [
    ("builtin:tiny", True), (Path("builtin:tiny"), True), ("models/builtin:tiny", False), ("", False), (None, False),
])
def test_is_builtin(name, expected):
    assert builtin.is_builtin(name) is expected


def test_sd_loader_uses_the_same_resolution():
    from lyco.sd.pipelines import resolve_model_path
    assert resolve_model_path("builtin:tiny") == builtin.resolve("builtin:tiny")
    with pytest.raises(builtin.ModelNotFoundError, match="did you mean 'tiny'"):
        resolve_model_path("builtin:tiny2")
