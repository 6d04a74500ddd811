"""Reading a JSON file a user or an earlier run wrote: a missing or broken file is one line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from synthgen.errors import InputError


def read_json(path: str | os.PathLike, *, what: str) -> Any:
    """The parsed content of the JSON file ``path``; `InputError` naming the file when it is
    missing (``what``: what was expected there) or not valid JSON."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: no such file (expected {what})") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a folder (expected {what})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: not valid JSON ({e})") from None
