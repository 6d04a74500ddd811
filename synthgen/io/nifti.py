"""NIfTI-1/2 (.nii, .nii.gz) through nibabel: the affine is RAS+ already."""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import numpy as np

from synthgen.errors import InputError
from synthgen.files.atomic import atomic_path, named_staging
from synthgen.memory import check_fits, shape_text
from synthgen.volume import Volume

#: Text stored in the header's 80-byte ``descrip`` field of every file synthgen writes.
SYNTHETIC_MARK = "SYNTHETIC synthgen"
DERIVED_MARK = "synthgen"


def read_nifti(path: Path) -> Volume:
    import nibabel as nib

    _check_raw_spacing(path)
    try:
        img = nib.load(str(path))
        _check_header(img, path)
        raw = np.asanyarray(img.dataobj.get_unscaled())
    except InputError:
        raise
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as e:
        raise InputError(f"{path}: truncated or corrupt NIfTI file ({_short(e)})") from e
    hdr = img.header
    # nibabel moves scl_slope/scl_inter from the loaded header into the array proxy.
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    data = _apply_scaling(raw, slope, inter)
    descrip = hdr["descrip"].tobytes().split(b"\0")[0].decode("latin-1", "replace").strip()
    affine = img.affine
    data = _drop_trailing_singletons(data, path)
    return Volume(
        data,
        affine,
        source=str(path),
        synthetic=descrip.startswith(SYNTHETIC_MARK),
        meta={"format": "nifti", "descrip": descrip, "xyzt_units": hdr.get_xyzt_units()[0]},
    )


def _check_raw_spacing(path: Path) -> None:
    """Refuse a NIfTI-1 header whose voxel spacing (``pixdim[1:4]``) is zero or not finite
    when no sform gives the geometry instead: nibabel would silently make it 1 mm."""
    import gzip
    import struct

    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(348)
    except (OSError, EOFError, zlib.error):
        return  # nibabel's own reading reports the corrupt file
    if len(head) < 348:
        return
    for order in "<>":
        if struct.unpack(order + "i", head[:4])[0] == 348:
            break
    else:
        return  # NIfTI-2 or not NIfTI-1: left to nibabel
    pixdim = struct.unpack(order + "8f", head[76:108])
    sform_code = struct.unpack(order + "h", head[254:256])[0]
    if sform_code == 0 and not all(math.isfinite(d) and d != 0 for d in pixdim[1:4]):
        spacing = ", ".join(f"{d:g}" for d in pixdim[1:4])
        raise InputError(f"{path}: header gives voxel spacing ({spacing}) mm and no sform; spacing must be non-zero")


def _check_header(img, path: Path) -> None:
    """Refuse, before any voxel is read, a header whose dimensions are not positive, whose
    voxels would not fit in memory, or (uncompressed files) that promises more bytes than
    the file holds: a forged header must not become a `MemoryError` or `OverflowError`."""

    shape = tuple(int(n) for n in img.header.get_data_shape())
    if not shape or min(shape) < 1:
        raise InputError(f"{path}: header says {shape_text(shape) or 'no'} voxels: a negative or zero dimension")
    dtype = np.dtype(img.header.get_data_dtype())
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    check_fits(nbytes, f"{path}: header says {shape_text(shape)} {dtype.name}")
    fname = getattr(img.dataobj, "file_like", None)
    if isinstance(fname, str) and not fname.lower().endswith(_COMPRESSED) and os.path.isfile(fname):
        offset = int(getattr(img.dataobj, "offset", 0))
        have = os.path.getsize(fname)
        if have < offset + nbytes:
            raise InputError(
                f"{path}: truncated or corrupt NIfTI file: header says {shape_text(shape)} {dtype.name} "
                f"({nbytes} bytes of voxels from byte {offset}), but the file has only {have} bytes")


_COMPRESSED = (".gz", ".bz2", ".zst")


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def _apply_scaling(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """Apply ``scl_slope``/``scl_inter``; keep integer dtypes when the scaling is an integer shift."""
    if not np.isfinite(slope) or slope == 0:
        slope = 1.0
    if not np.isfinite(inter):
        inter = 0.0
    if slope == 1.0 and inter == 0.0:
        return raw
    if np.issubdtype(raw.dtype, np.integer) and slope == 1.0 and float(inter).is_integer():
        out = raw.astype(np.int32) + int(inter)
        if out.min(initial=0) >= np.iinfo(np.int16).min and out.max(initial=0) <= np.iinfo(np.int16).max:
            return out.astype(np.int16)
        return out
    return (raw.astype(np.float32) * np.float32(slope) + np.float32(inter)).astype(np.float32)


def _drop_trailing_singletons(data: np.ndarray, path: Path) -> np.ndarray:
    """4D/5D files with singleton trailing axes are 3D; a real 4th dimension is an error."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 3:
        raise InputError(f"{path}: image has {data.ndim} dimensions {data.shape}; a single 3D volume is needed")
    while data.ndim < 3:
        data = data[..., None]
    return data


def write_nifti(volume: Volume, path: Path, *, overwrite: bool = False) -> Path:
    import nibabel as nib

    arr = volume.numpy()
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    img = nib.Nifti1Image(arr, volume.affine)
    img.set_sform(volume.affine, code=1)
    img.set_qform(volume.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    mark = SYNTHETIC_MARK if volume.synthetic else DERIVED_MARK
    img.header["descrip"] = f"{mark} {volume.kind}"[:79].encode()
    with atomic_path(path, overwrite=overwrite) as tmp, named_staging(tmp, Path(path).name) as staged:
        nib.save(img, str(staged))
    return Path(path)
