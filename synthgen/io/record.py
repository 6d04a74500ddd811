"""Provenance records: the JSON written beside every output.

A record says what made a file (generator, synthgen version), with which
parameters and seed, and from which inputs (by SHA-256, never by identifying
tags), so the output can be regenerated and is never mistaken for a real scan.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from synthgen._version import __version__
from synthgen.errors import InputError
from synthgen.files.atomic import write_text
from synthgen.files.jsonfile import read_json


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


@dataclasses.dataclass(frozen=True)
class InputRef:
    """An input file, by name and content hash only (never by an identifying tag)."""

    name: str
    sha256: str

    @classmethod
    def of(cls, path: str | os.PathLike) -> InputRef:
        return cls(name=Path(path).name, sha256=sha256_file(path))


#: The keys of every record, in the order they are written.
RECORD_KEYS = ("synthetic", "generator", "synthgen_version", "created_utc", "seed", "parameters", "inputs",
               "outputs", "details")


@dataclasses.dataclass(frozen=True)
class Record:
    """The provenance of one output: the same schema for every writer.

    ``generator`` names what made it (``"synthgen.drr"``, ``"synthgen.generate"``...);
    ``parameters`` are the settings a rerun needs; ``inputs`` the input files (and model
    weights) by hash; ``details`` what the run produced or measured (lesions, warnings,
    seconds, per-view geometry); ``outputs`` the file names written.
    """

    generator: str
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int | None = None
    inputs: tuple[InputRef, ...] = ()
    outputs: tuple[str, ...] = ()
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    synthetic: bool = True
    synthgen_version: str = __version__
    created_utc: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def create(cls, generator: str, *, parameters: Mapping[str, Any] | None = None, seed: int | None = None,
               inputs: Iterable[str | os.PathLike | InputRef] = (), outputs: Iterable[str | os.PathLike] = (),
               details: Mapping[str, Any] | None = None, synthetic: bool = True) -> Record:
        """A record of a run now; ``inputs`` given as paths are hashed here."""
        return cls(generator=generator, parameters=_jsonable(dict(parameters or {})),
                   seed=None if seed is None else int(seed), inputs=_input_refs(inputs),
                   outputs=tuple(Path(o).name for o in outputs), details=_jsonable(dict(details or {})),
                   synthetic=bool(synthetic))

    def with_outputs(self, outputs: Iterable[str | os.PathLike]) -> Record:
        """This record naming ``outputs`` (file or folder names) as what was written."""
        return dataclasses.replace(self, outputs=tuple(Path(o).name for o in outputs))

    def with_inputs(self, inputs: Iterable[str | os.PathLike | InputRef]) -> Record:
        """This record with ``inputs`` (paths are hashed here) added after its own."""
        return dataclasses.replace(self, inputs=self.inputs + _input_refs(inputs))

    def with_details(self, **details: Any) -> Record:
        return dataclasses.replace(self, details={**self.details, **_jsonable(details)})

    def with_parameters(self, **parameters: Any) -> Record:
        return dataclasses.replace(self, parameters={**self.parameters, **_jsonable(parameters)})

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in RECORD_KEYS}
        d["inputs"] = [dataclasses.asdict(i) for i in self.inputs]
        d["outputs"] = list(self.outputs)
        return _jsonable(d)

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "record") -> Record:
        """The record in ``d`` (as `to_dict` writes it); `InputError` naming what is wrong otherwise."""
        if not isinstance(d, Mapping):
            raise InputError(f"{source}: a provenance record must be a JSON object, got {type(d).__name__}")
        missing = [k for k in RECORD_KEYS if k not in d]
        extra = sorted(set(d) - set(RECORD_KEYS))
        if missing or extra:
            raise InputError(f"{source}: not a synthgen provenance record"
                             + (f" (missing {', '.join(missing)})" if missing else "")
                             + (f" (unknown keys {', '.join(extra)})" if extra else ""))
        try:
            inputs = tuple(InputRef(name=str(i["name"]), sha256=str(i["sha256"])) for i in d["inputs"])
        except (TypeError, KeyError) as e:
            raise InputError(f"{source}: inputs must be a list of {{name, sha256}} objects") from e
        if not isinstance(d["parameters"], Mapping) or not isinstance(d["details"], Mapping):
            raise InputError(f"{source}: parameters and details must be JSON objects")
        return cls(generator=str(d["generator"]), parameters=dict(d["parameters"]), seed=d["seed"], inputs=inputs,
                   outputs=tuple(str(o) for o in d["outputs"]), details=dict(d["details"]),
                   synthetic=bool(d["synthetic"]), synthgen_version=str(d["synthgen_version"]),
                   created_utc=str(d["created_utc"]))

    def write(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        return write_json(self.to_dict(), path, overwrite=overwrite)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Record:
        return cls.from_dict(read_json(path, what="a synthgen provenance record"), source=str(path))


def make_record(
    generator: str,
    *,
    parameters: Mapping[str, Any] | None = None,
    seed: int | None = None,
    inputs: Iterable[str | os.PathLike] = (),
    outputs: Iterable[str | os.PathLike] = (),
    synthetic: bool = True,
) -> dict[str, Any]:
    """Transitional: `Record.create(...).to_dict()` without ``details``. Writers move to `Record`."""
    d = Record.create(generator, parameters=parameters, seed=seed, inputs=inputs, outputs=outputs,
                      synthetic=synthetic).to_dict()
    del d["details"]
    return d


def write_json(doc: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Any JSON document (numpy values, paths and tuples converted), written atomically."""
    return write_text(path, json.dumps(_jsonable(doc), indent=2, sort_keys=False) + "\n", overwrite=overwrite)


def write_record(record: Record | Mapping[str, Any], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a `Record` (or, transitional, a plain mapping) as JSON."""
    if isinstance(record, Record):
        return record.write(path, overwrite=overwrite)
    return write_json(dict(record), path, overwrite=overwrite)


def _input_refs(inputs: Iterable[str | os.PathLike | InputRef]) -> tuple[InputRef, ...]:
    return tuple(i if isinstance(i, InputRef) else InputRef.of(i) for i in inputs)


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
