"""Reading DICOM images as a `Volume`: series folders, single files and Enhanced CT multi-frame files.

Frames become one grid by the geometry rule of `synthgen.io.dicom_common` (pixel data transposed,
``i`` along the row direction, RAS+ = diag(-1, -1, 1, 1) @ LPS), with these reading rules:

* Slices are sorted along ``normal = cross(row_dir, col_dir)``, ascending unless the files'
  InstanceNumbers (or the frame order of a multi-frame file) run strictly the other way, in
  which case that order is kept: a left-handed grid (e.g. LAS) then round-trips index-exactly.
  ``k`` is the mean step between ImagePositionPatient values. A single slice is a one-slice volume
  ``(I, J, 1)`` whose ``k`` step is ``normal * SliceThickness`` (else SpacingBetweenSlices, else 1 mm).
* A file or folder is synthetic when synthgen marked it SYNTHETIC (`synthgen.io.dicom_common`);
  its private block also gives back the Volume's kind and units.

Compressed files (JPEG, JPEG Lossless, JPEG-LS, JPEG 2000, RLE) decode through pydicom's
pylibjpeg plugins; a Segmentation file reads through `synthgen.io.dicom_seg`. The writers are in
`synthgen.io.dicom_write`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from synthgen.errors import InputError
from synthgen.io.dicom_common import (
    CORRUPT_ERRORS,
    DECODER_ERRORS,
    INT16_RANGE,
    SEGMENTATION_STORAGE,
    decode_error,
    frame_sources,
    is_synthetic,
    lookup_tag,
    one_line_error,
    ras_affine,
    read_dicom_file,
    slice_normal,
    synthgen_mark,
    tag_numbers,
)
from synthgen.io.dicom_seg import seg_to_volume
from synthgen.volume import Volume

__all__ = ["read_dicom"]

#: Tolerances when assembling slices into one volume.
_ORIENTATION_ATOL = 1e-4
_DUPLICATE_MM = 1e-3
_SPACING_RTOL = 0.01


@dataclasses.dataclass(frozen=True)
class _Frame:
    """One 2D image plane as found in a file, before sorting."""

    position: np.ndarray  # ImagePositionPatient (3,), LPS mm
    orientation: np.ndarray  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    slice_gap: float | None  # SpacingBetweenSlices, else SliceThickness (mm): the step between frames
    slope: float
    intercept: float
    pixels: np.ndarray  # (Rows, Columns) stored values
    order: float | None = None  # InstanceNumber (single-frame files) or frame index: the file's own order
    thickness: float | None = None  # SliceThickness, else SpacingBetweenSlices (mm): the depth of a lone slice


def read_dicom(path: Path, *, progress: bool = False) -> Volume:
    """Read a DICOM series folder, a single-frame file or a multi-frame (Enhanced CT) file as one `Volume`.

    Values are rescaled to HU (RescaleSlope/RescaleIntercept, per frame); the
    array is int16 when every slope is 1, every intercept an integer and the
    values fit, else float32. The affine is RAS+ mm (see the module docstring).
    A single slice reads as a one-slice volume ``(I, J, 1)``. A folder is read
    non-recursively; files that are not DICOM images (README, DICOMDIR, files
    without the ``DICM`` preamble) are skipped. A Segmentation (DICOM SEG) file
    reads as a label map (`synthgen.io.dicom_seg.read_dicom_seg`).

    Raises:
        InputError: the path is missing, holds no DICOM image, a file is
            corrupt, the folder mixes series, or the slices do not form one
            regular grid (duplicated positions, non-uniform spacing).
    """
    path = Path(path)
    if path.is_dir():
        datasets = _read_folder(path, progress=progress)
    elif path.is_file():
        ds = read_dicom_file(path)
        if isinstance(ds, str):
            raise InputError(f"{path}: {ds}")
        if str(ds.get("SOPClassUID", "")) == SEGMENTATION_STORAGE:
            return seg_to_volume(ds, path)
        datasets = [(path, ds)]
    else:
        raise InputError(f"{path}: no such file or folder")
    frames = [frame for file, ds in datasets for frame in _frames(ds, file)]
    frames = _sort_frames(frames, path)
    array = _stack(frames)
    ref = frames[0]
    affine = ras_affine([f.position for f in frames], ref.orientation, ref.pixel_spacing, ref.thickness or 1.0)
    return _volume(array, affine, path, [ds for _, ds in datasets], frames)


def _read_folder(folder: Path, *, progress: bool) -> list[tuple[Path, Dataset]]:
    from tqdm.auto import tqdm

    files = sorted(p for p in folder.iterdir() if p.is_file())
    found = []
    for file in tqdm(files, disable=not progress, desc=f"reading {folder.name}", unit="file"):
        ds = read_dicom_file(file)
        if not isinstance(ds, str):
            found.append((file, ds))
    if not found:
        raise InputError(f"{folder}: folder holds no DICOM images ({len(files)} files checked)")
    series: dict[str, list[Dataset]] = {}
    for _, ds in found:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if len(series) > 1:
        listing = "; ".join(
            f"#{dss[0].get('SeriesNumber') or '?'} {str(dss[0].get('SeriesDescription', '')) or '(no description)'!r}: "
            f"{len(dss)} files"
            for dss in series.values()
        )
        raise InputError(f"{folder}: folder holds {len(series)} DICOM series ({listing}); pass one series folder")
    return found


def _frames(ds: Dataset, file: Path) -> list[_Frame]:
    """Every frame of one file with its geometry and rescale (per-frame, shared or top-level tags)."""
    pixels = _pixels(ds, file)
    try:
        per_frame_positions = _has_per_frame(ds, "PlanePositionSequence")
        frames = []
        for f in range(pixels.shape[0]):
            sources = frame_sources(ds, f)
            orientation = tag_numbers(sources, "ImageOrientationPatient", 6, file)
            spacing = tag_numbers(sources, "PixelSpacing", 2, file)
            position = tag_numbers(sources, "ImagePositionPatient", 3, file)
            between, thickness = lookup_tag(sources, "SpacingBetweenSlices"), lookup_tag(sources, "SliceThickness")
            gap = abs(float(between or thickness)) if (between or thickness) else None
            thickness = abs(float(thickness or between)) if (thickness or between) else None
            if pixels.shape[0] > 1 and not per_frame_positions:
                # plain multi-frame file: one position for the first frame, frames stacked along the normal
                if not gap:
                    raise InputError(
                        f"{file}: multi-frame file has no per-frame positions and no SpacingBetweenSlices/"
                        "SliceThickness; cannot place its frames"
                    )
                position = position + f * gap * slice_normal(orientation)
            slope, intercept = lookup_tag(sources, "RescaleSlope"), lookup_tag(sources, "RescaleIntercept")
            slope, intercept = 1.0 if slope is None else float(slope), 0.0 if intercept is None else float(intercept)
            order = f if pixels.shape[0] > 1 else lookup_tag([ds], "InstanceNumber")
            order = None if order is None else float(order)
            frames.append(
                _Frame(position, orientation, tuple(spacing.tolist()), gap, slope, intercept, pixels[f], order,
                       thickness)
            )
    except InputError:  # a ValueError too: our own message, pass it on as is
        raise
    except CORRUPT_ERRORS as e:
        raise InputError(f"{file}: truncated or corrupt DICOM file: {one_line_error(e)}") from e
    return frames


def _pixels(ds: Dataset, file: Path) -> np.ndarray:
    """Stored pixel values as (frames, Rows, Columns)."""
    try:
        pixels = ds.pixel_array
    except DECODER_ERRORS as e:
        raise InputError(decode_error(ds, file, e)) from e
    except CORRUPT_ERRORS as e:
        raise InputError(f"{file}: truncated or corrupt DICOM file: {one_line_error(e)}") from e
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError(f"{file}: colour image (SamplesPerPixel {ds.SamplesPerPixel}); expected a grey-level CT image")
    return pixels.reshape((-1, *pixels.shape[-2:]))


def _has_per_frame(ds: Dataset, keyword: str) -> bool:
    per = ds.get("PerFrameFunctionalGroupsSequence")
    return bool(per) and keyword in per[0] and len(per[0][keyword].value) > 0


def _sort_frames(frames: list[_Frame], path: Path) -> list[_Frame]:
    """Frames sorted ascending along the slice normal, after checking they form one regular grid."""
    ref = frames[0]
    for frame in frames[1:]:
        if frame.pixels.shape != ref.pixels.shape:
            raise InputError(f"{path}: slices differ in size ({ref.pixels.shape} vs {frame.pixels.shape} pixels)")
        if not np.allclose(frame.orientation, ref.orientation, atol=_ORIENTATION_ATOL):
            raise InputError(f"{path}: slices differ in ImageOrientationPatient; they do not form one volume")
        if not np.allclose(frame.pixel_spacing, ref.pixel_spacing, rtol=1e-4):
            raise InputError(f"{path}: slices differ in PixelSpacing ({ref.pixel_spacing} vs {frame.pixel_spacing})")
    row, col = ref.orientation[:3], ref.orientation[3:]
    if abs(float(row @ col)) > 1e-3 * np.linalg.norm(row) * np.linalg.norm(col) or not row.any() or not col.any():
        raise InputError(f"{path}: ImageOrientationPatient must hold two perpendicular directions, got {row}, {col}")
    if min(ref.pixel_spacing) <= 0:
        raise InputError(f"{path}: PixelSpacing must be positive, got {list(ref.pixel_spacing)}")
    normal = slice_normal(ref.orientation)
    frames = sorted(frames, key=lambda fr: float(fr.position @ normal))
    _check_spacing(np.array([fr.position for fr in frames]), normal, path)
    # Keep the file's own slice order (and so a left-handed voxel grid such as LAS)
    # when its instance numbers / frame indices run against the normal.
    orders = [fr.order for fr in frames]
    if len(frames) > 1 and None not in orders and all(b < a for a, b in zip(orders, orders[1:])):
        frames = frames[::-1]
    return frames


def _check_spacing(positions: np.ndarray, normal: np.ndarray, path: Path) -> None:
    if len(positions) < 2:
        return
    steps = np.diff(positions, axis=0)
    gaps = np.linalg.norm(steps, axis=1)
    span = f"slice spacing from {gaps.min():.4g} to {gaps.max():.4g} mm"
    along = steps @ normal
    if np.any(along < _DUPLICATE_MM):
        n_dup = int(np.sum(along < _DUPLICATE_MM))
        raise InputError(f"{path}: duplicate slice positions ({n_dup} pairs at the same position; {span})")
    mean_step = (positions[-1] - positions[0]) / (len(positions) - 1)
    deviation = np.max(np.linalg.norm(steps - mean_step, axis=1)) / np.linalg.norm(mean_step)
    if deviation > _SPACING_RTOL:
        raise InputError(f"{path}: non-uniform slice spacing ({span}); missing or extra slices?")


def _stack(frames: list[_Frame]) -> np.ndarray:
    """Rescaled values as an (Columns, Rows, K) array: int16 when exact, else float32."""
    exact = all(fr.slope == 1.0 and fr.intercept == round(fr.intercept) for fr in frames)
    if exact:
        lo = min(int(fr.pixels.min()) + int(fr.intercept) for fr in frames)
        hi = max(int(fr.pixels.max()) + int(fr.intercept) for fr in frames)
        exact = INT16_RANGE[0] <= lo and hi <= INT16_RANGE[1]
    rows, cols = frames[0].pixels.shape
    out = np.empty((cols, rows, len(frames)), dtype=np.int16 if exact else np.float32)
    for k, fr in enumerate(frames):
        if exact:
            out[:, :, k] = (fr.pixels.astype(np.int64) + int(fr.intercept)).T
        else:
            out[:, :, k] = (fr.pixels.astype(np.float64) * fr.slope + fr.intercept).T
    return out


def _volume(
    array: np.ndarray, affine: np.ndarray, path: Path, datasets: list[Dataset], frames: list[_Frame]
) -> Volume:
    """The read volume with its kind, units and synthetic flag (from synthgen's mark) and its DICOM facts in meta."""
    first = datasets[0]
    marks = [synthgen_mark(ds) for ds in datasets]
    mark = next((m for m in marks if m is not None), None)
    description = str(first.get("SeriesDescription", ""))
    synthetic = is_synthetic(mark, datasets)
    multiframe = any(
        int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds for ds in datasets
    )
    kind, units = ("intensity", "HU") if mark is None else (mark.get("kind", "intensity"), mark.get("units", "HU"))
    meta = {
        "format": "dicom",
        "layout": "multiframe" if multiframe else ("series" if path.is_dir() else "single"),
        "series_description": description,
        "sop_class": str(getattr(first.get("SOPClassUID"), "name", first.get("SOPClassUID", ""))),
        "rescale_applied": True,
        "n_slices": len(frames),
        "slice_thickness_mm": frames[0].thickness,
    }
    kind = kind if kind in ("intensity", "label") else "intensity"
    modality = str(first.get("Modality", "")) or "CT"
    return Volume(array, affine, kind, units, modality, source=str(path), synthetic=synthetic, meta=meta)
