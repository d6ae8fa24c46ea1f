"""lyco.io.atomic: one atomic-write helper for the package.  New files get the permissions of a plain open() (umask
applied), a failed write leaves the old file intact and no temporary file behind, folders publish in one rename."""
from __future__ import annotations

import os
import stat
import sys

import pytest
import torch

from lyco.errors import FileFormatError
from lyco.io import atomic
from lyco.io.atomic import atomic_dir, atomic_open, atomic_path, publish_dir, write_atomic
from lyco.io.files import read_file, write_file

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    old = os.umask(0o022)

    def set_(mask: int) -> None:
        os.umask(mask)
    yield set_
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _write_with_path(p):
    with atomic_path(p) as tmp:
        tmp.write_bytes(b"x")


def _write_with_open(p):
    with atomic_open(p, "w") as f:
        f.write("x")


def _write_adapter(p):
    write_file(p, {"a.lora_down.weight": torch.ones(2, 3)}, {"ss_network_dim": "2"})


def _write_single_file(p):
    from lyco.sd import save_single_file
    from sd_tiny import make_pipeline
    save_single_file(make_pipeline("sd1", with_tokenizer=False), p)


def _write_results_csv(p):
    from lyco.eval.rank import Row
    from lyco.eval.report import write_csv
    write_csv([Row("c", "k", "s", "base", "image_similarity", "dino", "letterbox", "train", 0.5)], p)


def _write_feature(p):
    import numpy as np

    from lyco.eval.features import FeatureCache
    cache = FeatureCache(p.parent)
    cache.put("bb", "resize", "ab" * 32, np.ones(3, np.float32))
    os.replace(cache.path("bb", "resize", "ab" * 32), p)


WRITERS = {"write_atomic": lambda p: write_atomic(p, b"x"), "atomic_path": _write_with_path,
           "atomic_open": _write_with_open, "io.files.write_file": _write_adapter,
           "sd.save_single_file": _write_single_file, "eval.report.write_csv": _write_results_csv,
           "eval.features.FeatureCache": _write_feature}


@posix_only
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
@pytest.mark.parametrize("writer", WRITERS)
def test_new_files_get_open_permissions(tmp_path, umask, mask, expected, writer):
    umask(mask)
    target = tmp_path / "sub" / "out.safetensors"
    WRITERS[writer](target)
    assert _mode(target) == expected
    leftovers = [f for _, _, files in os.walk(target.parent) for f in files if f != "out.safetensors"]
    assert leftovers == []


@posix_only
@pytest.mark.parametrize("mask, expected", [(0o022, 0o755), (0o077, 0o700)])
def test_published_folders_get_mkdir_permissions(tmp_path, umask, mask, expected):
    umask(mask)
    with atomic_dir(tmp_path / "ds") as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "w.safetensors").write_bytes(b"x")
        os.chmod(tmp / "sub" / "w.safetensors", 0o600)       # as safetensors' save_file leaves its files
    assert _mode(tmp_path / "ds") == expected and _mode(tmp_path / "ds" / "sub") == expected
    assert _mode(tmp_path / "ds" / "a.txt") == _mode(tmp_path / "ds" / "sub" / "w.safetensors") == expected & 0o666
    assert (tmp_path / "ds" / "a.txt").read_text() == "a"
    assert os.listdir(tmp_path) == ["ds"]


class Boom(Exception):
    pass


def _fail_in_path(p):
    with atomic_path(p) as tmp:
        tmp.write_bytes(b"partial")
        raise Boom


def _fail_in_open(p):
    with atomic_open(p, "wb") as f:
        f.write(b"partial")
        raise Boom


def _interrupt_in_open(p):
    with atomic_open(p, "wb") as f:
        f.write(b"partial")
        raise KeyboardInterrupt


@pytest.mark.parametrize("fail, error", [(_fail_in_path, Boom), (_fail_in_open, Boom),
                                         (_interrupt_in_open, KeyboardInterrupt)])
def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path, fail, error):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(error):
        fail(target)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_failed_rename_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_refused_adapter_write_touches_nothing(tmp_path):
    target = tmp_path / "a.safetensors"
    _write_adapter(target)
    before = target.read_bytes()
    with pytest.raises(FileFormatError, match="NaN or Inf"):
        write_file(target, {"a.lora_down.weight": torch.full((2, 3), float("nan"))}, {})
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["a.safetensors"]
    tensors, meta = read_file(target)
    assert torch.equal(tensors["a.lora_down.weight"], torch.ones(2, 3)) and meta == {"ss_network_dim": "2"}


def test_replaces_existing_file_and_text_is_utf8(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")
    write_atomic(target, "Ünïcode ✓")
    assert target.read_bytes() == "Ünïcode ✓".encode()
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        with atomic_open(target, "a"):
            pass


@pytest.mark.parametrize("durable, expected_syncs", [(True, 2), (False, 0)])
def test_durable_fsyncs_file_and_folder(tmp_path, monkeypatch, durable, expected_syncs):
    calls = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    write_atomic(tmp_path / "f", b"x", durable=durable)
    assert len(calls) == expected_syncs


def test_folder_publication_never_merges(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "theirs.txt").write_text("theirs")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_dir(tmp_path / "ds") as tmp:
            (tmp / "mine.txt").write_text("mine")
    assert os.listdir(tmp_path / "ds") == ["theirs.txt"] and os.listdir(tmp_path) == ["ds"]
    with pytest.raises(Boom):
        with atomic_dir(tmp_path / "other") as tmp:
            (tmp / "half.txt").write_text("half")
            raise Boom
    assert os.listdir(tmp_path) == ["ds"]
    done = tmp_path / "done"
    done.mkdir()
    (done / "x").write_text("x")
    with pytest.raises(FileExistsError):
        publish_dir(done, tmp_path / "ds")
    assert publish_dir(done, tmp_path / "new") == tmp_path / "new" and (tmp_path / "new" / "x").is_file()


def test_folder_replace_swaps_whole_folders_only(tmp_path, monkeypatch):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "old.txt").write_text("old")
    with atomic_dir(tmp_path / "ds", replace=True) as tmp:      # an overwrite the user asked for
        (tmp / "new.txt").write_text("new")
    assert os.listdir(tmp_path / "ds") == ["new.txt"] and os.listdir(tmp_path) == ["ds"]
    with pytest.raises(Boom):                                   # a failed writer: the old folder stays as it was
        with atomic_dir(tmp_path / "ds", replace=True) as tmp:
            (tmp / "half.txt").write_text("half")
            raise Boom
    assert os.listdir(tmp_path / "ds") == ["new.txt"] and os.listdir(tmp_path) == ["ds"]
    real_rename = os.rename

    def failing_rename(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(atomic.os, "rename", failing_rename)     # the swap itself fails: the old folder comes back
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(tmp_path / "ds", replace=True) as tmp:
            (tmp / "third.txt").write_text("3")
    monkeypatch.setattr(atomic.os, "rename", real_rename)
    assert os.listdir(tmp_path / "ds") == ["new.txt"] and os.listdir(tmp_path) == ["ds"]


def test_file_without_replace_never_replaces(tmp_path):
    target = tmp_path / "a.png"
    with atomic_path(target, replace=False) as tmp:
        tmp.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        with atomic_path(target, replace=False) as tmp:
            tmp.write_bytes(b"second")
    assert target.read_bytes() == b"first" and os.listdir(tmp_path) == ["a.png"]
