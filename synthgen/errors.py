"""Exceptions raised at synthgen's boundaries.

Every error that a user can cause (a missing file, a corrupt image, two grids
that differ) is an :class:`InputError`. The CLI prints its message as a single
line and exits with status 2; library callers can catch it like a ``ValueError``.
"""

from __future__ import annotations


class SynthgenError(Exception):
    """Base class of every synthgen exception."""


class InputError(SynthgenError, ValueError):
    """Bad input from the user: the message says what was expected and what arrived."""


class GridMismatchError(InputError):
    """Two volumes that must share a voxel grid do not."""


class OverwriteError(InputError, FileExistsError):
    """A write would replace an existing file without an explicit ``overwrite=True``."""
