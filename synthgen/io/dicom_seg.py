"""Label maps as DICOM Segmentation (SEG) objects that reference a CT series.

`write_dicom_seg` stores a label map as a binary Segmentation Storage file
(through highdicom) beside the CT series it was drawn on: one segment per label
id present, named after the map's vocabulary, coloured, and marked like every
DICOM file synthgen writes (SYNTHETIC for generated labels, else DERIVED; a
private ``SYNTHGEN`` block holds the mark, each segment's label id and the
label map's grid). Patient and study tags come from the referenced series,
which synthgen wrote with placeholder identities.

`read_dicom_seg` (and `synthgen.io.read`, which recognises a SEG by its SOP
class) returns the label map on the referenced CT's grid, in RAS+ mm, with a
vocabulary built from the segment labels. Reading needs pydicom only. A SEG
from another tool is placed on the grid its frames span; where its segments
overlap, the one with the higher segment number wins (counted in
``meta["overlapping_voxels"]``).
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from synthgen._version import __version__
from synthgen.errors import InputError
from synthgen.files.atomic import atomic_path
from synthgen.io.dicom_common import (
    CORRUPT_ERRORS,
    DECODER_ERRORS,
    LPS_TO_RAS,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    SEGMENTATION_STORAGE,
    add_synthgen_block,
    decode_error,
    frame_sources,
    is_synthetic,
    lookup_tag,
    lps_geometry,
    mark_of,
    one_line_error,
    ras_affine,
    read_dicom_file,
    slice_normal,
    synthgen_mark,
    tag_numbers,
)
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

__all__ = ["read_dicom_seg", "write_dicom_seg"]

#: Elements of the private SYNTHGEN block (group 0x0011) in a SEG: mark, kind, units as in the
#: image writers, then the label map's grid; and, inside each segment item, the segment's label id.
_GRID_SHAPE, _GRID_AFFINE, _SEGMENT_ID = 0x04, 0x05, 0x06
_POSITION_ATOL_MM = 0.01


# ================================================================ writing


def write_dicom_seg(labels: Volume, path: str | os.PathLike, *, series_dir: Path, overwrite: bool = False) -> Path:
    """Write ``labels`` as a DICOM SEG file referencing the CT series in ``series_dir``; returns ``path``.

    ``labels`` must lie on the series' grid (each k-slice on one CT slice, same
    orientation, pixel spacing and size), as a label map of a CT written by
    `synthgen.io.write` does. Every label id present becomes a segment. The file
    appears complete or not at all.

    Raises:
        InputError: ``labels`` is not a label map, holds no labelled voxel, or is
            not on the series' grid; ``series_dir`` holds no DICOM series.
        OverwriteError: ``path`` exists and ``overwrite`` is false.
    """
    import highdicom as hd

    path, series_dir = Path(path), Path(series_dir)
    if labels.kind != "label":
        raise InputError(f"{path}: a DICOM SEG holds a label map, got a volume of kind {labels.kind!r}")
    array = labels.numpy()
    ids = [int(i) for i in np.unique(array) if i != 0]
    if not ids:
        raise InputError(f"{path}: label map has no labelled voxel; a DICOM SEG needs at least one segment")
    if min(ids) < 0 or not np.array_equal(array, np.round(array)):
        raise InputError(f"{path}: label ids must be non-negative integers to be written as DICOM SEG")
    sources = _sources_by_slice(labels, series_dir)
    numbers = np.zeros(array.shape, dtype=np.uint8 if len(ids) < 256 else np.uint16)
    for n, label_id in enumerate(ids, start=1):
        numbers[array == label_id] = n
    vocab = labels.vocab
    descriptions = [_segment_description(hd, n, vocab.name(i) if vocab else f"label_{i}", i, labels)
                    for n, i in enumerate(ids, start=1)]
    mark = mark_of(labels)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.ascontiguousarray(numbers.transpose(2, 1, 0)),  # (frames = k, rows = j, columns = i)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="synthgen",
        manufacturer_model_name="synthgen",
        software_versions=__version__,
        device_serial_number="synthgen",  # type 1 in a SEG: the software, not a device of a source scan
        content_description=f"{mark} label map",
        content_label="SYNTHGEN",
    )
    seg.SeriesDescription = f"{mark} label map"
    for n, item in enumerate(seg.SegmentSequence):
        item.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True).add_new(_SEGMENT_ID, "UL", ids[n])
    block = add_synthgen_block(seg, mark, "label", "id")
    block.add_new(_GRID_SHAPE, "UL", list(labels.shape))
    block.add_new(_GRID_AFFINE, "FD", [float(v) for v in np.asarray(labels.affine, dtype=np.float64).ravel()])
    with atomic_path(path, overwrite=overwrite) as tmp:
        pydicom.dcmwrite(tmp, seg, enforce_file_format=True)
    return path


def _sources_by_slice(labels: Volume, series_dir: Path) -> list[Dataset]:
    """The series' datasets (without pixels) in the order of ``labels``' k-slices, after checking the grid."""
    if not series_dir.is_dir():
        raise InputError(f"{series_dir}: not a folder; a DICOM SEG references a CT series folder")
    datasets = []
    for file in sorted(p for p in series_dir.iterdir() if p.is_file()):
        ds = read_dicom_file(file)
        if not isinstance(ds, str):
            del ds.PixelData  # highdicom reads geometry and identifiers only
            datasets.append(ds)
    if not datasets:
        raise InputError(f"{series_dir}: folder holds no DICOM images to reference")
    geometry = lps_geometry(labels.affine, labels.shape[2])
    ref = datasets[0]

    def mismatch(what: str) -> InputError:
        return InputError(f"{series_dir}: label map is not on the grid of this series ({what})")

    if (int(ref.Columns), int(ref.Rows)) != labels.shape[:2]:
        raise mismatch(f"slices of {ref.Columns}x{ref.Rows} pixels, label map {labels.shape[0]}x{labels.shape[1]}")
    if not np.allclose(np.asarray(ref.ImageOrientationPatient, float), geometry.orientation, atol=1e-4):
        raise mismatch("orientation differs")
    if not np.allclose(np.asarray(ref.PixelSpacing, float), geometry.pixel_spacing, rtol=1e-4):
        raise mismatch(f"pixel spacing {list(ref.PixelSpacing)} vs {list(geometry.pixel_spacing)}")
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for ds in datasets])
    ordered = []
    for k, want in enumerate(geometry.positions):
        dist = np.linalg.norm(positions - want, axis=1)
        if dist.min() > _POSITION_ATOL_MM:
            raise mismatch(f"no slice at the position of k = {k}")
        ordered.append(datasets[int(dist.argmin())])
    return ordered


def _segment_description(hd, number: int, name: str, label_id: int, labels: Volume):
    """A segment named ``name``: an anatomical structure, or a morphologically altered one for lesion classes."""
    from pydicom.sr.codedict import codes

    vocab = labels.vocab
    lesion = vocab is not None and "lesions" in vocab.groups and label_id in vocab.ids("lesions")
    if lesion:
        category = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
        kind = hd.sr.CodedConcept("52988006", "SCT", "Lesion")
    else:
        category = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
        kind = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="synthgen", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*_colour(label_id)),
    )


def _colour(label_id: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per label id (hues a golden angle apart)."""
    r, g, b = colorsys.hsv_to_rgb((label_id * 0.618033988749895) % 1.0, 0.75, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


# ================================================================ reading


def read_dicom_seg(path: str | os.PathLike) -> Volume:
    """Read a DICOM SEG file as a label map `Volume` (kind "label", RAS+ mm, vocabulary from the segment labels).

    Raises:
        InputError: missing, corrupt or undecodable file, or not a Segmentation.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    ds = read_dicom_file(path)
    if isinstance(ds, str):
        raise InputError(f"{path}: {ds}")
    return seg_to_volume(ds, path)


def seg_to_volume(ds: Dataset, path: Path) -> Volume:
    """The label map a Segmentation dataset ``ds`` (read from ``path``) holds; see `read_dicom_seg`."""
    if str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise InputError(f"{path}: not a DICOM Segmentation (SOP class {ds.get('SOPClassUID', 'missing')})")
    try:
        return _seg_volume(ds, path)
    except InputError:
        raise
    except DECODER_ERRORS as e:
        raise InputError(decode_error(ds, path, e)) from e
    except CORRUPT_ERRORS as e:
        raise InputError(f"{path}: truncated or corrupt DICOM SEG file: {one_line_error(e)}") from e


def _seg_volume(ds: Dataset, path: Path) -> Volume:
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    if seg_type not in ("BINARY", "FRACTIONAL"):
        raise InputError(f"{path}: SegmentationType {seg_type} is not supported; expected BINARY or FRACTIONAL")
    pixels = np.asarray(ds.pixel_array)
    pixels = pixels.reshape((-1, *pixels.shape[-2:]))
    if seg_type == "FRACTIONAL":
        pixels = pixels >= (int(ds.get("MaximumFractionalValue", 255)) + 1) / 2
    segments = {int(item.SegmentNumber): item for item in ds.SegmentSequence}
    names = {n: str(item.get("SegmentLabel", "") or f"segment_{n}").strip() for n, item in segments.items()}
    ids = _label_ids(segments, names)
    mark = synthgen_mark(ds)
    affine, shape = _grid(ds, path, pixels.shape[0])
    inverse = np.linalg.inv(affine)
    out = np.zeros(shape, dtype=np.uint8 if max(ids.values()) <= 255 else np.uint16)
    overlap = 0
    for f in sorted(range(pixels.shape[0]), key=lambda f: _segment_number(ds, f, path)):
        number = _segment_number(ds, f, path)
        if number not in ids:
            raise InputError(f"{path}: frame {f + 1} refers to segment {number}, which the SegmentSequence lacks")
        position = tag_numbers(frame_sources(ds, f), "ImagePositionPatient", 3, path)
        i, j, k = (inverse @ LPS_TO_RAS @ np.append(position, 1.0))[:3]
        ki = int(np.rint(k))
        if abs(i) > 1e-2 or abs(j) > 1e-2 or abs(k - ki) > 1e-2 or not 0 <= ki < shape[2]:
            raise InputError(f"{path}: frame {f + 1} lies off the segmentation's slice grid")
        mask = pixels[f].T.astype(bool)
        overlap += int(np.count_nonzero(mask & (out[:, :, ki] != 0)))
        out[:, :, ki][mask] = ids[number]
    seg_vocab = Vocabulary({ids[n]: names[n] for n in ids}, source=str(path))
    default = Vocabulary.default()
    try:
        vocab = default.merge(seg_vocab)
    except InputError:  # names or ids of its own: keep them, with the default groups that still apply
        vocab = seg_vocab.with_groups_from(default)
    meta = {
        "format": "dicom",
        "layout": "seg",
        "series_description": str(ds.get("SeriesDescription", "")),
        "sop_class": "Segmentation Storage",
        "segments": len(segments),
        "overlapping_voxels": overlap,
    }
    synthetic = is_synthetic(mark, [ds])
    return Volume(out, affine, "label", "id", source=str(path), synthetic=synthetic, vocab=vocab, meta=meta)


def _label_ids(segments: dict[int, Dataset], names: dict[int, str]) -> dict[int, int]:
    """Label id of each segment number: synthgen's own record, else the default vocabulary's ids for the
    segment labels (when every label is in it), else the segment numbers."""

    recorded = {}
    for n, item in segments.items():
        try:
            block = item.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
            recorded[n] = int(block[_SEGMENT_ID].value)
        except KeyError:
            break
    if len(recorded) == len(segments) and len(set(recorded.values())) == len(recorded):
        return recorded
    default = Vocabulary.default()
    if all(name in default for name in names.values()) and len(set(names.values())) == len(names):
        return {n: default.id(name) for n, name in names.items()}
    return {n: n for n in segments}


def _segment_number(ds: Dataset, f: int, path: Path) -> int:
    value = lookup_tag(frame_sources(ds, f), "ReferencedSegmentNumber")
    if value is None:
        raise InputError(f"{path}: frame {f + 1} names no ReferencedSegmentNumber")
    return int(value[0] if isinstance(value, MultiValue) else value)


def _grid(ds: Dataset, path: Path, n_frames: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """RAS+ affine and shape of the label map: recorded by synthgen, else spanned by the frames."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        shape = tuple(int(v) for v in block[_GRID_SHAPE].value)
        affine = np.asarray(block[_GRID_AFFINE].value, dtype=np.float64).reshape(4, 4)
        if len(shape) == 3 and min(shape) > 0:
            return affine, shape  # type: ignore[return-value]
    except (KeyError, ValueError, TypeError):
        pass
    sources = frame_sources(ds, 0)
    orientation = tag_numbers(sources, "ImageOrientationPatient", 6, path)
    spacing = tag_numbers(sources, "PixelSpacing", 2, path)
    normal = slice_normal(orientation)
    positions = [tag_numbers(frame_sources(ds, f), "ImagePositionPatient", 3, path) for f in range(n_frames)]
    distinct = sorted({round(float(p @ normal), 3): p for p in positions}.items())
    step = lookup_tag(sources, "SpacingBetweenSlices") or lookup_tag(sources, "SliceThickness")
    gaps = np.diff([d for d, _ in distinct])
    step = abs(float(step)) if step else (float(gaps.min()) if len(gaps) else 1.0)
    first, last = distinct[0], distinct[-1]
    count = int(np.rint((last[0] - first[0]) / step)) + 1
    stack = np.array([first[1] + k * step * normal for k in range(count)])
    affine = ras_affine(stack, orientation, spacing, step)
    return affine, (int(ds.Columns), int(ds.Rows), count)
