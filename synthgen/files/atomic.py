"""Atomic, non-clobbering writes: a temp file beside the target, then a rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from synthgen.errors import OverwriteError
from synthgen.files.safepath import check_parent


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, *, folder: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give the result the mode a plain write would."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def check_writable(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse to replace an existing path unless ``overwrite`` is true, or one whose parent is a file.

    Creates nothing: the writers (`atomic_path`) make the parent folder when they write.
    """

    p = check_parent(path)
    if p.is_dir():
        raise OverwriteError(f"{p}: is a folder; expected a file path")
    if p.exists() and not overwrite:
        raise OverwriteError(f"{p}: already exists; refusing to overwrite it (pass overwrite=True / --overwrite)")
    return p


#: Every temporary entry synthgen creates ends in this, never in an image extension, so a
#: loader listing ``*.nii.gz`` never picks up the leftovers of a killed run.
TMP_SUFFIX = ".tmp"


def _tmp_name(p: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=TMP_SUFFIX, dir=p.parent)
    os.close(fd)
    return Path(name)


def is_temp_of(entry: Path, target: Path) -> bool:
    """True when ``entry`` is a temporary file or folder synthgen's writers made for ``target``."""
    return entry.name.startswith(f".{target.name}.") and entry.name.endswith(TMP_SUFFIX)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary entries a killed synthgen run left in ``folder``; returns what it removed."""
    removed = []
    d = Path(folder)
    if not d.is_dir():
        return removed
    for entry in d.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and not entry.is_symlink():
            remove_entry(entry)
            removed.append(entry)
    return removed


def remove_entry(entry: Path) -> None:
    """Remove a file or a folder tree, quietly if it is already gone."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``.

    The temporary name is ``.<name>.<random>.tmp``: it never ends in an image
    extension, so writers must not pick their format from it (pass the format,
    or write to an open file). On any error it is removed and the target is untouched.
    """
    p = check_writable(path, overwrite=overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(p)
    try:
        yield tmp
        _publish_mode(tmp, folder=False)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, *, overwrite: bool = False, owned: Callable[[str], bool] | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it becomes ``path``.

    An existing empty folder is replaced silently; a non-empty one only with
    ``overwrite``. Without ``owned`` the whole folder is synthgen's (a model folder)
    and its old contents are removed after the new folder is in place. With
    ``owned`` (a test on entry names, e.g. a DICOM series' ``IM00001.dcm``), only the
    old entries it accepts are removed and the new files are moved in one by one:
    the user's other files and sub-folders stay as they were.
    """

    p = check_parent(path)
    if p.exists() and not p.is_dir():
        raise OverwriteError(f"{p}: exists and is not a folder")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise OverwriteError(f"{p}: folder is not empty; refusing to write into it (pass overwrite=True / --overwrite)")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=TMP_SUFFIX, dir=p.parent))
    try:
        yield tmp
        _publish_mode(tmp, folder=True)
        for f in tmp.rglob("*"):
            if f.is_file():
                _publish_mode(f, folder=False)
        if p.exists() and owned is not None:
            _merge_into(tmp, p, owned)
        elif p.exists():
            old = p.with_name(f".{p.name}.old-{os.getpid()}{TMP_SUFFIX}")
            os.replace(p, old)
            os.replace(tmp, p)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _merge_into(tmp: Path, p: Path, owned: Callable[[str], bool]) -> None:
    """Replace ``p``'s entries that ``owned`` accepts by ``tmp``'s files; leave every other entry."""
    new = {f.name for f in tmp.iterdir()}
    clash = sorted(n for n in new if (p / n).exists() and not owned(n))
    if clash:
        raise OverwriteError(f"{p / clash[0]}: exists and was not written by synthgen; refusing to replace it")
    for entry in p.iterdir():
        if owned(entry.name) and entry.name not in new and entry.is_file() and not entry.is_symlink():
            entry.unlink()
    for name in sorted(new):
        os.replace(tmp / name, p / name)
    tmp.rmdir()


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write a text file atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def named_staging(tmp: Path, name: str) -> Iterator[Path]:
    """For writers that pick their format from the file name: yield ``<stage>/<name>``.

    ``<stage>`` is a hidden folder beside ``tmp`` whose own name ends in `TMP_SUFFIX`;
    on success the written file becomes ``tmp`` (and `atomic_path` then renames it
    onto its target); the folder is always removed.
    """
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=tmp.parent))
    try:
        yield stage / name
        os.replace(stage / name, tmp)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
