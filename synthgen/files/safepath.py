"""Names that become file names, and writes that must stay inside their output root.

Every name that comes from data or from the user and becomes part of a path
(a class name, a view name, a file stem, a case id, a recipe step) goes through
`safe_name` once, at the boundary where it enters. Every folder a job writes
into goes through `inside` against the job's output root, so neither ``..``
nor a symlinked sub-folder can carry a write out of it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from synthgen.errors import InputError

#: A safe name: starts with a letter or digit, then letters, digits, ``_``, ``-`` and ``.``,
#: at most 128 characters, never ``..``; no separators, spaces, or control characters.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def safe_name(name: object, *, what: str = "name") -> str:
    """Return ``name`` if it can be used as one path component, else raise `InputError`.

    Args:
        name: the candidate (a class name, view, stem, case id, step name...).
        what: what it is, for the message (``"class name"``, ``"--stem"``).
    """
    text = str(name)
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(text) or ".." in text:
        raise InputError(
            f"{what} {text!r} cannot be used in a file name: use letters, digits, '_', '-' and '.' "
            "(starting with a letter or digit, no '..', at most 128 characters)"
        )
    return text


def inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Return ``path`` if it resolves inside ``root`` through no symlinked folder, else raise `InputError`.

    ``root`` itself may be (or sit under) a symlink the user chose; below it, every
    existing component of ``path`` must be a real folder (or, for the last one, a
    real file), so a symlinked ``imagesTr`` is refused rather than followed.
    """
    root_p = Path(root)
    p = Path(path)
    root_abs = Path(os.path.abspath(root_p))
    abs_p = Path(os.path.abspath(p))
    try:
        rel = abs_p.relative_to(root_abs)
    except ValueError:
        raise InputError(f"{p}: would be written outside the output folder {root_p}") from None
    if any(part == ".." for part in rel.parts):
        raise InputError(f"{p}: would be written outside the output folder {root_p}")
    cur = root_abs
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            raise InputError(f"{cur}: is a symbolic link inside the output folder {root_p}; "
                             "refusing to write through it (replace it with a real folder)")
    return p


def check_parent(path: str | os.PathLike) -> Path:
    """Raise `InputError` when some existing ancestor of ``path`` is a file, not a folder."""
    p = Path(os.path.abspath(Path(path)))
    for parent in reversed(p.parents):
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{path}: cannot write here: {parent} is a file, not a folder")
    return Path(path)
