"""What the DICOM image readers/writers (`synthgen.io.dicom`) and the SEG reader/writer
(`synthgen.io.dicom_seg`) share: SOP class UIDs, synthgen's marks, the LPS <-> RAS+ geometry,
reading one file, looking tags up per frame, and one-line errors for corrupt or undecodable data.

Geometry, the only place where DICOM's LPS frame meets synthgen's RAS+ frame:

* A frame's pixel data ``(Rows, Columns)`` becomes ``array[:, :, k] = frame.T``: ``i`` counts columns.
* ``i`` points along ImageOrientationPatient[:3] (the row direction) in steps of PixelSpacing[1];
  ``j`` along ImageOrientationPatient[3:] in steps of PixelSpacing[0].
* ``k`` is the mean step between the ImagePositionPatient values of the sorted slices; a single
  slice steps along ``normal = cross(row_dir, col_dir)`` by the slice gap the caller gives.
* ``RAS affine = diag(-1, -1, 1, 1) @ LPS affine``.

Marks: every file synthgen writes carries a private block (group 0x0011, creator ``SYNTHGEN``)
holding ``SYNTHETIC`` (generated values) or ``DERIVED`` (anything else, e.g. a converted real
scan), then the Volume's kind and units.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, PrivateBlock
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from synthgen.errors import InputError
from synthgen.volume import Volume

__all__ = [
    "CORRUPT_ERRORS",
    "CT_IMAGE_STORAGE",
    "DECODER_ERRORS",
    "DERIVED_MARK",
    "ENHANCED_CT_IMAGE_STORAGE",
    "INT16_RANGE",
    "LPS_TO_RAS",
    "PRIVATE_CREATOR",
    "PRIVATE_GROUP",
    "SEGMENTATION_STORAGE",
    "SYNTHETIC_MARK",
    "Geometry",
    "add_synthgen_block",
    "decode_error",
    "frame_sources",
    "is_synthetic",
    "lookup_tag",
    "lps_geometry",
    "mark_of",
    "one_line_error",
    "ras_affine",
    "read_dicom_file",
    "slice_normal",
    "synthgen_mark",
    "tag_numbers",
]

#: SOP class UIDs synthgen reads and writes.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
#: synthgen's private block: group and creator; elements 0x01 mark, 0x02 kind, 0x03 units.
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "SYNTHGEN"
SYNTHETIC_MARK = "SYNTHETIC"
DERIVED_MARK = "DERIVED"  # written by synthgen from a volume that is not synthetic (a converted real scan)
_MARK_ELEMENTS = ((0x01, "mark"), (0x02, "kind"), (0x03, "units"))
#: Range of the signed 16-bit values synthgen stores, and reads back as int16 when exact.
INT16_RANGE = (-32768, 32767)

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
class Geometry:
    """DICOM plane geometry of a whole volume, in LPS mm."""

    orientation: np.ndarray  # (6,) ImageOrientationPatient: row direction, column direction
    pixel_spacing: tuple[float, float]  # PixelSpacing: (row spacing = along j, column spacing = along i)
    positions: np.ndarray  # (K, 3) ImagePositionPatient of each slice
    slice_gap: float  # distance between slice planes along the normal


def lps_geometry(affine: np.ndarray, n_slices: int) -> Geometry:
    """DICOM geometry (LPS) of a grid given by its RAS+ ``affine`` with ``n_slices`` k-slices.

    Raises:
        InputError: the affine's i and j axes are not perpendicular (DICOM cannot hold a sheared plane).
    """
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
    return Geometry(
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
    """Unit normal (LPS) of the slice planes of an ImageOrientationPatient (6,): row x column direction."""
    n = np.cross(orientation[:3], orientation[3:])
    return n / np.linalg.norm(n)


# ============================================================ reading files


def read_dicom_file(file: Path) -> Dataset | str:
    """The dataset of a DICOM image file, or a string saying why the file is not one.

    Raises:
        InputError: the file cannot be read, or is a DICOM file cut short or corrupt.
    """
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


def one_line_error(error: BaseException) -> str:
    """An exception's message on one line (whitespace collapsed), or its type's name when it has none."""
    return " ".join(str(error).split()) or type(error).__name__


# ================================================================== tags


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
    """The first non-empty value of ``keyword`` in ``sources`` (see `frame_sources`), or None."""
    for source in sources:
        value = source.get(keyword)
        if value is None or value == "" or (isinstance(value, MultiValue) and len(value) == 0):
            continue
        return value
    return None


def tag_numbers(sources: list[Dataset], keyword: str, count: int, file: Path) -> np.ndarray:
    """The ``count`` numbers of a geometry tag (float64), looked up in ``sources``.

    Raises:
        InputError: the tag is missing, or does not hold ``count`` finite numbers.
    """
    value = lookup_tag(sources, keyword)
    if value is None:
        raise InputError(f"{file}: missing {keyword}; cannot place the image in space")
    raw = list(value) if isinstance(value, MultiValue) else [value]
    values = np.asarray(raw, dtype=np.float64)
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise InputError(f"{file}: {keyword} must hold {count} finite numbers, got {raw}")
    return values


# ================================================================= marks


def mark_of(volume: Volume) -> str:
    """SYNTHETIC for generated values, DERIVED for anything else synthgen writes (a converted real scan)."""
    return SYNTHETIC_MARK if volume.synthetic is True else DERIVED_MARK


def add_synthgen_block(ds: Dataset, mark: str, kind: str, units: str) -> PrivateBlock:
    """Write synthgen's private block (mark, kind, units) into ``ds``; returns it for further elements."""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    for (offset, _), value in zip(_MARK_ELEMENTS, (mark, kind, units[:64])):
        block.add_new(offset, "LO", value)
    return block


def synthgen_mark(ds: Dataset) -> dict[str, str] | None:
    """The private SYNTHGEN block's contents (``mark`` SYNTHETIC or DERIVED), or None when the file carries none."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    values = {}
    for offset, name in _MARK_ELEMENTS:
        if block.get_tag(offset) in ds:
            value = block[offset].value
            values[name] = (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).strip()
    return values if values.get("mark") in (SYNTHETIC_MARK, DERIVED_MARK) else None


def is_synthetic(mark: dict[str, str] | None, datasets: Sequence[Dataset]) -> bool:
    """Whether files read as synthetic: their ``mark`` (`synthgen_mark`) says SYNTHETIC, or, carrying
    none (files of other tools), a SeriesDescription starts with SYNTHETIC."""
    if mark is not None:
        return mark.get("mark") == SYNTHETIC_MARK
    return any(str(ds.get("SeriesDescription", "")).upper().startswith(SYNTHETIC_MARK) for ds in datasets)
