"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) through SimpleITK, the ITK project's
simplified wrapping (it imports in ~0.3 s where ``itk``'s lazy templates take 5-30 s).

ITK stores geometry in LPS; this module is where it becomes RAS+.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from synthgen.errors import InputError
from synthgen.files.atomic import TMP_SUFFIX, atomic_path, named_staging
from synthgen.memory import check_fits, shape_text
from synthgen.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MARK_KEY = "synthgen"


def read_itk(path: Path, fmt: str) -> Volume:
    import SimpleITK as sitk

    if path.suffix.lower() == ".mhd":
        _check_mhd_data_file(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()  # the header only: sizes are checked before any voxel is read
        _check_header(reader, path)
        img = reader.Execute()
        arr = sitk.GetArrayFromImage(img)  # (K, J, I) for 3D
    except RuntimeError as e:
        msg = str(e).strip().splitlines()
        reason = next((line.strip() for line in msg if "ERROR" in line or "Exception" in line), msg[-1] if msg else "")
        raise InputError(f"{path}: truncated or corrupt {fmt.upper()} file ({reason[:160]})") from e
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: image has {img.GetNumberOfComponentsPerPixel()} components per voxel; a scalar image is needed")
    dim = img.GetDimension()
    if dim not in (2, 3):
        raise InputError(f"{path}: image has {dim} dimensions; a 3D volume is needed")
    arr = np.transpose(arr) if dim == 3 else np.transpose(arr)[..., None]
    spacing = np.array(list(img.GetSpacing()) + [1.0] * (3 - dim))
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(img.GetDirection()).reshape(dim, dim)
    origin = np.array(list(img.GetOrigin()) + [0.0] * (3 - dim))
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = origin
    keys = set(img.GetMetaDataKeys())
    mark = img.GetMetaData(MARK_KEY) if MARK_KEY in keys else ""
    return Volume(
        arr,  # a Fortran-ordered view of ITK's (K, J, I) buffer: indexing [i, j, k] without a copy
        LPS_TO_RAS @ lps,
        source=str(path),
        synthetic=mark.startswith("SYNTHETIC"),
        meta={"format": fmt},
    )


def _check_header(reader, path: Path) -> None:
    """Refuse a header whose sizes are not positive or whose voxels would not fit in memory."""
    import SimpleITK as sitk


    size = tuple(int(n) for n in reader.GetSize())
    if not size or min(size) < 1:
        raise InputError(f"{path}: header says {shape_text(size) or 'no'} voxels: a negative or zero dimension")
    ncomp = max(1, int(reader.GetNumberOfComponents()))
    try:  # numpy dtype of the pixel type, from a one-voxel image of it
        one = sitk.Image([1] * len(size), reader.GetPixelID(), ncomp)
        dtype = sitk.GetArrayViewFromImage(one).dtype
        name, itemsize = dtype.name, dtype.itemsize
    except (RuntimeError, TypeError, ValueError):
        name, itemsize = sitk.GetPixelIDValueAsString(reader.GetPixelID()), 8
    per_voxel = f" x {ncomp} components" if ncomp > 1 else ""
    check_fits(math.prod(size) * itemsize * ncomp, f"{path}: header says {shape_text(size)} {name}{per_voxel}".rstrip())


def _check_mhd_data_file(path: Path) -> None:
    """A .mhd header names its voxel file; a missing one is a one-line error (ITK would print its own)."""
    try:
        head = path.read_bytes()[:65536].decode("latin-1")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from e
    for line in head.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            name = value.strip()
            if name and name != "LOCAL" and " " not in name and "%" not in name and not (path.parent / name).is_file():
                raise InputError(f"{path}: its voxel data file {name} (ElementDataFile) is missing")
            return


def write_itk(volume: Volume, path: Path, *, overwrite: bool = False) -> Path:
    import SimpleITK as sitk

    arr = volume.numpy()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    lps = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr)))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    img.SetMetaData(MARK_KEY, f"{'SYNTHETIC' if volume.synthetic else 'DERIVED'} {volume.kind}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        if path.suffix.lower() == ".mhd":
            _write_mhd_pair(img, tmp, path, overwrite=overwrite)
        else:
            with named_staging(tmp, path.name) as staged:
                sitk.WriteImage(img, str(staged), useCompression=True)
    return Path(path)


def _write_mhd_pair(img, tmp: Path, path: Path, *, overwrite: bool) -> None:
    """.mhd keeps its voxels in a separate .raw/.zraw file named in the header: write both atomically."""
    import SimpleITK as sitk

    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=tmp.parent))
    try:
        sitk.WriteImage(img, str(stage / path.name), useCompression=True)
        data = [f for f in stage.iterdir() if f.name != path.name]
        for f in data:
            target = path.parent / f.name
            if target.exists() and not overwrite:
                raise InputError(f"{target}: already exists; refusing to overwrite the .mhd data file")
        for f in data:
            f.replace(path.parent / f.name)
        (stage / path.name).replace(tmp)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
