"""Provenance records: the JSON written beside every output.

A record says what made a file (generator, synthgen version), with which
parameters and seed, and from which inputs (by SHA-256, never by identifying
tags), so the output can be regenerated and is never mistaken for a real scan.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from synthgen._version import __version__
from synthgen.files.atomic import write_text


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, or of every file in a folder (sorted by name) for a DICOM series."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def make_record(
    generator: str,
    *,
    parameters: Mapping[str, Any] | None = None,
    seed: int | None = None,
    inputs: Iterable[str | os.PathLike] = (),
    outputs: Iterable[str | os.PathLike] = (),
    synthetic: bool = True,
) -> dict[str, Any]:
    """A provenance record (plain JSON-able dict). Inputs are identified by hash and file name only."""

    return {
        "synthetic": synthetic,
        "generator": generator,
        "synthgen_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "parameters": _jsonable(dict(parameters or {})),
        "inputs": [{"name": Path(p).name, "sha256": sha256_file(p)} for p in inputs],
        "outputs": [Path(p).name for p in outputs],
    }


def write_record(record: Mapping[str, Any], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    return write_text(path, json.dumps(_jsonable(dict(record)), indent=2, sort_keys=False) + "\n", overwrite=overwrite)


def _jsonable(x: Any) -> Any:
    """Convert numpy scalars/arrays, paths and tuples into JSON types."""
    import numpy as np

    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x
