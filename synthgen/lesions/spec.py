"""`LesionSpec`: what to insert (type, organ, size, count, where, contrast phase, seed).

Specs come from Python, from the CLI, or from YAML (``lesions: [{type: cyst, organ: kidney, ...}]``);
every field is validated here, with the closest valid name suggested for typos.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from synthgen.config import read_yaml, shipped_path
from synthgen.errors import InputError, did_you_mean
from synthgen.lesions.appearance import LESION_TYPES
from synthgen.lesions.appearance import ORGANS as ORGAN_FAMILIES  # organ families of the appearance table
from synthgen.lesions.appearance import PHASES as _TABLE_PHASES

PHASES = ("auto", *_TABLE_PHASES)
#: Shape models: "procedural" (a deformed ellipsoid, `synthgen.lesions.shape`), "lidc" (a radiologist's
#: outline of a real nodule, `synthgen.lesions.lidc`; nodule types only), "auto" (LIDC outlines for
#: nodules when the lidc source is installed, else procedural).
SHAPES = ("auto", "procedural", "lidc")
NODULE_TYPES = tuple(t for t in LESION_TYPES if t.startswith("nodule_"))
#: Size of a spec that gives none, for procedural shapes (LIDC shapes draw the real sizes instead).
DEFAULT_DIAMETER_MM = 20.0
#: Most lesions of one spec: more cannot be placed apart from each other in any organ.
MAX_COUNT = 100
#: Surface irregularity by type: cysts are smooth and round, haemorrhages and tumours irregular.
_DEFAULT_LOBULATION = {"tumor": 0.25, "cyst": 0.05, "metastasis": 0.2, "nodule_solid": 0.15,
                       "nodule_ground_glass": 0.2, "nodule_part_solid": 0.2, "hemorrhage": 0.3}


def _suggest(value: str, valid: Sequence[str], what: str) -> InputError:
    hint = did_you_mean(value, valid) or f"; valid: {', '.join(valid)}"
    return InputError(f"unknown {what} {value!r}{hint}")


def organ_family(organ: str) -> str:
    """The appearance-table organ for a vocabulary name or group: 'kidney_left' -> 'kidney', 'lung' -> 'lung'."""
    for family in ORGAN_FAMILIES:
        if organ == family or organ.startswith(family + "_"):
            return family
    hint = did_you_mean(organ, ORGAN_FAMILIES).lstrip("; ")
    raise InputError(
        f"unknown lesion organ {organ!r}; {hint + ' ' if hint else ''}lesions go into {', '.join(ORGAN_FAMILIES)} "
        "(or their parts, e.g. kidney_left, lung_upper_lobe_right)"
    )


@dataclasses.dataclass(frozen=True)
class LesionSpec:
    """One kind of lesion to insert ``count`` times.

    Args:
        type: one of `LESION_TYPES`.
        organ: host structure: a vocabulary name or group (liver, kidney, kidney_left, lung, ...).
        diameter_mm: sphere-equivalent diameter, or ``(min, max)`` to sample uniformly per lesion;
            None: 20 mm for procedural shapes, a size from the real distribution of the nodule type
            for LIDC shapes (for which a range draws from that distribution inside the range).
        count: how many lesions of this spec.
        location: ``"auto"`` (random inside the organ, ``margin_mm`` from its surface) or a
            world point ``(x, y, z)`` in RAS+ mm for the first lesion's centre.
        phase: contrast phase, or ``"auto"`` to estimate it from the host scan.
        seed: makes the lesion reproducible (shape, placement, texture, noise).
        margin_mm: minimum distance from the lesion to the organ surface and to other lesions.
        necrosis: fraction of the radius that is a necrotic core (0: none; up to 0.8).
        rim: enhancing rim/capsule: True, False, or None to follow the appearance table.
        mass_effect_mm: peak displacement of the surrounding tissue (0: none).
        lobulation: amplitude of the smooth surface deformation (0: an ellipsoid; None: by type,
            from 0.05 for cysts to 0.3 for haemorrhages). LIDC shapes: None takes any outline, a
            value the outlines whose lobulation rating (1-5) is nearest ``1 + 4 x value``.
        spiculation: amplitude of radial spikes (0: none; None: 0.3 for solid nodules, else 0).
            LIDC shapes: as lobulation, with the spiculation rating.
        shape: one of `SHAPES`: ``"procedural"``, ``"lidc"`` (lung nodule types only: a real
            outline from the LIDC-IDRI database; needs the ``lidc`` data source) or ``"auto"``
            (``"lidc"`` for nodules when that source is installed, else ``"procedural"``; each
            lesion's record says which, and why).
    """

    type: str = "tumor"
    organ: str = "liver"
    diameter_mm: float | tuple[float, float] | None = None
    count: int = 1
    location: str | tuple[float, float, float] = "auto"
    phase: str = "auto"
    seed: int = 0
    margin_mm: float = 3.0
    necrosis: float = 0.0
    rim: bool | None = None
    mass_effect_mm: float = 0.0
    lobulation: float | None = None
    spiculation: float | None = None
    shape: str = "auto"

    def __post_init__(self) -> None:
        if self.type not in LESION_TYPES:
            raise _suggest(str(self.type), LESION_TYPES, "lesion type")
        if self.shape not in SHAPES:
            raise _suggest(str(self.shape), SHAPES, "shape")
        if self.shape == "lidc" and self.type not in NODULE_TYPES:
            raise InputError(f"shape 'lidc' draws lung nodules ({', '.join(NODULE_TYPES)}), got type {self.type!r}; "
                             "use shape 'procedural' or 'auto'")
        if self.phase not in PHASES:
            raise _suggest(str(self.phase), PHASES, "phase")
        family = organ_family(self.organ) if isinstance(self.organ, str) else None
        if self.type.startswith("nodule") and family != "lung":
            raise InputError(f"{self.type} lesions go into the lung, got organ {self.organ!r}")
        object.__setattr__(self, "diameter_mm", _diameter(self.diameter_mm))
        if not _is_int(self.count) or not 1 <= self.count <= MAX_COUNT:
            raise InputError(f"count must be a positive integer (at most {MAX_COUNT}), got {self.count!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.rim is not None and not isinstance(self.rim, bool):
            raise InputError(f"rim must be true, false or null (by the appearance table), got {self.rim!r}")
        object.__setattr__(self, "location", _location(self.location))
        for name, lo, hi in (("margin_mm", 0, 100), ("necrosis", 0, 0.8), ("mass_effect_mm", 0, 20),
                             ("lobulation", 0, 1), ("spiculation", 0, 1)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise InputError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")

    @property
    def family(self) -> str:
        """Organ family of the appearance table (liver, kidney, spleen, pancreas, lung)."""
        return organ_family(self.organ)

    @property
    def label_name(self) -> str:
        """Vocabulary name of this lesion's class, e.g. ``liver_tumor``, ``lung_nodule_solid``."""
        return f"{self.family}_{self.type}"

    @property
    def lobulation_amount(self) -> float:
        if self.lobulation is not None:
            return float(self.lobulation)
        return _DEFAULT_LOBULATION[self.type]

    @property
    def spiculation_amount(self) -> float:
        if self.spiculation is not None:
            return float(self.spiculation)
        return 0.3 if self.type == "nodule_solid" else 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "spec") -> LesionSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            hint = did_you_mean(unknown[0], sorted(fields)).lstrip("; ")
            hint = f" ({hint})" if hint else ""
            raise InputError(
                f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{hint}; "
                f"valid: {', '.join(sorted(fields))}"
            )
        kw = dict(d)
        for key in ("diameter_mm", "location"):
            if isinstance(kw.get(key), list):
                kw[key] = tuple(kw[key])
        try:
            return cls(**kw)
        except InputError as e:
            raise InputError(f"{where}: {e}") from e


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _diameter(value: Any) -> float | tuple[float, float] | None:
    if value is None:
        return None
    vals = value if isinstance(value, (tuple, list)) else (value,)
    try:
        nums = tuple(float(v) for v in vals)
    except (TypeError, ValueError):
        nums = ()
    if len(nums) not in (1, 2) or any(not 1.0 <= v <= 200.0 for v in nums) or (len(nums) == 2 and nums[0] > nums[1]):
        raise InputError(f"diameter_mm must be a size in mm (1-200), a range [min, max] or null (by shape), got {value!r}")
    return nums[0] if len(nums) == 1 else nums  # type: ignore[return-value]


def _location(value: Any) -> str | tuple[float, float, float]:
    if value == "auto":
        return "auto"
    try:
        point = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        point = ()
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise InputError(f"location must be 'auto' or a world point [x, y, z] of finite mm, got {value!r}")
    return point  # type: ignore[return-value]


def load_specs(path: str | os.PathLike) -> list[LesionSpec]:
    """Read specs from YAML: a list of specs, or ``{lesions: [...]}``.

    ``configs/NAME.yaml`` missing from the working folder is the copy shipped with synthgen
    (`synthgen.config.shipped_path`), so ``--spec configs/lesions_abdomen.yaml`` works anywhere.
    """
    p = shipped_path(path)
    if not p.is_file():
        raise InputError(f"{p}: spec file not found")
    data = read_yaml(p)  # binary data, YAML errors (with their line): one InputError line
    items = data.get("lesions") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise InputError(f"{p}: expected a list of lesion specs (or 'lesions: [...]')")
    return [LesionSpec.from_dict(item, where=f"{p}: lesion {k + 1}") for k, item in enumerate(items)]
