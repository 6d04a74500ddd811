"""Render DRRs from a CT `Volume`: geometry + ray casting + X-ray physics + label projection.

`DRRRenderer` holds one CT (as two material density volumes, water and bone)
and renders any number of views of it; each `render` call is one ray pass over
both materials, then per-pixel physics (one energy, or a kVp spectrum summed on
the two material line integrals), optional noise and scatter, and the display
mapping. Labels project to exact per-structure thicknesses and masks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from synthgen.drr import physics
from synthgen.drr.geometry import Projection, rays
from synthgen.drr.raycast import Method, project_labels, project_volume
from synthgen.errors import InputError
from synthgen.volume import Volume

DEFAULT_KVP = 120.0


@dataclasses.dataclass(frozen=True)
class XRaySettings:
    """Physics and display options of one rendering (also the ``physics`` part of the drr config).

    At most one of ``kvp`` (polyenergetic tungsten spectrum) or ``kev`` (monoenergetic) is
    set; with neither, the beam is 120 kVp.
    ``photons_per_pixel`` is the unattenuated dose (None: noiseless); ``display_high`` fixes the
    line integral shown as white (None: the image's 99.5th percentile).
    """

    kvp: float | None = None  # None (and no kev): DEFAULT_KVP
    kev: float | None = None
    filtration_mm_al: float = 2.5
    detector: str = "energy_integrating"  # or "photon_counting"
    photons_per_pixel: float | None = None
    electronic_std_photons: float = 0.0
    scatter_to_primary: float = 0.0
    bone_hu: float = 1900.0
    method: str = "joseph"  # or "siddon" (exact, slower)
    display: str = "radiograph"  # bone bright (film look), or "fluoroscopy": bone dark, I/I0 shown directly
    display_high: float | None = None
    mask_threshold_mm: float = 1.0

    def __post_init__(self) -> None:
        if self.kvp is not None and self.kev is not None:
            raise InputError(f"give one of kvp or kev, not both, got kvp={self.kvp}, kev={self.kev}")
        if self.kvp is not None:
            _number("kvp", self.kvp, *physics.KVP_RANGE, unit=" kV")
        if self.kev is not None:
            _number("kev", self.kev, *physics.table_range_kev(), unit=" keV (the attenuation table's range)")
        _number("filtration_mm_al", self.filtration_mm_al, 0.0, 50.0, unit=" mm of Al")
        if self.photons_per_pixel is not None and not (
                _is_number(self.photons_per_pixel) and 0 < self.photons_per_pixel <= 1e12):
            raise InputError(f"photons_per_pixel (dose) must be > 0 (and at most 1e12), got {self.photons_per_pixel}")
        _number("electronic_std_photons", self.electronic_std_photons, 0.0, 1e9)
        _number("scatter_to_primary", self.scatter_to_primary, 0.0, 10.0)
        _number("bone_hu", self.bone_hu, 100.0, 10000.0, unit=" HU")
        if self.display_high is not None:
            _number("display_high (line integral shown as white)", self.display_high, 0.0, 1e3, low_open=True)
        _number("mask_threshold_mm", self.mask_threshold_mm, 0.0, 1e4, unit=" mm")
        if self.detector not in ("energy_integrating", "photon_counting"):
            raise InputError(f"detector must be 'energy_integrating' or 'photon_counting', got {self.detector!r}")
        if self.display not in ("radiograph", "fluoroscopy"):
            raise InputError(f"display must be 'radiograph' or 'fluoroscopy', got {self.display!r}")
        if self.method not in ("joseph", "siddon"):
            raise InputError(f"method must be 'joseph' or 'siddon', got {self.method!r}")


def _is_number(value: Any) -> bool:
    """A finite real number (not a bool)."""
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
    return ok and math.isfinite(float(value))


def _number(name: str, value: Any, lo: float, hi: float, *, low_open: bool = False, unit: str = "") -> float:
    """``value`` as a float if it is a finite number in [lo, hi] ((lo, hi] with ``low_open``), else `InputError`."""
    v = float(value) if _is_number(value) else math.nan
    if not (math.isfinite(v) and (lo < v if low_open else lo <= v) and v <= hi):
        raise InputError(f"{name} must be a number in {'(' if low_open else '['}{lo:g}, {hi:g}]{unit}, got {value!r}")
    return v


@dataclasses.dataclass(frozen=True, eq=False)
class DRR:
    """One rendered view. Maps are (rows, cols) float32 tensors on the renderer's device.

    ``water_g_cm3_mm``/``bone_g_cm3_mm``: material line integrals; ``intensity``: I/I0 after
    noise and scatter; ``line_integral``: ``-log(intensity)``; ``display``: [0, 1], radiograph
    look (bone bright) or fluoroscopy look (bone dark) per ``settings.display``. ``thickness_mm``/``masks``: per-structure maps named by the vocabulary.
    """

    projection: Projection
    settings: XRaySettings
    water_g_cm3_mm: torch.Tensor
    bone_g_cm3_mm: torch.Tensor
    intensity: torch.Tensor
    line_integral: torch.Tensor
    display: torch.Tensor
    thickness_mm: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    seed: int | None = None

    def record(self) -> dict[str, Any]:
        """Geometry (with its projection matrix) and physics as a JSON-able dict."""
        spec = None
        if self.settings.kev is None:
            s = physics.spectrum(self.settings.kvp or DEFAULT_KVP, filtration_mm_al=self.settings.filtration_mm_al)
            spec = {"kvp": s.kvp, "filtration_mm_al": s.filtration_mm_al, "mean_kev": round(s.mean_kev, 3), "model": s.model}
        physics_record = dataclasses.asdict(self.settings)
        if self.settings.kev is None and self.settings.kvp is None:
            physics_record["kvp"] = DEFAULT_KVP  # record the beam actually used
        return {
            "view": self.projection.name,
            "geometry": self.projection.to_dict(),
            "physics": physics_record,
            "spectrum": spec,
            "seed": self.seed,
            "structures": sorted(self.masks),
            "conventions": "world RAS+ mm; pixel (col, row) = projection_matrix @ (x, y, z, 1) after division by w",
        }


class DRRRenderer:
    """Renders views of one CT. The CT's HU become water/bone density volumes once.

    Args:
        ct: CT `Volume` in HU (numpy or torch array; a tensor that requires grad makes
            every rendering differentiable with respect to it).
        labels: optional label map on the CT's grid, projected with each view.
        bone_hu: CT number of cortical bone in the two-material decomposition.
        device: where to compute ("cpu" or "cuda"); default the CT's device.
    """

    def __init__(self, ct: Volume, *, labels: Volume | None = None, bone_hu: float = 1900.0, device=None) -> None:
        if ct.kind != "intensity" or ct.units != "HU":
            raise InputError(f"DRRs need a CT in HU (kind intensity, units HU), got kind {ct.kind}, units {ct.units}")
        if min(ct.shape) < 1 or ct.array.size == 0:
            raise InputError(f"CT volume is empty (shape {ct.shape})")
        if labels is not None:
            if labels.kind != "label":
                raise InputError("labels must be a label map Volume (kind 'label')")
            ct.check_same_grid(labels, names=("CT", "label map"))
        hu = ct.array if ct.is_torch else torch.from_numpy(np.ascontiguousarray(ct.array))
        hu = hu.to(device if device is not None else hu.device).to(torch.float32)
        water, bone = physics.hu_to_densities(hu, bone_hu=bone_hu)
        self.ct, self.labels, self.bone_hu = ct, labels, bone_hu
        self._materials = torch.stack([water, bone])  # (2, I, J, K) g/cm^3
        self._layouts: dict = {}
        self._present: list[int] | None = None

    def material_line_integrals(self, projection: Projection, *, method: Method = "joseph") -> torch.Tensor:
        """(2, rows, cols) line integrals of water and bone density, g/cm^3 x mm: the one ray pass."""
        projection.check_faces(self.ct)
        source, targets = rays(projection)
        return project_volume(self._materials, self.ct.affine, source, targets, method=method, layout_cache=self._layouts)

    def project_labels(self, projection: Projection, *, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Exact thickness (mm) of each structure present (or of ``names``), keyed by vocabulary name."""
        if self.labels is None:
            raise InputError("no label map given to the renderer; pass labels=... to project structures")
        lab = self.labels.numpy()
        vocab = self.labels.vocab
        if self._present is None:  # ids in the map, counted once per renderer
            counts = np.bincount(lab.ravel(order="K"), minlength=1) if lab.dtype.itemsize <= 2 else None
            ids = np.flatnonzero(counts) if counts is not None else np.unique(lab)
            self._present = [int(i) for i in ids if i != 0]
        present = list(self._present)
        if names is not None:
            wanted = {i for n in names for i in vocab.ids(n)} if vocab is not None else set()
            present = [i for i in present if i in wanted]
        source, targets = rays(projection)
        thick = project_labels(lab, self.labels.affine, source, targets, ids=present, layout_cache=self._layouts)
        name = vocab.name if vocab is not None else (lambda i: f"label_{i}")
        return {name(i): thick[k] for k, i in enumerate(present)}

    def render(
        self,
        projection: Projection,
        settings: XRaySettings = XRaySettings(),
        *,
        with_labels: bool = True,
        seed: int | None = None,
    ) -> DRR:
        """Render one view: material line integrals -> intensity (-> noise, scatter) -> display."""
        if settings.bone_hu != self.bone_hu:
            raise InputError(f"settings.bone_hu {settings.bone_hu} differs from the renderer's {self.bone_hu}")
        water, bone = self.material_line_integrals(projection, method=settings.method)  # type: ignore[arg-type]
        if settings.kev is not None:
            inten = physics.intensity(water, bone, energy_kev=settings.kev, detector=settings.detector)
        else:
            spec = physics.spectrum(settings.kvp or DEFAULT_KVP, filtration_mm_al=settings.filtration_mm_al)
            inten = physics.intensity(water, bone, spectrum=spec, detector=settings.detector)
        if settings.scatter_to_primary > 0:
            inten = physics.add_scatter(inten, scatter_to_primary=settings.scatter_to_primary)
        if settings.photons_per_pixel is not None:
            gen = torch.Generator(device=inten.device).manual_seed(0 if seed is None else int(seed))
            inten = physics.add_noise(
                inten,
                photons_per_pixel=settings.photons_per_pixel,
                electronic_std_photons=settings.electronic_std_photons,
                generator=gen,
            )
        line = physics.line_integral_from_intensity(inten)
        if settings.display == "radiograph":
            display = physics.radiograph(line, high=settings.display_high)
        else:
            display = physics.fluoroscopy(inten)
        thickness, masks = {}, {}
        if with_labels and self.labels is not None:
            thickness = self.project_labels(projection)
            masks = {k: v > settings.mask_threshold_mm for k, v in thickness.items()}
        return DRR(projection, settings, water, bone, inten, line, display, thickness, masks, seed)
