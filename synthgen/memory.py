"""This machine's memory, and refusing work that cannot fit in it before any of it is done.

A forged header (30000^3 voxels), ``--size 100000`` or ``shape=[4096,4096,4096]`` would
otherwise end in a `MemoryError` traceback, or in the kernel killing the process, after
part of the outputs were written. Every such size is checked once, where it enters, with
`check_fits`; the message says what was asked and how much memory it would need.
"""

from __future__ import annotations

import math
import os

from synthgen.errors import InputError


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (None where it cannot be told)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or the names are unknown
        pass
    return None  # memory unknown (no sysconf): nothing is refused for size


def format_gib(nbytes: float) -> str:
    """``"50,291 GiB"``, ``"3.7 GiB"``, ``"0.02 GiB"``."""
    try:
        g = nbytes / 2**30
    except OverflowError:  # an int past float range (a forged header's product of dimensions)
        return "an astronomical number of GiB"
    return f"{g:,.0f} GiB" if g >= 100 else f"{g:.1f} GiB" if g >= 1 else f"{g:.2g} GiB"


def memory_shortfall(nbytes: float) -> str | None:
    """``"more than this machine's 23.5 GiB of memory"`` when ``nbytes`` exceeds the physical
    memory, else None (also where the memory cannot be told)."""
    total = machine_memory_bytes()
    if isinstance(nbytes, float) and not math.isfinite(nbytes):
        return "more than any machine's memory"
    if total is not None and nbytes > total:
        return f"more than this machine's {format_gib(total)} of memory"
    return None


def check_fits(nbytes: float, what: str) -> None:
    """Raise `InputError` ``"<what> (N GiB), more than this machine's M GiB of memory"`` when
    ``nbytes`` exceeds the physical memory."""
    short = memory_shortfall(nbytes)
    if short:
        raise InputError(f"{what} ({format_gib(nbytes)}), {short}")


def shape_text(shape) -> str:
    """``(512, 512, 133)`` -> ``"512x512x133"``."""
    return "x".join(str(int(n)) for n in shape)
