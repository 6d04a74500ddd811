"""``synthetic_manifest.jsonl``: one line per synthetic item of an expansion, its provenance.

A line says which plan item made the files (index, name, class, generator, seed and the
parameters a rerun needs, ``plan_seed`` among them), from what (``host`` case and ``inputs``: the
host files' or the model weights' hashes), what was written (``outputs``: paths relative to the
expanded folder and their SHA-256) and the lesion as inserted. `expand` writes the lines (the
journal holds the same lines plus the item's fingerprint); `evaluate` and the report read them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

from synthgen.errors import InputError
from synthgen.expand.documents import from_json

MANIFEST = "synthetic_manifest.jsonl"


@dataclasses.dataclass(frozen=True)
class ItemLesion:
    """The inserted lesion as the manifest keeps it (a subset of `synthgen.lesions.insert.LesionRecord`)."""

    type: str
    organ: str
    phase: str
    center_mm: tuple[float, float, float]
    diameter_mm: float
    volume_ml: float
    mean_hu: float

    @classmethod
    def of(cls, record: dict[str, Any]) -> ItemLesion:
        """The manifest's fields of a lesion engine record (``dataclasses.asdict(LesionRecord)``)."""
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class ItemOutputs:
    """An item's files, relative to the expanded folder, and their SHA-256."""

    image: str
    label: str
    image_sha256: str
    label_sha256: str


@dataclasses.dataclass(frozen=True)
class ManifestLine:
    """One synthetic item (key ``class`` holds `class_name`)."""

    index: int
    name: str
    class_name: str
    generator: str
    generator_version: str
    seed: int
    parameters: dict[str, Any]
    host: str | None  # the host case's id; None for a whole new case
    inputs: dict[str, Any]
    outputs: ItemOutputs
    lesion: ItemLesion
    synthetic: bool = True

    JSON_KEYS: ClassVar[dict[str, str]] = {"class_name": "class"}

    def to_dict(self) -> dict[str, Any]:
        """The line's JSON object (keys sorted when written, as the journal and manifest write them)."""
        d = dataclasses.asdict(self)
        d["class"] = d.pop("class_name")
        return d

    @classmethod
    def from_dict(cls, d: Any, *, source: str = MANIFEST) -> ManifestLine:
        return from_json(cls, d, source=source)


def format_lines(lines: list[ManifestLine]) -> str:
    """The manifest's text: one JSON object per line, keys sorted."""
    return "".join(json.dumps(line.to_dict(), sort_keys=True) + "\n" for line in lines)


def read_manifest(root: str | Path) -> list[ManifestLine]:
    """The lines of ``root/synthetic_manifest.jsonl``; `InputError` naming the file and line of a bad one."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise InputError(f"{Path(root)}: no {MANIFEST}; run `synthgen expand` first")
    out = []
    for k, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}, line {k}: not valid JSON ({e.msg})") from None
        out.append(ManifestLine.from_dict(d, source=f"{path}, line {k}"))
    return out
