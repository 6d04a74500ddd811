"""DICOM input and output for `Volume`: series folders, single files and Enhanced CT multi-frame files.

Geometry, the only place where DICOM's LPS frame meets synthgen's RAS+ frame:

* A frame's pixel data ``(Rows, Columns)`` becomes ``array[:, :, k] = frame.T``: ``i`` counts columns.
* ``i`` points along ImageOrientationPatient[:3] (the row direction) in steps of PixelSpacing[1];
  ``j`` along ImageOrientationPatient[3:] in steps of PixelSpacing[0].
* Slices are sorted along ``normal = cross(row_dir, col_dir)``, ascending unless the files'
  InstanceNumbers (or the frame order of a multi-frame file) run strictly the other way, in
  which case that order is kept: a left-handed grid (e.g. LAS) then round-trips index-exactly.
  ``k`` is the mean step between ImagePositionPatient values. A single slice is a one-slice volume
  ``(I, J, 1)`` whose ``k`` step is ``normal * SliceThickness`` (else SpacingBetweenSlices, else 1 mm).
* ``RAS affine = diag(-1, -1, 1, 1) @ LPS affine``.

Writing inverts that rule, so any grid that is right-handed in LPS (RAS- or
LPS-oriented, oblique, gantry-tilted) comes back with the same array and
affine. A left-handed grid (one axis flipped alone) reads back with ``k``
reversed, since DICOM orders slices by position only: every value keeps its
world position.

Files written are marked as synthgen's (ImageType DERIVED\\SECONDARY, a
SeriesDescription, ImageComments, placeholder patient tags, a private
``SYNTHGEN`` block at group 0x0011 that also records the Volume's kind and
units) with fresh UIDs; nothing comes from a source file. Only a Volume with
``synthetic=True`` is marked ``SYNTHETIC``; any other (a converted real scan)
is marked ``DERIVED`` and reads back as not synthetic.

Values are stored as int16 (uint16 for label maps) with
RescaleSlope/Intercept: integer data spanning at most 65536 values is exact;
anything else is quantised over its range in steps of ``range / 65534``, so a
round trip errs by at most half a step. Compressed files (JPEG, JPEG Lossless,
JPEG-LS, JPEG 2000, RLE) decode through pydicom's pylibjpeg plugins.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from synthgen._version import __version__
from synthgen.errors import InputError
from synthgen.files.atomic import atomic_dir, atomic_path
from synthgen.volume import Volume

__all__ = ["read_dicom", "write_dicom_multiframe", "write_dicom_series"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "SYNTHGEN"
SYNTHETIC_MARK = "SYNTHETIC"
DERIVED_MARK = "DERIVED"  # written by synthgen from a volume that is not synthetic (a converted real scan)
_INT16 = (-32768, 32767)
_QUANT_LEVELS = 65534  # stored values -32767..32767
_ENHANCED_IMAGE_TYPE = ["DERIVED", "SECONDARY", "VOLUME", "NONE"]  # Enhanced CT needs all four values

#: Tolerances when assembling slices into one volume.
_ORIENTATION_ATOL = 1e-4
_DUPLICATE_MM = 1e-3
_SPACING_RTOL = 0.01

#: Exceptions pydicom raises on truncated or malformed data (parsing or pixel decoding).
CORRUPT_ERRORS = (EOFError, ValueError, AttributeError, KeyError, IndexError, OverflowError, struct.error)
#: Exceptions pydicom raises when no decoder handles the transfer syntax.
DECODER_ERRORS = (NotImplementedError, RuntimeError)
#: The pip packages that decode each family of compressed transfer syntaxes (core dependencies of synthgen).
_DECODER_PACKAGES = (
    (tuple(pydicom.uid.JPEGTransferSyntaxes), "pylibjpeg pylibjpeg-libjpeg"),
    (tuple(pydicom.uid.JPEGLSTransferSyntaxes), "pylibjpeg pylibjpeg-libjpeg"),
    (tuple(pydicom.uid.JPEG2000TransferSyntaxes), "pylibjpeg pylibjpeg-openjpeg"),
    (tuple(pydicom.uid.RLETransferSyntaxes), "pylibjpeg pylibjpeg-rle"),
)


# =============================================================== geometry


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """DICOM plane geometry of a whole volume, in LPS mm."""

    orientation: np.ndarray  # (6,) ImageOrientationPatient: row direction, column direction
    pixel_spacing: tuple[float, float]  # PixelSpacing: (row spacing = along j, column spacing = along i)
    positions: np.ndarray  # (K, 3) ImagePositionPatient of each slice
    slice_gap: float  # distance between slice planes along the normal


def lps_geometry(affine: np.ndarray, n_slices: int) -> _Geometry:
    """DICOM geometry (LPS) of a grid given by its RAS+ ``affine`` with ``n_slices`` k-slices."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    step_i, step_j, step_k = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    sp_i, sp_j = float(np.linalg.norm(step_i)), float(np.linalg.norm(step_j))
    row_dir, col_dir = step_i / sp_i, step_j / sp_j
    if abs(float(row_dir @ col_dir)) > 1e-4:  # float32 affines (NIfTI) carry ~1e-7 noise
        angle = np.degrees(np.arccos(np.clip(row_dir @ col_dir, -1, 1)))
        raise InputError(
            f"affine's i and j axes must be perpendicular to be written as DICOM, got {angle:.4f} degrees apart"
        )
    normal = np.cross(row_dir, col_dir)
    positions = lps[:3, 3] + np.arange(n_slices)[:, None] * step_k
    return _Geometry(
        orientation=np.concatenate([row_dir, col_dir]),
        pixel_spacing=(sp_j, sp_i),
        positions=positions,
        slice_gap=abs(float(step_k @ normal)),
    )


def ras_affine(
    positions: np.ndarray, orientation: Sequence[float], pixel_spacing: Sequence[float], slice_gap: float
) -> np.ndarray:
    """RAS+ affine of slices at sorted LPS ``positions`` (K, 3); ``slice_gap`` is used when K == 1."""
    o = np.asarray(orientation, dtype=np.float64)
    row_dir, col_dir = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
    pos = np.asarray(positions, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * float(pixel_spacing[1])
    lps[:3, 1] = col_dir * float(pixel_spacing[0])
    if len(pos) > 1:
        lps[:3, 2] = (pos[-1] - pos[0]) / (len(pos) - 1)
    else:
        lps[:3, 2] = np.cross(row_dir, col_dir) * slice_gap
    lps[:3, 3] = pos[0]
    return LPS_TO_RAS @ lps


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    n = np.cross(orientation[:3], orientation[3:])
    return n / np.linalg.norm(n)


# ================================================================ reading


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
            from synthgen.io.dicom_seg import seg_to_volume  # dicom_seg builds on this module

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


def read_dicom_file(file: Path) -> Dataset | str:
    """The dataset of a DICOM image file, or a string saying why the file is not one."""
    try:
        ds = pydicom.dcmread(file)
    except InvalidDicomError:
        return "not a DICOM file (no DICM preamble/readable dataset)"
    except OSError as e:
        raise InputError(f"{file}: cannot read file: {one_line_error(e)}") from e
    except CORRUPT_ERRORS as e:
        raise InputError(f"{file}: truncated or corrupt DICOM file: {one_line_error(e)}") from e
    if "PixelData" not in ds:
        # pydicom stops quietly where a file ends: an image file without pixels was cut short.
        sop_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
        sop_name = str(getattr(sop_class, "name", ""))
        if len(ds) == 0 or "Image Storage" in sop_name:
            reason = f"{sop_name or 'dataset'} without PixelData (file ends after {file.stat().st_size} bytes)"
            raise InputError(f"{file}: truncated or corrupt DICOM file: {reason}")
        return "DICOM file holds no image (no PixelData)"
    return ds


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


def decode_error(ds: Dataset, file: Path, error: BaseException) -> str:
    """One line on why pixel data did not decode: no decoder installed (and what to install), none exists, or bad data."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = str(getattr(syntax, "name", syntax))
    try:
        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError, TypeError):  # pydicom has no decoder for this syntax at all
        return (
            f"{file}: cannot decode {name} pixel data: no decoder exists for this transfer syntax; "
            "convert the file to uncompressed DICOM first (e.g. gdcmconv --raw)"
        )
    if not available:
        package = next((pkg for uids, pkg in _DECODER_PACKAGES if syntax in uids), "pylibjpeg")
        return f"{file}: cannot decode {name} pixel data: no decoder is installed; pip install {package}"
    return f"{file}: truncated or corrupt {name} pixel data: {one_line_error(error)}"


def _has_per_frame(ds: Dataset, keyword: str) -> bool:
    per = ds.get("PerFrameFunctionalGroupsSequence")
    return bool(per) and keyword in per[0] and len(per[0][keyword].value) > 0


def frame_sources(ds: Dataset, f: int) -> list[Dataset]:
    """Datasets to look a frame's tags up in, most specific first: per-frame groups, shared groups, top level."""
    sources = []
    for keyword, index in (("PerFrameFunctionalGroupsSequence", f), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(keyword)
        if groups is not None and len(groups) > index:
            sources.extend(elem.value[0] for elem in groups[index] if elem.VR == "SQ" and len(elem.value) > 0)
    sources.append(ds)
    return sources


def lookup_tag(sources: list[Dataset], keyword: str):
    for source in sources:
        value = source.get(keyword)
        if value is None or value == "" or (isinstance(value, MultiValue) and len(value) == 0):
            continue
        return value
    return None


def tag_numbers(sources: list[Dataset], keyword: str, count: int, file: Path) -> np.ndarray:
    value = lookup_tag(sources, keyword)
    if value is None:
        raise InputError(f"{file}: missing {keyword}; cannot place the image in space")
    raw = list(value) if isinstance(value, MultiValue) else [value]
    values = np.asarray(raw, dtype=np.float64)
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise InputError(f"{file}: {keyword} must hold {count} finite numbers, got {raw}")
    return values


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
        exact = _INT16[0] <= lo and hi <= _INT16[1]
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
    first = datasets[0]
    marks = [synthgen_mark(ds) for ds in datasets]
    mark = next((m for m in marks if m is not None), None)
    description = str(first.get("SeriesDescription", ""))
    synthetic = (mark or {}).get("mark") == SYNTHETIC_MARK or (
        mark is None and any(str(ds.get("SeriesDescription", "")).upper().startswith(SYNTHETIC_MARK) for ds in datasets)
    )
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


def synthgen_mark(ds: Dataset) -> dict[str, str] | None:
    """The private SYNTHGEN block's contents (``mark`` SYNTHETIC or DERIVED), or None when the file carries none."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    values = {}
    for offset, name in ((0x01, "mark"), (0x02, "kind"), (0x03, "units")):
        if block.get_tag(offset) in ds:
            value = block[offset].value
            values[name] = (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).strip()
    return values if values.get("mark") in (SYNTHETIC_MARK, DERIVED_MARK) else None


def one_line_error(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ================================================================ writing


@dataclasses.dataclass(frozen=True)
class _Stored:
    """Values as stored in DICOM: ``value = stored * slope + intercept``."""

    array: np.ndarray  # (I, J, K) int16, or uint16 for label maps
    slope: str  # DS strings, exactly what the reader will parse
    intercept: str


def write_dicom_series(
    volume: Volume, folder: Path, *, overwrite: bool = False, progress: bool = False
) -> list[Path]:
    """Write ``volume`` as a CT Image Storage series, one file per k-slice (``IM00001.dcm``...).

    The folder appears complete or not at all (written beside it, then renamed).
    Returns the paths of the written files inside ``folder``. Raises
    `OverwriteError` if ``folder`` is not empty and ``overwrite`` is false, and
    `InputError` for values or geometry DICOM cannot hold (NaN, sheared i/j axes,
    label ids outside 0..65535).
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    stored = _quantise(volume)
    geometry = lps_geometry(volume.affine, volume.shape[2])
    uids = _new_uids()
    names = [f"IM{k + 1:05d}.dcm" for k in range(volume.shape[2])]
    with atomic_dir(folder, overwrite=overwrite, owned=_is_series_file) as tmp:
        for k in tqdm(range(volume.shape[2]), disable=not progress, desc=f"writing {folder.name}", unit="file"):
            ds = _base_dataset(volume, CT_IMAGE_STORAGE, uids, image_type=["DERIVED", "SECONDARY"])
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = _ds_list(geometry.positions[k])
            ds.ImageOrientationPatient = _ds_list(geometry.orientation)
            ds.PixelSpacing = _ds_list(geometry.pixel_spacing)
            ds.SliceThickness = _ds_list([geometry.slice_gap])[0]
            ds.SpacingBetweenSlices = _ds_list([geometry.slice_gap])[0]
            ds.SliceLocation = _ds_list([geometry.positions[k] @ slice_normal(geometry.orientation)])[0]
            ds.RescaleSlope, ds.RescaleIntercept = stored.slope, stored.intercept
            ds.RescaleType = _rescale_type(volume)
            _set_pixels(ds, stored.array[:, :, k].T[None])
            pydicom.dcmwrite(tmp / names[k], ds, enforce_file_format=True)
    return [folder / name for name in names]


def _is_series_file(name: str) -> bool:
    """The file names `write_dicom_series` gives its slices: what ``--overwrite`` may replace."""
    return re.fullmatch(r"IM\d{5}\.dcm", name) is not None


def write_dicom_multiframe(volume: Volume, path: Path, *, overwrite: bool = False) -> Path:
    """Write ``volume`` as one Enhanced CT Image Storage file (a frame per k-slice) and return its path.

    Geometry and rescale go to the shared functional groups, each frame's
    position to its per-frame group. The file appears complete or not at all.
    Raises like `write_dicom_series`.
    """
    path = Path(path)
    stored = _quantise(volume)
    geometry = lps_geometry(volume.affine, volume.shape[2])
    ds = _base_dataset(volume, ENHANCED_CT_IMAGE_STORAGE, _new_uids(), image_type=_ENHANCED_IMAGE_TYPE)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = volume.shape[2]
    ds.ContentQualification = "RESEARCH"
    ds.PresentationLUTShape = "IDENTITY"
    ds.SharedFunctionalGroupsSequence = [_shared_groups(volume, geometry, stored)]
    ds.PerFrameFunctionalGroupsSequence = [_per_frame_group(geometry.positions[k], k) for k in range(volume.shape[2])]
    _set_dimensions(ds)
    _set_pixels(ds, stored.array.transpose(2, 1, 0))
    with atomic_path(path, overwrite=overwrite) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path


def _item(**tags) -> Dataset:
    """A sequence item holding the given keyword=value tags."""
    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def _shared_groups(volume: Volume, geometry: _Geometry, stored: _Stored) -> Dataset:
    gap = _ds_list([geometry.slice_gap])[0]
    return _item(
        PixelMeasuresSequence=[
            _item(PixelSpacing=_ds_list(geometry.pixel_spacing), SliceThickness=gap, SpacingBetweenSlices=gap)
        ],
        PlaneOrientationSequence=[_item(ImageOrientationPatient=_ds_list(geometry.orientation))],
        PixelValueTransformationSequence=[
            _item(RescaleSlope=stored.slope, RescaleIntercept=stored.intercept, RescaleType=_rescale_type(volume))
        ],
        CTImageFrameTypeSequence=[_item(FrameType=_ENHANCED_IMAGE_TYPE)],
    )


def _per_frame_group(position: np.ndarray, k: int) -> Dataset:
    return _item(
        PlanePositionSequence=[_item(ImagePositionPatient=_ds_list(position))],
        FrameContentSequence=[_item(DimensionIndexValues=[k + 1], StackID="1", InStackPositionNumber=k + 1)],
    )


def _set_dimensions(ds: Dataset) -> None:
    """One dimension: the frame's position in its stack (index k + 1)."""
    organization = generate_uid()
    ds.DimensionOrganizationSequence = [_item(DimensionOrganizationUID=organization)]
    ds.DimensionIndexSequence = [
        _item(
            DimensionOrganizationUID=organization,
            DimensionIndexPointer=pydicom.tag.Tag("InStackPositionNumber"),
            FunctionalGroupPointer=pydicom.tag.Tag("FrameContentSequence"),
        )
    ]


def _rescale_type(volume: Volume) -> str:
    return "HU" if volume.units == "HU" else "US"  # US: unspecified


def _new_uids() -> dict[str, str]:
    return {name: generate_uid() for name in ("study", "series", "frame_of_reference")}


def _base_dataset(volume: Volume, sop_class: str, uids: dict[str, str], *, image_type: list[str]) -> Dataset:
    """Patient/study/series/equipment tags and synthgen's marks; built from scratch, never copied.

    A synthetic volume is marked SYNTHETIC; any other (a converted real scan) DERIVED, with
    anonymous patient tags: it is neither presented as synthetic nor carries its source's identity.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    label = volume.kind == "label"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.ImageType = image_type
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = ds.ReferringPhysicianName = ds.StudyID = ""
    ds.Modality = "CT" if label else (volume.modality or "CT")
    ds.Manufacturer = "synthgen"
    ds.SoftwareVersions = __version__
    mark = _mark_of(volume)
    ds.SeriesDescription = f"{mark} label map" if label else f"{mark} synthgen {volume.modality or 'CT'} image"
    ds.PatientName, ds.PatientID = (("SYNTHETIC^SYNTHGEN", "SYNTHETIC") if mark == SYNTHETIC_MARK
                                    else ("ANONYMOUS^SYNTHGEN", "ANONYMOUS"))
    ds.PatientBirthDate = ds.PatientSex = ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids["frame_of_reference"], ""
    ds.SeriesNumber = 1
    ds.ImageComments = _comments(volume)
    ds.BurnedInAnnotation = "NO"
    ds.KVP = ds.AcquisitionNumber = ""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", mark)
    block.add_new(0x02, "LO", volume.kind)
    block.add_new(0x03, "LO", str(volume.units)[:64])
    return ds


def _mark_of(volume: Volume) -> str:
    """SYNTHETIC for generated values, DERIVED for anything else synthgen writes (a converted real scan)."""
    return SYNTHETIC_MARK if volume.synthetic is True else DERIVED_MARK


def _comments(volume: Volume) -> str:
    if _mark_of(volume) == SYNTHETIC_MARK:
        return f"synthetic image generated by synthgen {__version__}; not for diagnostic use"
    return f"converted by synthgen {__version__}; identifiers removed; not for diagnostic use"


def _set_pixels(ds: Dataset, frames: np.ndarray) -> None:
    """Image Pixel module for stored values ``frames`` of shape (F, Rows, Columns), int16 or uint16."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if frames.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(frames, dtype=frames.dtype.newbyteorder("<")).tobytes()


def _quantise(volume: Volume) -> _Stored:
    """Choose stored integers and RescaleSlope/Intercept: exact for integer data, else steps of range/65534."""
    a = volume.numpy()
    a = a.astype(np.uint8) if a.dtype == bool else a
    if a.size == 0:
        raise InputError(f"cannot write an empty volume as DICOM (shape {volume.shape})")
    if not np.all(np.isfinite(a)):
        raise InputError("cannot write NaN or infinite values as DICOM")
    lo, hi = float(a.min()), float(a.max())
    integral = bool(np.all(a == np.round(a)))
    if volume.kind == "label":
        if not integral or lo < 0 or hi > 65535:
            raise InputError(f"label ids must be integers in 0..65535 to be written as DICOM, got {lo:g}..{hi:g}")
        return _Stored(a.astype(np.uint16), "1", "0")
    if integral and _INT16[0] <= lo and hi <= _INT16[1]:
        return _Stored(a.astype(np.int16), "1", "0")
    if integral and hi - lo <= 65535:  # exact with slope 1 and an integer shift
        offset = int(lo) - _INT16[0]
        return _Stored((a.astype(np.int64) - offset).astype(np.int16), "1", str(offset))
    slope = _ds_list([(hi - lo) / _QUANT_LEVELS if hi > lo else 1.0])[0]
    intercept = _ds_list([(hi + lo) / 2])[0]
    q = np.rint((a.astype(np.float64) - float(intercept)) / float(slope))
    return _Stored(np.clip(q, -32767, 32767).astype(np.int16), slope, intercept)


def _ds_list(values) -> list[str]:
    """Numbers as DICOM decimal strings (at most 16 characters, full available precision)."""
    return [format_number_as_ds(float(v)) for v in values]
