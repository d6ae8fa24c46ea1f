"""Where the tools write: checked before any work, never over an input, never half-written.

Every tool (``merge``, ``extract``, ``resize``, ``convert``, ``generate``) calls :func:`check_output` first:

* an output that *is* an input (same real path after resolving symlinks, or the same file through a hard link),
  lies inside an input folder as an existing file, or is a folder that contains an input, is refused even with
  ``--overwrite``;
* an existing output is refused unless ``overwrite`` is given;
* a file output that names an existing folder (or a folder output that names a file) gets a message saying
  what to pass instead.

Files are written atomically by their writers (temporary file + rename); folder outputs are built in a hidden
temporary folder next to the target by :func:`staged_folder` and renamed into place only when complete, so a
failed run leaves nothing behind (and a replaced folder is swapped only after the new one is whole).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from ..errors import ConfigError
from ..io.atomic import atomic_dir

__all__ = ["check_output", "staged_folder"]


def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(p))))


def _same(a: Path, b: Path) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def _inside(child: Path, folder: Path) -> bool:
    c, f = _real(child), _real(folder)
    return c != f and f in c.parents


def _local_inputs(inputs: Iterable[str | os.PathLike | None]) -> list[Path]:
    out = []
    for i in inputs:
        if i is None or str(i).startswith("builtin:"):
            continue
        out.append(Path(os.path.expanduser(os.fspath(i))))
    return out


def _files_under(folder: Path) -> Iterator[Path]:
    for root, _, files in os.walk(folder):
        for f in files:
            yield Path(root) / f


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *,
                 overwrite: bool = False, folder: bool = False, flag: str = "-o",
                 suggest: str = "output.safetensors") -> Path:
    """Validate a tool's output path before any work (see the module docstring).  Returns it as a Path."""
    out = Path(os.path.expanduser(os.fspath(output)))
    for i in _local_inputs(inputs):
        if _same(out, i) or (i.is_dir() and _inside(out, i) and out.exists()):
            what = "is" if _same(out, i) else "is a file inside"
            raise ConfigError(f"{flag} {out} {what} the input {i}; lyco never writes over its inputs (not even with "
                              "--overwrite): choose another output path")
        if folder and out.is_dir() and (_inside(i, out)
                                        or (i.is_file() and any(_same(i, f) for f in _files_under(out)))):
            raise ConfigError(f"{flag} {out} holds the input {i}; replacing that folder would delete the input: "
                              "choose another output folder")
    if out.is_dir() and not folder:
        raise ConfigError(f"{flag} {out} is a folder; give the output file's path instead, e.g. "
                          f"{out / suggest}")
    if out.exists() and folder and not out.is_dir():
        raise ConfigError(f"{flag} {out} is a file, but this output is a folder; choose another path")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it, or choose another output path "
                          "(lyco never replaces an existing file unless asked)")
    return out


def staged_folder(output: str | os.PathLike) -> AbstractContextManager[Path]:
    """Yield a temporary folder next to ``output``; on success it replaces ``output``, on failure it is removed.

    :func:`lyco.io.atomic.atomic_dir` with ``replace=True``: the folder and its contents get normal permissions
    (like ``mkdir`` / ``open`` under the umask); an existing ``output`` (already allowed by :func:`check_output`) is
    moved aside first and deleted only once the new folder is in place.
    """
    return atomic_dir(output, replace=True)
