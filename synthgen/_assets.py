"""Where shipped assets live: the repository's top-level ``assets/`` folder."""

from __future__ import annotations

from pathlib import Path

from synthgen.errors import InputError

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


def asset_path(*parts: str) -> Path:
    p = ASSETS_DIR.joinpath(*parts)
    if not p.exists():
        raise InputError(f"{p}: shipped asset missing; install synthgen from its source checkout (pip install -e .)")
    return p
