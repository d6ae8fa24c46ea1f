"""Atomic file and folder writes: a reader sees the old content or the complete new one, never a torn file.

Every file lyco writes goes through here::

    with atomic_path(out) as tmp:                 # a fresh temporary path next to ``out``
        save_file(tensors, tmp)                   # any writer that takes a file name
    with atomic_open(out, "w") as f:              # or a file object
        f.write(text)
    write_atomic(out, blob)                       # bytes or str in one call
    with atomic_dir(folder) as tmp:               # a whole folder, published by one rename
        pipe.save_pretrained(tmp)

The temporary file lives in the target's folder (so the final rename never crosses file systems), is flushed and
fsynced, renamed over the target, and the folder is fsynced so the rename itself survives a crash.  If the writer
fails (an exception, Ctrl-C) the temporary file is removed and the old target is untouched.  New files get the
permissions a plain ``open()`` would give them (0o666 minus the umask, e.g. 0644), not the 0600 of ``mkstemp`` or
of safetensors' ``save_file``; published folders get ``mkdir()``'s (e.g. 0755), and so does everything in them.

``durable=False`` skips the fsyncs (the write stays atomic, not crash-durable): for caches whose entries are cheap to
rebuild and written by the thousand.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: permissions requested for new files and folders; the process umask is applied by the OS, as for ``open()``
FILE_MODE = 0o666
DIR_MODE = 0o777


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def _reserve(target: Path) -> Path:
    """Create an empty temporary file next to ``target`` (exclusively, with umask-honouring permissions)."""
    for _ in range(100):
        tmp = _temp_name(target)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file next to {target}")


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file's data to disk (read-only files too, where the OS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            return
        finally:
            os.close(fd)
    except OSError:                 # Windows flushes only through a writable handle
        pass
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames and new entries in the folder ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, durable: bool = True, replace: bool = True) -> Iterator[Path]:
    """A temporary path next to ``target`` for any writer that takes a file name; it becomes ``target`` when the
    block ends without an exception (the parent folders are created).

    ``replace=False`` never replaces a file: the finished file is hard-linked to ``target`` and
    :class:`FileExistsError` is raised (the temporary file removed) when ``target`` exists by then."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve(target)
    try:
        mode = stat.S_IMODE(os.stat(tmp).st_mode)       # what open() gives under the current umask
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # some writers (safetensors' save_file) make 0600 files
            os.chmod(tmp, mode)
        if durable:
            fsync_file(tmp)
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)           # fails if target exists: nothing is replaced
            os.unlink(tmp)
    except BaseException:
        _remove(tmp)
        raise
    if durable:
        fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "wb", *, durable: bool = True,
                encoding: str | None = None, newline: str | None = None) -> Iterator[IO[Any]]:
    """``open(target, mode)`` for writing, atomically: the content replaces ``target`` only when the block ends
    without an exception.  ``mode`` is ``"w"`` or ``"wb"``; text mode defaults to UTF-8."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(target, durable=False) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
    if durable:
        fsync_dir(Path(target).parent)


def write_atomic(target: str | os.PathLike[str], data: bytes | str, *, durable: bool = True,
                 encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text encoded with ``encoding``) to ``target`` atomically; returns the path."""
    blob = data.encode(encoding) if isinstance(data, str) else data
    with atomic_open(target, "wb", durable=durable) as f:
        f.write(blob)
    return Path(target)


def fsync_tree(folder: str | os.PathLike[str]) -> None:
    """fsync every file and folder under ``folder`` (before publishing it with a rename)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                fsync_file(p)
        for name in dirs:
            fsync_dir(os.path.join(root, name))
    fsync_dir(folder)


def _probe_modes(folder: Path) -> tuple[int, int]:
    """(file mode, folder mode) that ``open()`` / ``mkdir()`` give in ``folder`` under the current umask."""
    probe = _reserve(folder / "mode-probe")
    try:
        file_mode = stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.unlink(probe)
    probe_dir = _temp_name(folder / "mode-probe")
    os.mkdir(probe_dir, DIR_MODE)
    try:
        dir_mode = stat.S_IMODE(os.stat(probe_dir).st_mode)
    finally:
        os.rmdir(probe_dir)
    return file_mode, dir_mode


def normal_permissions(folder: str | os.PathLike[str]) -> None:
    """Give every file and folder under ``folder`` (and ``folder``) the permissions a plain ``open()`` /
    ``mkdir()`` would (umask applied); for trees written by libraries that create 0600 files."""
    folder = Path(folder)
    file_mode, dir_mode = _probe_modes(folder.parent)
    for root, dirs, files in os.walk(folder):
        for name, mode in [(d, dir_mode) for d in dirs] + [(f, file_mode) for f in files]:
            p = os.path.join(root, name)
            if not os.path.islink(p) and stat.S_IMODE(os.stat(p).st_mode) != mode:
                os.chmod(p, mode)
    if stat.S_IMODE(os.stat(folder).st_mode) != dir_mode:
        os.chmod(folder, dir_mode)


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace ``target`` (a file or folder) by the folder ``tmp``: the old one is moved aside first, put back if
    the rename fails, and deleted only once the new folder is in place."""
    aside = _temp_name(target.with_name(target.name + ".old"))
    os.replace(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _remove(aside)


def publish_dir(tmp: str | os.PathLike[str], target: str | os.PathLike[str], *, durable: bool = True,
                replace: bool = False) -> Path:
    """Rename the finished folder ``tmp`` to ``target`` in one step (same parent folder), after giving its
    contents normal permissions (:func:`normal_permissions`).

    Raises :class:`FileExistsError` when ``target`` already exists (a folder is never merged into or silently
    replaced); ``tmp`` is then left for the caller to remove or keep.  ``replace=True`` (an overwrite the user
    asked for) swaps an existing ``target`` out instead, deleting it only once the new folder is in place.
    """
    tmp, target = Path(tmp), Path(target)
    normal_permissions(tmp)
    if durable:
        fsync_tree(tmp)
    if replace and (target.exists() or target.is_symlink()):
        _swap_in(tmp, target)
        if durable:
            fsync_dir(target.parent)
        return target
    if target.exists() or target.is_symlink():
        raise FileExistsError(f"{target} already exists")
    try:
        os.rename(tmp, target)
    except OSError as exc:                 # created meanwhile by someone else (ENOTEMPTY / EEXIST)
        if target.exists():
            raise FileExistsError(f"{target} already exists") from exc
        raise
    if durable:
        fsync_dir(target.parent)
    return target


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, durable: bool = True, replace: bool = False) -> Iterator[Path]:
    """A fresh temporary folder next to ``target`` (umask-honouring permissions); when the block ends without an
    exception it is published as ``target`` by :func:`publish_dir` (``replace``: see there).  On an exception, or
    when ``target`` appeared meanwhile (:class:`FileExistsError`), the temporary folder is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = _temp_name(target)
        try:
            os.mkdir(tmp, DIR_MODE)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"cannot create a temporary folder next to {target}")
    try:
        yield tmp
        publish_dir(tmp, target, durable=durable, replace=replace)
    except BaseException:
        _remove(tmp)
        raise
