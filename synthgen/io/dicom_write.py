"""Writing a `Volume` as DICOM: a CT Image Storage series (a file per k-slice) or one Enhanced CT
multi-frame file.

Writing inverts the reading rule of `synthgen.io.dicom` (geometry in `synthgen.io.dicom_common`),
so any grid that is right-handed in LPS (RAS- or LPS-oriented, oblique, gantry-tilted) comes back
with the same array and affine. A left-handed grid (one axis flipped alone) reads back with ``k``
reversed, since DICOM orders slices by position only: every value keeps its world position.

Files written are marked as synthgen's (ImageType DERIVED\\SECONDARY, a SeriesDescription,
ImageComments, placeholder patient tags, a private ``SYNTHGEN`` block at group 0x0011 that also
records the Volume's kind and units) with fresh UIDs; nothing comes from a source file. Only a
Volume with ``synthetic=True`` is marked ``SYNTHETIC``; any other (a converted real scan) is marked
``DERIVED`` and reads back as not synthetic.

Values are stored as int16 (uint16 for label maps) with RescaleSlope/Intercept: integer data
spanning at most 65536 values is exact; anything else is quantised over its range in steps of
``range / 65534``, so a round trip errs by at most half a step.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from synthgen._version import __version__
from synthgen.errors import InputError
from synthgen.files.atomic import atomic_dir, atomic_path
from synthgen.io.dicom_common import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    INT16_RANGE,
    SYNTHETIC_MARK,
    Geometry,
    add_synthgen_block,
    lps_geometry,
    mark_of,
    slice_normal,
)
from synthgen.volume import Volume

__all__ = ["write_dicom_multiframe", "write_dicom_series"]

_QUANT_LEVELS = 65534  # stored values -32767..32767
_ENHANCED_IMAGE_TYPE = ["DERIVED", "SECONDARY", "VOLUME", "NONE"]  # Enhanced CT needs all four values

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


def _shared_groups(volume: Volume, geometry: Geometry, stored: _Stored) -> Dataset:
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
    mark = mark_of(volume)
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
    add_synthgen_block(ds, mark, volume.kind, str(volume.units))
    return ds


def _comments(volume: Volume) -> str:
    if mark_of(volume) == SYNTHETIC_MARK:
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
    if integral and INT16_RANGE[0] <= lo and hi <= INT16_RANGE[1]:
        return _Stored(a.astype(np.int16), "1", "0")
    if integral and hi - lo <= 65535:  # exact with slope 1 and an integer shift
        offset = int(lo) - INT16_RANGE[0]
        return _Stored((a.astype(np.int64) - offset).astype(np.int16), "1", str(offset))
    slope = _ds_list([(hi - lo) / _QUANT_LEVELS if hi > lo else 1.0])[0]
    intercept = _ds_list([(hi + lo) / 2])[0]
    q = np.rint((a.astype(np.float64) - float(intercept)) / float(slope))
    return _Stored(np.clip(q, -32767, 32767).astype(np.int16), slope, intercept)


def _ds_list(values) -> list[str]:
    """Numbers as DICOM decimal strings (at most 16 characters, full available precision)."""
    return [format_number_as_ds(float(v)) for v in values]
