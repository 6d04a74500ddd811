"""Fine texture of CT, per tissue: what tells a real scan from a painted one.

Two statistics, both measured at one isotropic spacing (the CT is resampled to it first, so a
generated volume and a real scan are compared at the same scale), inside each tissue's label
shrunk by one voxel (boundaries are edges, not texture):

- ``residual_hu``: the RMS of the CT minus itself blurred by a Gaussian of one voxel (sigma). This
  is the grain a radiologist sees: quantum noise, lung vessels, liver vessels, trabecular marrow.
  A CT painted with smooth per-structure HU has a residual near zero.
- ``nps_centroid``: the power-weighted mean spatial frequency (cycles/mm) of the radially
  averaged 2-D noise power spectrum of axial regions of interest (6 x 6 voxels, each
  wholly inside the tissue, minus its mean). Fine grain puts power at high frequency (towards the
  Nyquist frequency, 0.5 / spacing); blobs put it low.

`noise_power_spectrum` and `blur_residual` are pure functions on arrays, tested on noise fields of
known spectrum. `texture_table` applies them to a (CT, label map) pair; `synthgen.fidelity`
compares the result with the range real patients span (assets/fidelity/texture_4mm.json).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from synthgen.anatomy.ops import organ_mask
from synthgen.errors import InputError
from synthgen.volume import Volume

__all__ = ["TISSUES", "TissueTexture", "blur_residual", "compare", "noise_power_spectrum", "nps_centroid", "reference_ranges",
           "texture_table"]

#: Tissue -> the label name or group that holds it.
TISSUES = {"liver": "liver", "spleen": "spleen", "kidney": "kidney", "muscle": "muscles", "heart": "heart",
           "lung": "lung", "marrow": "vertebrae", "brain": "brain"}
#: Voxels a tissue needs (after shrinking) to be measured.
MIN_VOXELS = 50


@dataclasses.dataclass(frozen=True)
class TissueTexture:
    """One tissue's statistics at ``spacing_mm``: ``residual_hu`` and ``nps_centroid`` (cycles/mm;
    None when no ROI fits), from ``voxels`` voxels and ``rois`` regions of interest."""

    tissue: str
    spacing_mm: float
    residual_hu: float
    nps_centroid: float | None
    voxels: int
    rois: int


def blur_residual(hu: np.ndarray, mask: np.ndarray, *, sigma_vox: float = 1.0) -> float:
    """RMS of ``hu - gaussian(hu, sigma_vox)`` over ``mask`` (the blur sees the whole array)."""
    if not mask.any():
        raise InputError("blur_residual: empty mask")
    a = np.asarray(hu, np.float64)
    r = a - ndimage.gaussian_filter(a, sigma_vox, mode="nearest")
    return float(np.sqrt(np.mean(r[mask] ** 2)))


def _rois(mask2d: np.ndarray, roi: int) -> list[tuple[int, int]]:
    """Non-overlapping ``roi`` x ``roi`` windows lying wholly inside ``mask2d``, on a grid."""
    inside = ndimage.uniform_filter(mask2d.astype(np.float32), roi, mode="constant") > 1 - 1e-6
    out = []
    h = roi // 2
    for i in range(h, mask2d.shape[0] - roi + h + 1, roi):
        for j in range(h, mask2d.shape[1] - roi + h + 1, roi):
            if inside[i, j]:
                out.append((i - h, j - h))
    return out


def noise_power_spectrum(hu: np.ndarray, mask: np.ndarray, spacing_mm: float, *, roi: int = 6,
                         max_rois: int = 400) -> tuple[np.ndarray, np.ndarray, int]:
    """The radially averaged 2-D NPS of axial ROIs inside ``mask``: ``(frequencies in cycles/mm,
    NPS in HU^2 mm^2, number of ROIs)``. Each ROI has its mean removed; the NPS is
    ``|FFT|^2 * spacing^2 / roi^2`` averaged over ROIs (its integral over frequency is the ROI
    variance). Empty arrays when no ROI fits."""
    a = np.asarray(hu, np.float64)
    patches = []
    for k in range(a.shape[2]):
        if mask[:, :, k].sum() < roi * roi:
            continue
        for i, j in _rois(mask[:, :, k], roi):
            patches.append(a[i:i + roi, j:j + roi, k])
    if not patches:
        return np.zeros(0), np.zeros(0), 0
    if len(patches) > max_rois:  # evenly spread, deterministic
        patches = [patches[int(t)] for t in np.linspace(0, len(patches) - 1, max_rois)]
    p = np.stack(patches)
    p = p - p.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(p)) ** 2).mean(axis=0) * spacing_mm**2 / roi**2
    f = np.fft.fftfreq(roi, d=spacing_mm)
    fr = np.hypot(f[:, None], f[None, :])
    step = 1.0 / (roi * spacing_mm)
    bins = np.rint(fr / step).astype(int)
    n = bins.max() + 1
    radial = np.bincount(bins.ravel(), power.ravel(), n) / np.maximum(np.bincount(bins.ravel(), None, n), 1)
    return np.arange(n) * step, radial, len(patches)


def nps_centroid(freqs: np.ndarray, nps: np.ndarray) -> float | None:
    """Power-weighted mean frequency of a radial NPS, leaving out zero frequency."""
    if freqs.size < 2 or nps[1:].sum() <= 0:
        return None
    return float((freqs[1:] * nps[1:]).sum() / nps[1:].sum())


def texture_table(ct: Volume, labels: Volume, *, spacing_mm: float = 4.0,
                  tissues: dict[str, str] | None = None) -> dict[str, TissueTexture]:
    """`TissueTexture` of every tissue present in ``labels`` (`TISSUES` by default), the CT and
    labels resampled to ``spacing_mm`` isotropic first."""
    ct.check_same_grid(labels, names=("CT", "label map"))
    c = ct.to_canonical().resample(spacing_mm)
    lab = labels.to_canonical().resample_to(c)
    hu = c.numpy().astype(np.float64)
    out = {}
    for tissue, name in (tissues or TISSUES).items():
        try:
            m = organ_mask(lab, name)
        except InputError:
            continue  # not in this label map's vocabulary, or absent
        m = ndimage.binary_erosion(m, iterations=1)
        if m.sum() < MIN_VOXELS:
            continue
        freqs, nps, n = noise_power_spectrum(hu, m, spacing_mm)
        centroid = nps_centroid(freqs, nps)
        out[tissue] = TissueTexture(tissue=tissue, spacing_mm=spacing_mm, residual_hu=round(blur_residual(hu, m), 2),
                                    nps_centroid=None if centroid is None else round(centroid, 4),
                                    voxels=int(m.sum()), rois=n)
    return out


#: How far past the real patients' span the pass range reaches (a handful of patients
#: under-covers the population): residual x0.8 .. x1.25, NPS centroid x0.85 .. x1.15.
RESIDUAL_MARGIN = (0.8, 1.25)
CENTROID_MARGIN = (0.85, 1.15)


def reference_ranges(tables: dict[str, dict[str, TissueTexture]]) -> dict[str, dict]:
    """Per tissue, the pass ranges from real patients' `texture_table` s (``{patient: table}``):
    the span of their values widened by `RESIDUAL_MARGIN` / `CENTROID_MARGIN`, with the values
    and the patients they came from."""
    out: dict[str, dict] = {}
    for tissue in TISSUES:
        rows = {p: t[tissue] for p, t in tables.items() if tissue in t}
        if not rows:
            continue
        res = [r.residual_hu for r in rows.values()]
        cen = [r.nps_centroid for r in rows.values() if r.nps_centroid is not None]
        out[tissue] = {
            "residual_hu": [round(min(res) * RESIDUAL_MARGIN[0], 2), round(max(res) * RESIDUAL_MARGIN[1], 2)],
            "nps_centroid": ([round(min(cen) * CENTROID_MARGIN[0], 4), round(max(cen) * CENTROID_MARGIN[1], 4)]
                             if cen else None),
            "patients": {p: {"residual_hu": r.residual_hu, "nps_centroid": r.nps_centroid} for p, r in rows.items()},
        }
    return out


def compare(table: dict[str, TissueTexture], ranges: dict[str, dict]) -> dict[str, dict]:
    """Each measured tissue against its range: values, ranges, and ``pass`` (both statistics
    inside; a statistic without a range or value is not judged)."""
    out = {}
    for tissue, t in table.items():
        if tissue not in ranges:
            continue
        r = ranges[tissue]
        ok_res = r["residual_hu"][0] <= t.residual_hu <= r["residual_hu"][1]
        ok_cen = (None if r["nps_centroid"] is None or t.nps_centroid is None
                  else r["nps_centroid"][0] <= t.nps_centroid <= r["nps_centroid"][1])
        out[tissue] = {"residual_hu": t.residual_hu, "residual_range": r["residual_hu"],
                       "nps_centroid": t.nps_centroid, "centroid_range": r["nps_centroid"],
                       "pass": bool(ok_res and ok_cen is not False)}
    return out
