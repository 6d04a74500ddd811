"""Atomic, non-clobbering writes: a temp file beside the target, then a rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from synthgen.errors import OverwriteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, *, folder: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give the result the mode a plain write would."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def check_writable(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse to replace an existing path unless ``overwrite`` is true; create the parent folder."""
    p = Path(path)
    if p.is_dir():
        raise OverwriteError(f"{p}: is a folder; expected a file path")
    if p.exists() and not overwrite:
        raise OverwriteError(f"{p}: already exists; refusing to overwrite it (pass overwrite=True / --overwrite)")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _tmp_name(p: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + suffix, dir=p.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False, keep_suffix: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``.

    The temporary name keeps the target's suffixes (``.nii.gz``...) when
    ``keep_suffix`` so writers that pick a format from the extension still work.
    On any error the temporary file is removed and the target is untouched.
    """
    p = check_writable(path, overwrite=overwrite)
    suffix = "".join(p.suffixes) if keep_suffix else ""
    tmp = _tmp_name(p, suffix)
    try:
        yield tmp
        _publish_mode(tmp, folder=False)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it becomes ``path``.

    An existing empty folder is replaced silently; a non-empty one only with
    ``overwrite`` (its old contents are then removed after the new folder is in place).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OverwriteError(f"{p}: exists and is not a folder")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise OverwriteError(f"{p}: folder is not empty; refusing to write into it (pass overwrite=True / --overwrite)")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent))
    try:
        yield tmp
        _publish_mode(tmp, folder=True)
        for f in tmp.rglob("*"):
            if f.is_file():
                _publish_mode(f, folder=False)
        if p.exists():
            old = p.with_name(f".{p.name}.old-{os.getpid()}")
            os.replace(p, old)
            os.replace(tmp, p)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write a text file atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
