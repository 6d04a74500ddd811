"""External test sets of `synthgen evaluate` (``--test OTHER``): a user's real held-out cases.

A test set is read by the same readers as the dataset (`read_dataset`: any layout; synthetic
``synth_*`` cases left out) and is never trained or validated on. Its classes are matched to the
dataset's by name, not by label value, so a test set may number its labels differently; it must
name exactly the dataset's classes (segmentation: as declared; classification: as its rows use
them), else one `InputError` line says which class is missing or unknown. A test case that is
one of the dataset's own files (the same path, a hard link, or the same bytes) stops the
evaluation: it would be tested on what was trained on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from synthgen.errors import InputError
from synthgen.expand.dataset import Dataset, read_dataset
from synthgen.expand.evaluation import INTERNAL
from synthgen.io.record import sha256_file


def names_of_test_sets(paths: Sequence[str | Path]) -> list[str]:
    """A short name per test set: its folder or file name (without the suffix), made unique."""
    names: list[str] = []
    for p in paths:
        path = Path(p)
        base = path.name if path.is_dir() else path.stem
        name, k = base or str(path), 2
        while name in names or name == INTERNAL:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def check_classes(test: Dataset, ds: Dataset, *, where: str) -> None:
    """`InputError` unless ``test`` is ``ds``'s task with the same class names."""
    if test.task != ds.task:
        raise InputError(f"{where}: a {test.task} dataset, but {ds.root} is a {ds.task} dataset")
    have, want = test.class_names, ds.class_names
    missing = [n for n in want if n not in have]
    if missing:
        raise InputError(f"{where}: lacks class {missing[0]!r} of the dataset (its classes: {', '.join(have)}); "
                         "a test set must name the dataset's classes")
    extra = [n for n in have if n not in want]
    if extra:
        raise InputError(f"{where}: class {extra[0]!r} is not a class of the dataset (classes: {', '.join(want)}); "
                         "a test set must name the dataset's classes")


def _files(ds: Dataset) -> list[Path]:
    return [p for it in ds.items for p in (it.image, it.label) if p is not None]


def check_disjoint(test: Dataset, ds: Dataset, *, where: str) -> None:
    """`InputError` if a file of ``test`` is a file of ``ds`` (same path, hard link, or same bytes:
    only files of equal size are hashed)."""
    mine = _files(ds)
    by_size: dict[int, list[Path]] = {}
    for p in mine:
        by_size.setdefault(p.stat().st_size, []).append(p)
    digests: dict[Path, str] = {}

    def digest(p: Path) -> str:
        if p not in digests:
            digests[p] = sha256_file(p)
        return digests[p]

    for it in test.items:
        for p in (q for q in (it.image, it.label) if q is not None):
            for other in by_size.get(p.stat().st_size, []):
                if os.path.samefile(p, other) or digest(p) == digest(other):
                    raise InputError(f"{where}: case {it.id} ({p.name}) is also a file of the dataset ({other}); "
                                     "a test set must hold cases the dataset does not")


def read_test_sets(paths: Sequence[str | Path], ds: Dataset, *,
                   log: Callable[[str], None] | None = None) -> list[tuple[str, Dataset]]:
    """Each ``--test`` dataset, read and checked against ``ds`` (module doc), with its name; the
    items a reader left out (`Dataset.problems`) are said through ``log``."""
    out = []
    for name, p in zip(names_of_test_sets(paths), paths):
        where = f"--test {p}"
        try:
            test = read_dataset(p)
        except InputError as e:  # one line: the reader's first and last (a dataset with no usable item)
            lines = str(e).splitlines()
            raise InputError(f"{where}: " + "; ".join(dict.fromkeys([lines[0], lines[-1]]))) from None
        if test.problems and log is not None:
            log(f"{where}: " + test.summary())
        check_classes(test, ds, where=where)
        check_disjoint(test, ds, where=where)
        out.append((name, test))
    return out
