"""Read and write medical volumes: NIfTI, NRRD, MetaImage, DICOM series and files (DICOM SEG label maps too).

``read(path)`` returns a `Volume` in RAS+ mm whatever the file's convention;
``write(volume, path)`` picks the format from the extension (or ``format=``),
writes atomically and refuses to overwrite without ``overwrite=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from synthgen.errors import GridMismatchError, InputError
from synthgen.io.dicom import read_dicom
from synthgen.io.dicom_write import write_dicom_multiframe, write_dicom_series
from synthgen.io.itkio import read_itk, write_itk
from synthgen.io.nifti import read_nifti, write_nifti
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume, describe_grid

Format = Literal["nifti", "nrrd", "mha", "dicom"]
FORMATS: tuple[str, ...] = ("nifti", "nrrd", "mha", "dicom")

_EXTENSIONS: dict[str, Format] = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".ima": "dicom",
}


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _sniff(path: Path) -> Format | None:
    """Recognise a file by its first bytes when the extension says nothing."""
    with open(path, "rb") as f:
        head = f.read(352)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] == b"NRRD":
        return "nrrd"
    if head.lstrip().startswith((b"ObjectType", b"NDims")):
        return "mha"
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return "nifti"
    return None


def detect_format(path: str | os.PathLike) -> Format:
    """The format of an existing file or folder (a folder is a DICOM series)."""
    p = Path(path)
    if p.is_dir():
        return "dicom"
    fmt = _EXTENSIONS.get(_extension(p)) or _sniff(p)
    if fmt is None:
        raise InputError(
            f"{p}: not a medical image (unrecognised format; expected NIfTI .nii/.nii.gz, "
            "NRRD, MHA/MHD or DICOM)"
        )
    return fmt


def format_for_output(path: str | os.PathLike, format: Format | None = None) -> Format:
    """The format a write to ``path`` uses: ``format`` if given, else from the extension.

    An existing folder, or a path without an image extension, means a DICOM series.
    """
    p = Path(path)
    if format is not None:
        if format not in FORMATS:
            raise InputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        implied = _EXTENSIONS.get(_extension(p))
        if format != "dicom" and implied != format:
            wanted = [e for e, f in _EXTENSIONS.items() if f == format]
            raise InputError(f"{p}: a {format} file needs one of the extensions {', '.join(wanted)}")
        return format
    if p.is_dir():
        return "dicom"
    fmt = _EXTENSIONS.get(_extension(p))
    if fmt is None:
        if p.suffix == "":
            return "dicom"
        raise InputError(f"{p}: unknown output extension {p.suffix!r}; use .nii.gz, .nrrd, .mha, .mhd, .dcm or a folder")
    return fmt


def read(
    path: str | os.PathLike,
    *,
    kind: Literal["intensity", "label"] | None = None,
    vocab=None,
    allow_one_slice: bool = False,
    allow_2d: bool = False,
    allow_nan: bool = False,
    progress: bool = False,
) -> Volume:
    """Read a volume from a NIfTI/NRRD/MHA/MHD file, a DICOM file or a DICOM series folder.

    A DICOM Segmentation (SEG) file reads as a label map. A single slice reads as a
    one-slice volume ``(I, J, 1)``; since the engines (DRRs, lesions, generation,
    expansion) need depth, it is refused unless ``allow_one_slice`` (``synthgen info``
    and ``convert`` pass it).

    Args:
        kind: ``"label"`` to read an integer label map (checked, vocabulary attached),
            ``"intensity"`` for an image, ``None`` to keep it as the file says.
        vocab: a `Vocabulary` for label maps (default: TotalSegmentator v2 + synthgen lesions).
        allow_one_slice: accept a volume one voxel deep (a single DICOM slice, or a 3D
            file with one slice) instead of raising.
        allow_2d: also accept a 2D image (a file of two dimensions, which gives its
            third axis no thickness: read with 1 mm) as shape ``(I, J, 1)``.
        allow_nan: accept NaN/inf voxels instead of raising.

    Raises:
        InputError: missing path, unreadable or corrupt file, a single slice or 2D image
            (unless allowed), NaNs, or a label map with non-integer values; the message
            starts with the path.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    fmt = detect_format(p)
    if fmt == "nifti":

        vol = read_nifti(p)
    elif fmt in ("nrrd", "mha"):

        vol = read_itk(p, fmt)
    else:

        vol = read_dicom(p, progress=progress)
    _check_values(vol, p, fmt, allow_one_slice=allow_one_slice, allow_2d=allow_2d, allow_nan=allow_nan)
    if kind == "label" or (kind is None and vol.meta.get("layout") == "seg"):
        vol = as_label_map(vol, vocab=vocab, name=str(p))
    return vol


def _check_values(
    vol: Volume, path: Path, fmt: Format, *, allow_one_slice: bool, allow_2d: bool, allow_nan: bool
) -> None:
    if vol.array.size == 0:
        raise InputError(f"{path}: image is empty (shape {vol.shape})")
    if 1 in vol.shape and not allow_2d:
        one_slice = vol.shape.count(1) == 1 and not _file_is_2d(path, fmt)
        if not one_slice:
            dims = "x".join(str(s) for s in vol.shape if s != 1) or "1"
            raise InputError(f"{path}: image is 2D ({dims}); a 3D volume is needed")
        if not allow_one_slice:
            dims = "x".join(str(s) for s in vol.shape)
            raise InputError(
                f"{path}: has one slice ({dims}); a 3D volume is needed (info and convert take single slices)"
            )
    arr = vol.numpy()
    if not allow_nan and np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InputError(f"{path}: image contains {bad} NaN or infinite voxels")


def _file_is_2d(path: Path, fmt: Format) -> bool:
    """Whether a NIfTI/NRRD/MHA file declares only two dimensions (header only; a DICOM image is always placed in 3D)."""
    if fmt == "nifti":
        import nibabel as nib

        return int(nib.load(str(path)).header["dim"][0]) < 3
    if fmt in ("nrrd", "mha"):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return reader.GetDimension() < 3
    return False


def as_label_map(vol: Volume, *, vocab=None, name: str = "label map") -> Volume:
    """Turn an integer-valued image into a label map Volume (kind "label", smallest int dtype)."""

    arr = vol.numpy()
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{name}: label map has non-integer values; expected integer structure ids")
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0:
        raise InputError(f"{name}: label map has negative values (min {lo}); expected ids >= 0")
    dtype = np.uint8 if hi <= 255 else np.uint16 if hi <= 65535 else np.int32
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    return vol.replace(array=arr, kind="label", units="id", vocab=vocab or vol.vocab or Vocabulary.default())


def read_pair(
    image: str | os.PathLike,
    labels: str | os.PathLike,
    *,
    vocab=None,
    allow_one_slice: bool = False,
    progress: bool = False,
) -> tuple[Volume, Volume]:
    """Read a CT and its label map (any format, a DICOM SEG too) and check that they share one voxel grid."""

    ct = read(image, allow_one_slice=allow_one_slice, progress=progress)
    lab = read(labels, kind="label", vocab=vocab, allow_one_slice=allow_one_slice, progress=progress)
    if not ct.same_grid(lab):

        raise GridMismatchError(
            f"{labels}: label map is not on the grid of {image} "
            f"({describe_grid(lab)} vs {describe_grid(ct)})"
        )
    return ct, lab


def write(
    volume: Volume,
    path: str | os.PathLike,
    *,
    format: Format | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``volume`` to ``path`` atomically; the format comes from ``format`` or the extension.

    A DICOM series goes into the folder ``path`` (created; an existing folder must be
    empty unless ``overwrite``); ``format="dicom"`` with a ``.dcm`` path writes one
    multi-frame (enhanced) DICOM file. Returns the path written.
    """
    p = Path(path)
    fmt = format_for_output(p, format)
    if fmt == "nifti":

        return write_nifti(volume, p, overwrite=overwrite)
    if fmt in ("nrrd", "mha"):

        return write_itk(volume, p, overwrite=overwrite)

    if _extension(p) in (".dcm", ".dicom", ".ima"):
        return write_dicom_multiframe(volume, p, overwrite=overwrite)
    write_dicom_series(volume, p, overwrite=overwrite, progress=progress)
    return p


__all__ = ["FORMATS", "Format", "as_label_map", "detect_format", "format_for_output", "read", "read_pair", "write"]
