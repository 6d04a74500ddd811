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

    Raises:
        InputError: unreadable YAML, unknown keys, values of the wrong type, or
            overrides not of the form ``key=value``.
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
            cfg = OmegaConf.merge(cfg, OmegaConf.load(p))
        if overrides:
            where = "command-line overrides"
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise InputError(f"{where}: invalid config for {schema.__name__}: {msg}") from e
    except (OSError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{where}: cannot read config: {str(e).splitlines()[0]}") from e


def config_to_yaml(cfg: Any) -> str:
    """Resolved config as YAML text (what is written beside outputs)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)


def save_config(cfg: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the resolved config atomically beside a command's outputs."""
    from synthgen.io.atomic import write_text

    return write_text(path, config_to_yaml(cfg), overwrite=overwrite)
