"""Where shipped assets live: the repository's top-level ``assets/`` folder."""

from __future__ import annotations

from pathlib import Path

from synthgen.errors import InputError

# synthgen/assets is a symlink to the top-level assets/ folder, so source checkouts,
# editable installs and wheels (setuptools copies through the link) all see it here.
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def asset_path(*parts: str) -> Path:
    p = ASSETS_DIR.joinpath(*parts)
    if not p.exists():
        raise InputError(f"{p}: shipped asset missing; reinstall synthgen (pip install -e .)")
    return p
