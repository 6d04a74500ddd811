"""The expander's JSON files read back into the dataclasses that wrote them.

Every document the expander writes (``analysis.json``, ``synthgen_expand.json``, the lines of
``synthetic_manifest.jsonl``, ``evaluation.json``) is a dataclass whose ``to_dict`` writes the
file; `from_json` reads it back by the dataclass's own field types, so the writer and every
reader share one definition. A malformed or old file is one `InputError` naming the file, where
in it, and what is missing or wrong; nothing downstream guesses with ``.get(key, "?")``.

Rules of the reading: a key may be absent only when its field has a default; a key that is not
a field is an error unless the class lists it in ``DERIVED_KEYS`` (values its ``to_dict``
computes, such as a plan item's ``name``); ``JSON_KEYS`` maps a field to another key (a
manifest line's ``class``). Lists become tuples where the field is a tuple; numbers are kept as
written (an ``int`` is a valid ``float``), so a file read and written again is the same file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from synthgen.errors import InputError
from synthgen.files.jsonfile import read_json

T = TypeVar("T")


class _Malformed(Exception):
    """Where in a document (``arms.real.per_seed[0]``) and what is wrong; `from_json` adds the file."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}" if where else what)


def from_json(cls: type[T], data: Any, *, source: str) -> T:
    """``data`` (parsed JSON) as an instance of the dataclass ``cls``; `InputError` naming ``source``
    (the file) and the first problem otherwise."""
    try:
        return _build(cls, data, "")
    except _Malformed as e:
        raise InputError(f"{source}: {e}") from None


class Document:
    """A dataclass written as one JSON document: `from_dict` and `read` build it back by its field
    types (`from_json`). A subclass names itself: ``class Plan(Document, source="plan", what="a
    plan")``; ``source`` names the document in errors of `from_dict`, ``what`` says what file
    `read` expected."""

    SOURCE: ClassVar[str]
    WHAT: ClassVar[str]

    def __init_subclass__(cls, *, source: str, what: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.SOURCE, cls.WHAT = source, what

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: Any, *, source: str | None = None) -> T:  # noqa: PYI019
        """The document in ``d`` (as `to_dict` writes it); `InputError` naming ``source`` and what is wrong."""
        return from_json(cls, d, source=source or cls.SOURCE)  # type: ignore[attr-defined]

    @classmethod
    def read(cls: type[T], path: str | os.PathLike) -> T:  # noqa: PYI019
        return cls.from_dict(read_json(path, what=cls.WHAT), source=str(path))  # type: ignore[attr-defined]


def dump(doc: Mapping[str, Any]) -> str:
    """A document as the expander writes it: one-space indent, keys in the writer's order."""
    return json.dumps(doc, indent=1) + "\n"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _build(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type hint ``tp`` and built into it."""
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _build(inner, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _Malformed(where, f"expected a list, got {_kind(value)}")
        if origin is tuple and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Malformed(where, f"expected {len(args)} values, got {len(value)}")
            return tuple(_build(a, v, f"{where}[{k}]") for k, (a, v) in enumerate(zip(args, value)))
        items = [_build(args[0], v, f"{where}[{k}]") for k, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _Malformed(where, f"expected an object, got {_kind(value)}")
        return {k: _build(args[1], v, f"{where}.{k}" if where else k) for k, v in value.items()}
    return _scalar(tp, value, where)


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {bool: isinstance(value, bool), str: isinstance(value, str), float: number,
          int: number and isinstance(value, int)}[tp]
    if not ok:
        raise _Malformed(where, f"expected {_EXPECTED[tp]}, got {_kind(value)}")
    return value


_EXPECTED = {bool: "true/false", str: "a string", int: "an integer", float: "a number"}


def _build_dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise _Malformed(where, f"expected an object, got {_kind(value)}")
    hints = typing.get_type_hints(cls)
    keys = getattr(cls, "JSON_KEYS", {})
    fields = [f for f in dataclasses.fields(cls) if f.init]
    missing = [keys.get(f.name, f.name) for f in fields if keys.get(f.name, f.name) not in value
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _Malformed(where, f"missing {', '.join(missing)}")
    known = {keys.get(f.name, f.name) for f in fields} | set(getattr(cls, "DERIVED_KEYS", ()))
    unknown = [k for k in value if k not in known]
    if unknown:
        raise _Malformed(where, f"unknown key(s) {', '.join(map(str, unknown))}")
    kwargs = {}
    for f in fields:
        key = keys.get(f.name, f.name)
        if key in value:
            kwargs[f.name] = _build(hints[f.name], value[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except InputError as e:  # the class's own checks (a config's ranges)
        raise _Malformed(where, str(e)) from None
