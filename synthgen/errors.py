"""Exceptions raised at synthgen's boundaries.

Every error that a user can cause (a missing file, a corrupt image, two grids
that differ) is an :class:`InputError`. The CLI prints its message as a single
line and exits with status 2; library callers can catch it like a ``ValueError``.
"""

from __future__ import annotations


def did_you_mean(value: str, candidates, *, n: int = 1) -> str:
    """``"; did you mean 'x'?"`` (or ``'x' or 'y'``) for the closest of ``candidates``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(value), list(candidates), n=n, cutoff=0.6)
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?" if close else ""


class SynthgenError(Exception):
    """Base class of every synthgen exception."""


class InputError(SynthgenError, ValueError):
    """Bad input from the user: the message says what was expected and what arrived."""


class GridMismatchError(InputError):
    """Two volumes that must share a voxel grid do not."""


class OverwriteError(InputError, FileExistsError):
    """A write would replace an existing file without an explicit ``overwrite=True``."""
