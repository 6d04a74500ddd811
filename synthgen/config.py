"""Typed configs: a dataclass per job, merged with YAML files and ``key=value`` overrides.

omegaconf does the merge at the edge (the CLI); the library only ever sees
plain dataclass instances. Unknown keys and wrong types are errors, never
warnings, so a saved config cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from synthgen.errors import InputError
from synthgen.files.atomic import write_text

T = TypeVar("T")

#: The default configs and recipes as installed: ``configs/`` and ``pipelines/`` here are links to the
#: repository's top-level folders, which setuptools copies through into the wheel.
SHIPPED_DIR = Path(__file__).resolve().parent / "_shipped"
SHIPPED_FOLDERS = ("configs", "pipelines")


def shipped_path(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists; else, for ``configs/NAME`` or ``pipelines/NAME``, the copy shipped
    with synthgen, so the shipped recipes and ``--config configs/NAME.yaml`` work from any folder.

    Any other missing path comes back as given, for the caller to report.
    """
    p = Path(path)
    if p.exists() or p.is_absolute() or len(p.parts) != 2 or p.parts[0] not in SHIPPED_FOLDERS:
        return p
    shipped = SHIPPED_DIR / p
    return shipped if shipped.is_file() else p


def load_config(
    schema: type[T],
    *,
    paths: Sequence[str | os.PathLike] = (),
    overrides: Sequence[str] = (),
) -> T:
    """Build ``schema`` from its defaults, then YAML files in order, then ``key=value`` overrides.

    Later files override earlier ones, so a size variant is a small file merged
    over its base (``--config configs/phantom.yaml --config configs/phantom_small.yaml``).

    Files and overrides are data: an interpolation resolver in them (``${oc.env:SECRET}``,
    any ``${name:...}``) is refused (`refuse_resolvers`); ``${other.key}`` references work.

    Raises:
        InputError: unreadable or invalid YAML (with its line), a file that is not a mapping,
            a resolver, unknown keys, values of the wrong type, or overrides not of the form
            ``key=value``.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise InputError(f"config override must look like key=value, got {item!r}")
    where = "defaults"
    try:
        cfg = OmegaConf.structured(schema)
        for path in paths:
            where = str(path)
            p = shipped_path(path)  # configs/NAME.yaml: the shipped default when not in this folder
            if not p.is_file():
                raise InputError(f"{p}: config file not found")
            cfg = OmegaConf.merge(cfg, _load_user_yaml(p))
        if overrides:
            where = "command-line overrides"
            dotlist = OmegaConf.from_dotlist(list(overrides))
            refuse_resolvers(OmegaConf.to_container(dotlist, resolve=False), where=where)
            cfg = OmegaConf.merge(cfg, dotlist)
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise InputError(f"{where}: invalid config for {schema.__name__}: {msg}") from e
    except (OSError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{where}: cannot read config: {str(e).splitlines()[0]}") from e


def read_text(path: str | os.PathLike) -> str:
    """A user's YAML file as text; binary data or an unreadable file is one `InputError` line."""
    p = Path(path)
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a YAML text file (not UTF-8 text: binary data, or an image?)") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e.strerror or e}") from None


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a user's YAML file (safe loader); any failure is one `InputError` line naming the
    file and the YAML line and column: binary data, a syntax error, a ``!!python`` tag."""
    import yaml

    text = read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_nodes(node, {}, set()) > MAX_YAML_NODES:
            raise InputError(f"{path}: YAML aliases expand to more than {MAX_YAML_NODES} values; "
                             "write the values out (or use fewer aliases)")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"{path}: {yaml_error_message(e)}") from None


#: Most values a user's YAML file may expand to through its aliases (a "billion laughs" file
#: of a few lines would expand to 10^9 and exhaust the memory).
MAX_YAML_NODES = 100_000


def _expanded_nodes(node, counts: dict, active: set) -> float:
    """How many nodes ``node`` becomes once its aliases are expanded, counted without expanding
    them (shared nodes are counted once per use from a memo); a recursive alias counts as infinite."""
    key = id(node)
    if key in counts:
        return counts[key]
    if key in active:
        return float("inf")
    active.add(key)
    children = node.value if isinstance(node.value, list) else []
    total = 1.0
    for child in children:
        for part in child if isinstance(child, tuple) else (child,):
            total += _expanded_nodes(part, counts, active)
            if total > MAX_YAML_NODES:
                break
    active.discard(key)
    counts[key] = total
    return total


def yaml_error_message(e: Exception) -> str:
    """``"invalid YAML at line 3, column 7: found duplicate key seed"``."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {what}"


def _load_user_yaml(p: Path):
    """A config file as a DictConfig: a mapping, without interpolation resolvers.

    The top node's kind is read from the YAML node tree (no construction, so no alias
    expansion); OmegaConf's own loader then builds it, with its limits on aliases.
    """
    import io

    import yaml
    from omegaconf import DictConfig, OmegaConf

    text = read_text(p)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and not isinstance(node, yaml.MappingNode):
            kind = "list" if isinstance(node, yaml.SequenceNode) else "single value"
            raise InputError(f"{p}: a config file must be a mapping of 'key: value' lines, got a {kind}")
        cfg = OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as e:
        raise InputError(f"{p}: {yaml_error_message(e)}") from None
    if not isinstance(cfg, DictConfig):  # pragma: no cover - the node check above decides
        raise InputError(f"{p}: a config file must be a mapping of 'key: value' lines")
    refuse_resolvers(OmegaConf.to_container(cfg, resolve=False), where=str(p))
    return cfg


def refuse_resolvers(data: Any, *, where: str, _key: str = "") -> None:
    """Raise `InputError` if any string in ``data`` (a loaded YAML file, or overrides) calls an
    interpolation resolver (``${oc.env:SECRET}``, ``${oc.decode:...}``, any ``${name:...}``).

    User configs are data: a resolver would read the environment (or run registered code) and
    write what it found into ``config.yaml`` and the provenance record. Plain references to
    other keys (``${data.spacing}``) stay allowed.
    """
    if isinstance(data, dict):
        for k, v in data.items():
            refuse_resolvers(v, where=where, _key=f"{_key}.{k}" if _key else str(k))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            refuse_resolvers(v, where=where, _key=f"{_key}[{i}]")
    elif isinstance(data, str) and "${" in data:
        names = _resolver_names(data)
        if names:
            raise InputError(
                f"{where}: {_key or 'value'}: {data!r} calls the resolver {names[0]!r}; config files and "
                "overrides may refer to other keys (${other.key}) but not run resolvers (${oc.env:...} and the like)")


def _resolver_names(text: str) -> list[str]:
    """Names of the resolvers an OmegaConf string would call (``[]`` for none)."""
    try:
        from omegaconf import grammar_parser
        from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
    except ImportError:  # pragma: no cover - a future omegaconf: fall back on the syntax
        import re

        return re.findall(r"\$\{\s*([^\s:{}]+)\s*:", text)
    try:
        tree = grammar_parser.parse(text)
    except Exception:  # noqa: BLE001 - not a valid interpolation: it resolves nothing (omegaconf reports it)
        import re

        return re.findall(r"\$\{\s*([^\s:{}]+)\s*:", text)

    def walk(node):
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            yield node.resolverName().getText()
        for child in node.getChildren() if hasattr(node, "getChildren") else ():
            yield from walk(child)

    return list(walk(tree))


def config_to_yaml(cfg: Any) -> str:
    """Resolved config as YAML text (what is written beside outputs)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)


def save_config(cfg: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the resolved config atomically beside a command's outputs."""

    return write_text(path, config_to_yaml(cfg), overwrite=overwrite)
