"""The argument checks behind the pipelines' ``check_inputs``: each raises a one-line `InputError`
saying what was expected and what arrived, before any work is done.

The checks know nothing of a pipeline's networks; what they need of its weights (the voxel
sizes they were trained on) is passed in as ``trained_mm`` = (smallest, largest) spacing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from synthgen.errors import InputError
from synthgen.library import MAX_SIZE
from synthgen.memory import format_gib, memory_shortfall
from synthgen.text.prompt import PromptSpec
from synthgen.volume import Volume, as_spacing_mm

#: Denoising steps accepted.
STEPS_RANGE = (1, 1000)
#: Classifier-free guidance scales accepted (0: unconditional on the prompt, 1: none).
GUIDANCE_RANGE = (0.0, 30.0)
#: Voxel sizes (mm) a generation accepts at all; the weights' training range narrows it further.
SPACING_RANGE_MM = (0.1, 20.0)
#: How far outside the trained spacings a voxel size may lie (a factor on each end).
TRAINED_SLACK = (0.75, 1.25)
#: The library's label maps are cut from a torso box of about 380 x 300 x 340 mm, built at the
#: requested spacing with ~20 bytes per voxel (`synthgen.library`).
LIBRARY_BOX_MM3 = 380.0 * 300.0 * 340.0
LIBRARY_BYTES_PER_VOXEL = 20
#: Largest conditioning label map, voxels per axis, for one generation.
MAX_LABEL_AXIS = 512


def is_int(v: Any) -> bool:
    """An integer, numpy's included, and not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_real(v: Any) -> bool:
    """A finite real number (int, float or numpy number), not a bool."""
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) and math.isfinite(float(v))


def format_mm(sp: np.ndarray) -> str:
    """``"4"`` for an isotropic spacing, else ``"0.7 x 0.7 x 2.5"``."""
    return f"{sp[0]:g}" if np.all(sp == sp[0]) else " x ".join(f"{s:g}" for s in sp)


def check_steps(steps: Any) -> None:
    lo, hi = STEPS_RANGE
    if not is_int(steps) or not lo <= steps <= hi:
        raise InputError(f"num_inference_steps must be an integer in {lo}..{hi}, got {steps!r}")


def check_guidance(guidance: Any) -> None:
    """0 ignores the prompt (unconditional text tokens), 1 is the conditional model without
    classifier-free guidance, above 1 follows the prompt more strongly."""
    lo, hi = GUIDANCE_RANGE
    if not is_real(guidance) or not lo <= guidance <= hi:
        raise InputError(f"guidance_scale: classifier-free guidance must be a finite number in [{lo:g}, {hi:g}] "
                         f"(0: ignore the prompt, 1: no guidance), got {guidance!r}")


def check_generator(generator: Any) -> None:
    """None or a CPU `torch.Generator`: the initial noise is drawn on the CPU (then moved), so a
    seed gives the same volume on every device."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise InputError(f"generator must be a CPU torch.Generator (the noise is drawn on the CPU), "
                         f"got one on {generator.device}")


def check_seed(seed: Any) -> int:
    """A seed for ``torch.Generator().manual_seed``: a non-negative integer below 2**63 (torch
    would silently take -1 as 2**64 - 1)."""
    if not is_int(seed) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if seed >= 2**63:
        raise InputError(f"seed must be at most {2**63 - 1}, got {seed}")
    return int(seed)


def check_size(size: Any) -> None:
    """3 integers (one is taken for all three), 16 to `synthgen.library.MAX_SIZE` voxels."""
    try:
        dims = tuple(size) if np.ndim(size) else (size,) * 3
    except TypeError:
        dims = (size,)
    if len(dims) != 3 or not all(is_int(n) and 16 <= n <= MAX_SIZE for n in dims):
        raise InputError(f"size must be 3 integers between 16 and {MAX_SIZE} voxels, got {size!r}")


def check_trained_spacing(sp: np.ndarray, trained_mm: tuple[float, float], *, what: str) -> None:
    lo, hi = trained_mm
    if (sp < lo * TRAINED_SLACK[0]).any() or (sp > hi * TRAINED_SLACK[1]).any():
        raise InputError(
            f"{what} {' x '.join(f'{s:.2f}' for s in sp)} mm is outside what these weights "
            f"were trained on ({lo:g}-{hi:g} mm); resample it (e.g. `--spacing 4`)")


def check_library_spacing(spacing: Any, trained_mm: tuple[float, float]) -> np.ndarray:
    """The voxel size (mm, one number or three) of a label map to build from the library: in
    `SPACING_RANGE_MM`, near the trained spacings, and small enough a box to fit in memory."""
    sp = as_spacing_mm(spacing, name="spacing")
    lo, hi = SPACING_RANGE_MM
    if (sp < lo).any() or (sp > hi).any():
        raise InputError(f"spacing must be in {lo:g}-{hi:g} mm, got {format_mm(sp)} mm")
    check_trained_spacing(sp, trained_mm, what="spacing")
    need = LIBRARY_BOX_MM3 / float(np.prod(sp)) * LIBRARY_BYTES_PER_VOXEL  # the label map is built on this box
    short = memory_shortfall(need)
    if short:
        raise InputError(f"spacing {format_mm(sp)} mm: building the label map would need "
                         f"about {format_gib(need)}, {short}")
    return sp


def check_label_map(labels: Any, trained_mm: tuple[float, float], *, what: str = "labels") -> None:
    """A label `Volume` near the trained spacings, at most `MAX_LABEL_AXIS` voxels per axis."""
    if not isinstance(labels, Volume) or labels.kind != "label":
        got = "an intensity Volume" if isinstance(labels, Volume) else type(labels).__name__
        raise InputError(f"{what}: the conditioning label map must be a label Volume (kind='label'), got {got}")
    check_trained_spacing(np.asarray(labels.spacing), trained_mm, what="label map spacing")
    if max(labels.shape) > MAX_LABEL_AXIS:
        raise InputError(f"label map of {labels.shape} voxels is too large for one generation "
                         f"(max {MAX_LABEL_AXIS} per axis)")


def check_prompt(prompt: Any) -> None:
    if prompt is not None and not isinstance(prompt, (str, PromptSpec)):
        raise InputError(f"prompt must be text, a PromptSpec or None, got {type(prompt).__name__}")


def check_tile(tile: Any) -> None:
    """None (tiles chosen by size) or the decode tile edge in latent voxels."""
    if tile is not None and (not is_int(tile) or tile < 1):
        raise InputError(f"tile must be None or a positive integer (latent voxels), got {tile!r}")


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {value!r}")


def check_real(name: str, value: Any, lo: float, hi: float, *, unit: str = "mm") -> float:
    """``value`` as a float if it is a finite number in [lo, hi]."""
    if not is_real(value) or not lo <= value <= hi:
        raise InputError(f"{name} must be a number of {unit} in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)
