"""DICOM read/write: geometry and values round-trip, files are marked synthetic (or derived), bad input fails
clearly; single slices, compressed transfer syntaxes and DICOM SEG label maps."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

import synthgen
from synthgen.errors import InputError, OverwriteError
from synthgen.io.dicom import read_dicom
from synthgen.io.dicom_write import write_dicom_multiframe, write_dicom_series
from synthgen.volume import Volume

SHAPE = (7, 6, 5)
SPACING = (0.7, 0.8, 2.5)


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _affine(grid: str) -> np.ndarray:
    a = np.eye(4)
    a[:3, 3] = [-12.5, 30.25, -101.0]
    if grid == "ras":
        a[:3, :3] = np.diag(SPACING)
    elif grid == "lps":  # the usual CT grid: i towards patient left, j towards posterior
        a[:3, :3] = np.diag([-SPACING[0], -SPACING[1], SPACING[2]])
    elif grid == "oblique":
        a[:3, :3] = _rotation([1.0, 0.4, 0.2], 10.0) @ np.diag([-SPACING[0], -SPACING[1], SPACING[2]])
    elif grid == "tilted":  # gantry tilt: slices shift along j as k grows
        a[:3, :3] = np.diag([-SPACING[0], -SPACING[1], SPACING[2]])
        a[1, 2] = 0.4
    return a


def _hu(shape=SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2001, size=shape).astype(np.int16)


def _volume(grid: str = "lps", array: np.ndarray | None = None, **fields) -> Volume:
    return Volume(_hu() if array is None else array, _affine(grid), **fields)


def _probes(shape) -> np.ndarray:
    far = np.asarray(shape) - 1
    return np.array([[0, 0, 0], far, [far[0], 0, 0], [0, far[1], 0], [0, 0, far[2]], far // 2, [1, 2, 3]])


def _write(writer: str, volume: Volume, tmp_path: Path, name: str = "out") -> Path:
    """Write with one of the two writers and return what `read_dicom` should be given."""
    if writer == "series":
        write_dicom_series(volume, tmp_path / name)
        return tmp_path / name
    return write_dicom_multiframe(volume, tmp_path / f"{name}.dcm")


def _datasets(target: Path) -> list[pydicom.Dataset]:
    files = sorted(target.iterdir()) if target.is_dir() else [target]
    return [pydicom.dcmread(f) for f in files]


def _error_text(excinfo, path: Path) -> str:
    """The message, after checking it is one line that starts with the offending path."""
    message = str(excinfo.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    return message


WRITERS = ["series", "multiframe"]


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("grid", ["ras", "lps", "oblique", "tilted"])
def test_integer_hu_round_trip_is_exact_in_values_and_world_positions(tmp_path, writer, grid):
    original = _volume(grid)
    back = read_dicom(_write(writer, original, tmp_path))
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, original.array)
    probes = _probes(SHAPE)
    np.testing.assert_allclose(back.voxel_to_world(probes), original.voxel_to_world(probes), rtol=0, atol=1e-3)
    assert (back.kind, back.units, back.modality) == ("intensity", "HU", "CT")


@pytest.mark.parametrize("writer", WRITERS)
def test_float_values_round_trip_within_the_documented_quantisation_step(tmp_path, writer):
    values = (_hu().astype(np.float32) * 0.37).astype(np.float32)
    original = _volume("oblique", values)
    back = read_dicom(_write(writer, original, tmp_path))
    assert back.array.dtype == np.float32
    step = float(values.max() - values.min()) / 65534
    assert np.max(np.abs(back.array - values)) <= step
    assert back.same_grid(original)


def test_integers_beyond_int16_are_stored_exactly_with_an_intercept(tmp_path):
    values = np.random.default_rng(1).integers(0, 60000, size=SHAPE).astype(np.int32)
    back = read_dicom(_write("series", _volume("lps", values, units="1/mm"), tmp_path))
    np.testing.assert_array_equal(back.array, values)
    assert back.units == "1/mm"


@pytest.mark.parametrize("kind", ["series", "multiframe"])
def test_left_handed_grid_round_trips_index_exactly(tmp_path, kind):
    affine = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0])  # LAS, like many NIfTI CTs
    original = Volume(_hu(), affine)
    back = read_dicom(_write(kind, original, tmp_path))
    np.testing.assert_array_equal(back.array, original.array)
    ijk = _probes(SHAPE)
    np.testing.assert_allclose(back.voxel_to_world(ijk), original.voxel_to_world(ijk), atol=1e-3)


def test_left_handed_series_without_instance_numbers_keeps_every_value_in_place(tmp_path):
    affine = np.diag([SPACING[0], SPACING[1], -SPACING[2], 1.0])  # one axis flipped alone
    original = Volume(_hu(), affine)
    folder = _write("series", original, tmp_path)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        del ds.InstanceNumber
        ds.save_as(f)
    back = read_dicom(folder)
    np.testing.assert_array_equal(back.array, original.array[:, :, ::-1])
    ijk = _probes(SHAPE)
    flipped = ijk * [1, 1, -1] + [0, 0, SHAPE[2] - 1]
    np.testing.assert_allclose(back.voxel_to_world(flipped), original.voxel_to_world(ijk), atol=1e-3)


def test_slice_order_comes_from_positions_not_file_names(tmp_path):
    original = _volume("oblique")
    files = write_dicom_series(original, tmp_path / "s")
    for n, f in enumerate(files):  # IM00001 becomes the last name, IM00005 the first
        f.rename(f.with_name(f"slice_{len(files) - n}.dcm"))
    back = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(back.array, original.array)
    assert back.same_grid(original)


def test_one_file_of_a_series_reads_as_a_single_slice_at_its_position(tmp_path):
    original = _volume("oblique")
    files = write_dicom_series(original, tmp_path / "s")
    back = read_dicom(files[2])
    assert back.shape == (SHAPE[0], SHAPE[1], 1)
    np.testing.assert_array_equal(back.array[:, :, 0], original.array[:, :, 2])
    ij0 = _probes(SHAPE)[:, :2]
    ijk = np.c_[ij0, np.zeros(len(ij0))]
    np.testing.assert_allclose(back.voxel_to_world(ijk), original.voxel_to_world(ijk + [0, 0, 2]), atol=1e-3)
    np.testing.assert_allclose(back.spacing, SPACING, rtol=1e-6)
    assert back.meta["layout"] == "single"


def test_plain_multiframe_file_with_top_level_geometry_is_read(tmp_path):
    original = _volume("lps")
    files = write_dicom_series(original, tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    ds.NumberOfFrames = SHAPE[2]
    ds.PixelData = b"".join(pydicom.dcmread(f).PixelData for f in files)
    pydicom.dcmwrite(tmp_path / "plain.dcm", ds, enforce_file_format=True)
    back = read_dicom(tmp_path / "plain.dcm")
    np.testing.assert_array_equal(back.array, original.array)
    assert back.same_grid(original)


@pytest.mark.parametrize("writer", WRITERS)
def test_label_map_round_trips_as_labels_in_uint16(tmp_path, writer):
    ids = np.random.default_rng(2).integers(0, 120, size=SHAPE).astype(np.uint8)
    original = _volume("lps", ids, kind="label", synthetic=True)
    target = _write(writer, original, tmp_path)
    ds = _datasets(target)[0]
    assert ds.PixelRepresentation == 0 and ds.Modality == "CT"
    assert ds.SeriesDescription == "SYNTHETIC label map"
    back = read_dicom(target)
    assert (back.kind, back.units) == ("label", "id")
    np.testing.assert_array_equal(back.array, ids)


def _write_dicomdir_like(path: Path) -> None:
    """A Part 10 file without pixels, as a DICOMDIR is."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.FileSetID = "EXPORT"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_non_dicom_files_beside_a_series_are_skipped_and_progress_is_shown(tmp_path, capsys):
    original = _volume("lps")
    write_dicom_series(original, tmp_path / "s")
    (tmp_path / "s" / "README").write_text("scanner export\n")
    _write_dicomdir_like(tmp_path / "s" / "DICOMDIR")
    back = read_dicom(tmp_path / "s", progress=True)
    np.testing.assert_array_equal(back.array, original.array)
    assert "reading s" in capsys.readouterr().err


# --------------------------------------------------------------- synthetic marks


@pytest.mark.parametrize("writer", WRITERS)
def test_written_files_are_valid_part10_and_marked_synthetic(tmp_path, writer):
    target = _write(writer, _volume("lps", synthetic=True), tmp_path)
    for ds in _datasets(target):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.ImplementationClassUID == pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription.startswith("SYNTHETIC")
        assert ds.private_block(0x0011, "SYNTHGEN")[0x01].value == "SYNTHETIC"
        assert (ds.PatientID, str(ds.PatientName)) == ("SYNTHETIC", "SYNTHETIC^SYNTHGEN")
        assert ds.BurnedInAnnotation == "NO"
        assert f"synthgen {synthgen.__version__}" in ds.ImageComments
        assert "not for diagnostic use" in ds.ImageComments
    expected_class = "1.2.840.10008.5.1.4.1.1.2" if writer == "series" else "1.2.840.10008.5.1.4.1.1.2.1"
    assert ds.SOPClassUID == expected_class
    assert read_dicom(target).synthetic is True


def test_series_files_are_named_in_order_and_returned(tmp_path):
    files = write_dicom_series(_volume("lps"), tmp_path / "s")
    assert [f.name for f in files] == [f"IM{k:05d}.dcm" for k in range(1, SHAPE[2] + 1)]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [f.name for f in files]


def test_every_write_gets_fresh_uids(tmp_path):
    volume = _volume("lps")
    first = _datasets(_write("series", volume, tmp_path, "a"))
    second = _datasets(_write("series", volume, tmp_path, "b"))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({ds[keyword].value for ds in first}) == 1  # one study/series/frame within a write
        assert first[0][keyword].value != second[0][keyword].value
    sops = [ds.SOPInstanceUID for ds in first + second]
    assert len(set(sops)) == len(sops)


IDENTIFYING = [
    "PatientBirthDate", "PatientSex", "PatientAge", "PatientAddress", "OtherPatientIDs", "InstitutionName",
    "InstitutionAddress", "ReferringPhysicianName", "OperatorsName", "PerformingPhysicianName", "StationName",
    "DeviceSerialNumber", "AccessionNumber", "StudyID",
]  # fmt: skip


def _all_text(ds: pydicom.Dataset) -> list[str]:
    texts = []
    for elem in ds.iterall():
        if elem.VR not in ("SQ", "OB", "OW", "UN"):
            texts.append(str(elem.value))
    return texts


@pytest.mark.parametrize("writer", WRITERS)
def test_nothing_identifying_reaches_the_written_files(tmp_path, writer):
    volume = _volume(
        "lps", source="/data/Doe_John/ct", meta={"PatientName": "Doe^John", "InstitutionName": "St Elsewhere"}
    )
    for ds in _datasets(_write(writer, volume, tmp_path)):
        for keyword in IDENTIFYING:
            assert not ds.get(keyword), keyword
        text = " ".join(_all_text(ds))
        assert "Doe" not in text and "Elsewhere" not in text


def test_reader_keeps_no_identifying_tag_of_a_real_file(tmp_path):
    files = write_dicom_series(_volume("lps"), tmp_path / "s")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.InstitutionName, ds.PatientBirthDate = "Doe^John", "St Elsewhere", "19600101"
        ds.SeriesDescription = "CHEST"
        del ds[0x00110010]  # drop the synthgen private creator: now it looks like a real scan
        pydicom.dcmwrite(f, ds, enforce_file_format=True)
    back = read_dicom(tmp_path / "s")
    assert back.synthetic is False
    text = repr(back.meta)
    assert "Doe" not in text and "Elsewhere" not in text and "1960" not in text and "1.2." not in text
    assert back.meta["series_description"] == "CHEST" and back.meta["rescale_applied"] is True


# ------------------------------------------------------------------- rescale


def _edit(files, **tags) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        for keyword, value in tags.items():
            setattr(ds, keyword, value(ds) if callable(value) else value)
        pydicom.dcmwrite(f, ds, enforce_file_format=True)


def test_rescale_slope_and_intercept_are_applied_on_read(tmp_path):
    stored = np.random.default_rng(3).integers(0, 1500, size=SHAPE).astype(np.int16)
    files = write_dicom_series(_volume("lps", stored), tmp_path / "s")
    _edit(files, RescaleSlope="2", RescaleIntercept="-1024")
    back = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(back.array, stored.astype(np.float32) * 2 - 1024)
    assert back.array.dtype == np.float32


def test_per_slice_integer_intercepts_give_exact_int16_hu(tmp_path):
    stored = np.random.default_rng(4).integers(0, 3000, size=SHAPE).astype(np.int16)
    files = write_dicom_series(_volume("lps", stored), tmp_path / "s")
    _edit(files, RescaleIntercept=lambda ds: str(-1024 - ds.InstanceNumber))
    back = read_dicom(tmp_path / "s")
    assert back.array.dtype == np.int16
    expected = stored - 1024 - np.arange(1, SHAPE[2] + 1, dtype=np.int16)
    np.testing.assert_array_equal(back.array, expected)


def test_per_frame_rescale_overrides_the_shared_one_in_enhanced_files(tmp_path):
    original = _volume("oblique")
    path = write_dicom_multiframe(original, tmp_path / "m.dcm")
    ds = pydicom.dcmread(path)
    for k, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item = pydicom.Dataset()
        item.RescaleSlope, item.RescaleIntercept, item.RescaleType = "1", str(-10 * k), "HU"
        group.PixelValueTransformationSequence = [item]
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    back = read_dicom(path)
    np.testing.assert_array_equal(back.array, original.array - 10 * np.arange(SHAPE[2], dtype=np.int16))
    assert back.same_grid(original)


# ----------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file or folder") as e:
        read_dicom(tmp_path / "nope")
    _error_text(e, tmp_path / "nope")


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="folder holds no DICOM images") as e:
        read_dicom(tmp_path)
    _error_text(e, tmp_path)


def test_folder_with_a_text_file_only(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image\n" * 20)
    with pytest.raises(InputError, match="folder holds no DICOM images") as e:
        read_dicom(tmp_path)
    _error_text(e, tmp_path)
    with pytest.raises(InputError, match="not a DICOM file") as e:
        read_dicom(tmp_path / "notes.txt")
    _error_text(e, tmp_path / "notes.txt")


@pytest.mark.parametrize("fraction", [0.5, 0.1])
def test_truncated_file_alone_or_in_a_series(tmp_path, fraction):
    files = write_dicom_series(Volume(_hu((32, 32, 3)), _affine("lps")), tmp_path / "s")
    data = files[1].read_bytes()
    files[1].write_bytes(data[: int(len(data) * fraction)])
    for target in (files[1], tmp_path / "s"):
        with pytest.raises(InputError, match="truncated or corrupt DICOM file") as e:
            read_dicom(target)
        _error_text(e, files[1])  # the message names the broken file


def test_two_series_in_one_folder(tmp_path):
    a = write_dicom_series(_volume("lps"), tmp_path / "a")
    labels = _volume("lps", kind="label", array=np.ones(SHAPE, np.uint8), synthetic=True)
    b = write_dicom_series(labels, tmp_path / "b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in a + b:
        shutil.copy(f, mixed / f"{f.parent.name}_{f.name}")
    with pytest.raises(InputError, match=r"folder holds 2 DICOM series \(.*SYNTHETIC label map.*\); pass one") as e:
        read_dicom(mixed)
    _error_text(e, mixed)


def test_duplicate_slice_positions(tmp_path):
    files = write_dicom_series(_volume("lps"), tmp_path / "s")
    shutil.copy(files[2], tmp_path / "s" / "IM00099.dcm")
    with pytest.raises(InputError, match=r"duplicate slice positions .*from 0 to 2.5 mm") as e:
        read_dicom(tmp_path / "s")
    _error_text(e, tmp_path / "s")


def test_missing_slice_gives_non_uniform_spacing(tmp_path):
    files = write_dicom_series(_volume("lps"), tmp_path / "s")
    files[2].unlink()
    with pytest.raises(InputError, match=r"non-uniform slice spacing \(slice spacing from 2.5 to 5 mm\)") as e:
        read_dicom(tmp_path / "s")
    _error_text(e, tmp_path / "s")


def test_writers_refuse_to_overwrite_unless_asked(tmp_path):
    volume = _volume("lps")
    write_dicom_series(volume, tmp_path / "s")
    (tmp_path / "s" / "keep.txt").write_text("x")
    with pytest.raises(OverwriteError, match="folder is not empty"):
        write_dicom_series(volume, tmp_path / "s")
    (tmp_path / "s" / "notes").mkdir()
    (tmp_path / "s" / "notes" / "n.txt").write_text("y")
    (tmp_path / "s" / "IM00099.dcm").write_bytes(b"an older, longer series")
    write_dicom_series(volume, tmp_path / "s", overwrite=True)
    # --overwrite replaces the series' own files (stale slices of a longer series too), nothing else
    assert (tmp_path / "s" / "keep.txt").read_text() == "x"
    assert (tmp_path / "s" / "notes" / "n.txt").read_text() == "y"
    assert not (tmp_path / "s" / "IM00099.dcm").exists()
    assert sorted(p.name for p in (tmp_path / "s").glob("IM*.dcm")) == [
        f"IM{k + 1:05d}.dcm" for k in range(volume.shape[2])]
    write_dicom_multiframe(volume, tmp_path / "m.dcm")
    with pytest.raises(OverwriteError, match="already exists"):
        write_dicom_multiframe(volume, tmp_path / "m.dcm")
    write_dicom_multiframe(volume, tmp_path / "m.dcm", overwrite=True)


@pytest.mark.parametrize(
    ("volume", "match"),
    [
        (Volume(np.full((3, 3, 2), np.nan, np.float32), np.eye(4)), "NaN or infinite"),
        (Volume(-np.ones((3, 3, 2), np.int16), np.eye(4), kind="label"), r"label ids must be integers in 0\.\.65535"),
        (Volume(np.zeros((3, 3, 2)), [[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "perpendicular"),
    ],
    ids=["nan", "negative-label", "sheared"],
)
@pytest.mark.parametrize("writer", WRITERS)
def test_writers_reject_what_dicom_cannot_hold(tmp_path, volume, match, writer):
    with pytest.raises(InputError, match=match):
        _write(writer, volume, tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ atomicity


def _failing_dcmwrite(monkeypatch, fail_on_call: int) -> None:
    real = pydicom.dcmwrite
    calls = {"n": 0}

    def dcmwrite(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", dcmwrite)


def test_failed_series_write_leaves_no_folder_and_no_temp_files(tmp_path, monkeypatch):
    _failing_dcmwrite(monkeypatch, fail_on_call=3)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(_volume("lps"), tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_previous_series(tmp_path, monkeypatch):
    old = _volume("lps")
    write_dicom_series(old, tmp_path / "s")
    _failing_dcmwrite(monkeypatch, fail_on_call=2)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(_volume("lps", _hu(seed=9)), tmp_path / "s", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    np.testing.assert_array_equal(read_dicom(tmp_path / "s").array, old.array)


def test_failed_multiframe_write_leaves_no_file_and_no_temp_file(tmp_path, monkeypatch):
    _failing_dcmwrite(monkeypatch, fail_on_call=1)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_multiframe(_volume("lps"), tmp_path / "m.dcm")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------- synthetic or derived


def _text_of_files(target: Path) -> str:
    return " ".join(" ".join(_all_text(ds)) for ds in _datasets(target))


@pytest.mark.parametrize("writer", WRITERS)
def test_a_converted_real_scan_is_marked_derived_not_synthetic(tmp_path, writer):
    target = _write(writer, _volume("lps", source="/data/real/ct", synthetic=False), tmp_path)
    for ds in _datasets(target):
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.private_block(0x0011, "SYNTHGEN")[0x01].value == "DERIVED"
        assert ds.SeriesDescription.startswith("DERIVED")
    assert "SYNTHETIC" not in _text_of_files(target).upper()
    back = read_dicom(target)
    assert back.synthetic is False and (back.kind, back.units) == ("intensity", "HU")
    again = _write(writer, _volume("lps", synthetic=True), tmp_path, "again")
    assert read_dicom(again).synthetic is True
    assert all(ds.SeriesDescription.startswith("SYNTHETIC") for ds in _datasets(again))


def test_convert_of_a_real_scan_to_dicom_stays_not_synthetic(tmp_path, capsys):
    from synthgen import io
    from synthgen.cli import main

    io.write(_volume("lps"), tmp_path / "real.nii.gz")
    assert main(["convert", str(tmp_path / "real.nii.gz"), str(tmp_path / "series"), "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "series"), "-q"]) == 0
    assert re_line(capsys.readouterr().out, "synthetic") == "synthetic    no"
    assert "SYNTHETIC" not in _text_of_files(tmp_path / "series").upper()


def re_line(text: str, key: str) -> str:
    return next(line.strip() for line in text.splitlines() if line.startswith(key))


# ------------------------------------------------------------- single slices


def _one_slice_ct(path: Path, **tags) -> Path:
    """A single CT Image Storage slice (16x12 pixels) as a scanner writes one; ``tags`` override or delete (None)."""
    files = write_dicom_series(Volume(_hu((12, 16, 1)), _affine("lps")), path.parent / f"{path.stem}_series")
    ds = pydicom.dcmread(files[0])
    del ds[0x00110010]  # no synthgen mark: a real slice
    ds.SliceThickness, ds.SpacingBetweenSlices = "3", "20"
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("tags", "depth_mm"),
    [({}, 3.0), ({"SliceThickness": None}, 20.0), ({"SliceThickness": None, "SpacingBetweenSlices": None}, 1.0)],
    ids=["thickness", "spacing-between-slices", "neither"],
)
def test_a_single_ct_slice_is_a_one_slice_volume_as_deep_as_its_slice(tmp_path, tags, depth_mm):
    from synthgen import io

    path = _one_slice_ct(tmp_path / "slice.dcm", **tags)
    with pytest.raises(InputError, match=r"has one slice \(12x16x1\); a 3D volume is needed") as e:
        io.read(path)
    _error_text(e, path)
    vol = io.read(path, allow_one_slice=True)
    assert vol.shape == (12, 16, 1) and vol.synthetic is False
    np.testing.assert_allclose(vol.spacing, [SPACING[0], SPACING[1], depth_mm], rtol=1e-6)
    # k points along the slice normal (LPS +z = RAS +z for this axial slice)
    np.testing.assert_allclose(vol.affine[:3, 2], [0, 0, depth_mm], atol=1e-9)


def test_pydicoms_ct_slice_is_read_by_info_and_convert_and_refused_by_drr(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    from synthgen import io
    from synthgen.cli import main

    ct_small = get_testdata_file("CT_small.dcm")
    assert main(["info", ct_small, "-q"]) == 0
    out = capsys.readouterr().out
    assert re_line(out, "shape") == "shape        128x128x1 voxels"
    assert "0.6615x0.6615x5 mm" in re_line(out, "spacing")
    assert main(["convert", ct_small, str(tmp_path / "slice.nii.gz"), "-q"]) == 0
    capsys.readouterr()
    converted = io.read(tmp_path / "slice.nii.gz", allow_one_slice=True)
    np.testing.assert_array_equal(converted.numpy(), io.read(ct_small, allow_one_slice=True).numpy())
    assert main(["drr", ct_small, "--out", str(tmp_path / "drr"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synthgen drr: error: ") and "has one slice (128x128x1); a 3D volume is needed" in err
    assert len(err.splitlines()) == 1


def _testdata(name: str) -> str:
    """A file of pydicom's test data (including the pydicom-data package's); skips when it is not installed."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} comes with the pydicom-data package, not installed")
    return path


def test_real_512x512_ct_slices_uncompressed_and_jpeg2000_read_alike(capsys):
    from synthgen import io
    from synthgen.cli import main

    plain, j2k = _testdata("693_UNCR.dcm"), _testdata("693_J2KR.dcm")
    a, b = io.read(plain, allow_one_slice=True), io.read(j2k, allow_one_slice=True)
    assert a.shape == b.shape == (512, 512, 1)
    np.testing.assert_allclose(a.spacing, [0.478516, 0.478516, 5.0])  # SliceThickness 5, not SpacingBetweenSlices 20
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.same_grid(b)
    for path in (_testdata("693_UNCI.dcm"), j2k):
        assert main(["info", path, "-q"]) == 0
        assert re_line(capsys.readouterr().out, "shape") == "shape        512x512x1 voxels"


# --------------------------------------------------------- compressed pixels


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"]
)
def test_lossless_transfer_syntaxes_read_as_the_uncompressed_image(name):
    from pydicom.data import get_testdata_file

    from synthgen import io

    plain = io.read(get_testdata_file("MR_small.dcm"), allow_one_slice=True)
    packed = io.read(get_testdata_file(name), allow_one_slice=True)
    assert packed.shape == plain.shape == (64, 64, 1)
    np.testing.assert_array_equal(packed.numpy(), plain.numpy())
    assert packed.same_grid(plain)


def test_jpeg_ls_near_lossless_errs_by_at_most_its_bound(tmp_path):
    from pydicom.data import get_testdata_file
    from pydicom.uid import JPEGLSNearLossless

    from synthgen import io

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.compress(JPEGLSNearLossless, jls_error=3)
    pydicom.dcmwrite(tmp_path / "near.dcm", ds, enforce_file_format=True)
    plain = io.read(get_testdata_file("MR_small.dcm"), allow_one_slice=True).numpy().astype(int)
    near = io.read(tmp_path / "near.dcm", allow_one_slice=True).numpy().astype(int)
    assert 0 < np.abs(near - plain).max() <= 3


def _placed(source: str, path: Path) -> Path:
    """``source`` (a file without patient geometry) with an axial position, pixel data untouched."""
    ds = pydicom.dcmread(source)
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 2
    pydicom.dcmwrite(path, ds)
    return path


@pytest.mark.parametrize(
    ("name", "rows", "columns", "values"),
    [  # reference values from pydicom's own pixel-data tests, at [row, columns]
        ("JPEG-LL.dcm", 400, slice(124, 132), (60, 58, 61, 68, 59, 65, 64, 67)),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", 300, slice(512, 520), (26, 26, 25, 22, 19, 16, 14, 15)),
    ],
)
def test_jpeg_lossless_reads(tmp_path, name, rows, columns, values):
    from synthgen import io

    path = _placed(_testdata(name), tmp_path / name)
    assert "Lossless" in pydicom.dcmread(path).file_meta.TransferSyntaxUID.name
    vol = io.read(path, allow_one_slice=True)
    assert tuple(vol.numpy()[columns, rows, 0]) == values


def test_jpeg_ls_near_lossless_16_bit_reads(tmp_path):
    from pydicom.data import get_testdata_file

    from synthgen import io

    path = _placed(get_testdata_file("JPEGLSNearLossless_16.dcm"), tmp_path / "jls.dcm")
    vol = io.read(path, allow_one_slice=True)
    np.testing.assert_array_equal(vol.numpy()[:, :, 0], pydicom.dcmread(path).pixel_array.T)


def test_missing_decoder_is_one_line_naming_the_syntax_and_the_package(tmp_path, monkeypatch):
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder

    from synthgen import io

    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    decoder = get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID)
    monkeypatch.setattr(decoder, "_available", {})  # as if no JPEG-LS plugin were installed
    with pytest.raises(InputError) as e:
        io.read(path, allow_one_slice=True)
    assert _error_text(e, Path(path)).endswith(
        ": cannot decode JPEG-LS Lossless Image Compression pixel data: no decoder is installed; "
        "pip install pylibjpeg pylibjpeg-libjpeg"
    )


def test_transfer_syntax_without_any_decoder_says_so(tmp_path):
    from pydicom.data import get_testdata_file

    from synthgen import io

    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    pydicom.dcmwrite(tmp_path / "video.dcm", ds)
    with pytest.raises(InputError, match="cannot decode MPEG2 .* pixel data: no decoder exists") as e:
        io.read(tmp_path / "video.dcm", allow_one_slice=True)
    _error_text(e, tmp_path / "video.dcm")


# --------------------------------------------------------------- DICOM SEG


def _labels(grid: str = "lps", synthetic: bool = True) -> Volume:
    """A label map with ids that are not segment numbers; ``grid`` "las" is left-handed, as generated CTs are."""
    from synthgen.vocab import Vocabulary

    ids = np.zeros(SHAPE, np.uint8)
    ids[1:5, 1:4, 1:4] = 5  # liver
    ids[2:4, 2:3, 2:3] = 201  # a lesion inside it: ids that are not segment numbers
    ids[0, 0, 0] = 1
    ids[6, 5, 4] = 90
    affine = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0]) if grid == "las" else _affine(grid)
    return Volume(ids, affine, kind="label", synthetic=synthetic, vocab=Vocabulary.default())


@pytest.mark.parametrize("grid", ["lps", "ras", "oblique", "tilted", "las"])
def test_seg_round_trip_gives_the_label_map_on_the_ct_grid(tmp_path, grid):
    from synthgen import io
    from synthgen.io.dicom_seg import read_dicom_seg, write_dicom_seg

    labels = _labels(grid)
    io.write(Volume(_hu(), labels.affine, synthetic=True), tmp_path / "ct")
    seg = write_dicom_seg(labels, tmp_path / "labels.dcm", series_dir=tmp_path / "ct")
    ds = pydicom.dcmread(seg)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    names = [str(item.SegmentLabel) for item in ds.SegmentSequence]
    assert names == [labels.vocab.name(i) for i in (1, 5, 90, 201)]
    referenced = {item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {d.SOPInstanceUID for d in _datasets(tmp_path / "ct")}
    for back in (read_dicom_seg(seg), io.read(seg)):
        assert (back.kind, back.units) == ("label", "id")
        np.testing.assert_array_equal(back.numpy(), labels.numpy())
        np.testing.assert_allclose(back.affine, labels.affine, atol=1e-9)
        assert back.same_grid(io.read(tmp_path / "ct"))
        assert [back.vocab.name(i) for i in (1, 5, 90, 201)] == names
        assert back.synthetic is True


def test_seg_is_marked_and_carries_nothing_of_a_source_scan(tmp_path):
    from synthgen import io
    from synthgen.io.dicom_seg import read_dicom_seg, write_dicom_seg

    for synthetic, mark in ((True, "SYNTHETIC"), (False, "DERIVED")):
        folder = tmp_path / mark
        io.write(Volume(_hu(), _affine("lps"), synthetic=synthetic, source="/data/Doe_John"), folder / "ct")
        seg = write_dicom_seg(_labels(synthetic=synthetic), folder / "labels.dcm", series_dir=folder / "ct")
        ds = pydicom.dcmread(seg)
        assert ds.private_block(0x0011, "SYNTHGEN")[0x01].value == mark
        assert ds.SeriesDescription == f"{mark} label map" and ds.Manufacturer == "synthgen"
        assert ds.DeviceSerialNumber == "synthgen"  # required in a SEG: names the software, no scanner
        for keyword in set(IDENTIFYING) - {"DeviceSerialNumber"}:
            assert not ds.get(keyword), keyword
        assert "Doe" not in " ".join(_all_text(ds))
        assert ("SYNTHETIC" in " ".join(_all_text(ds)).upper()) is synthetic
        assert read_dicom_seg(seg).synthetic is synthetic


def test_seg_of_another_tool_is_placed_on_the_grid_its_frames_span(tmp_path):
    from synthgen import io
    from synthgen.io.dicom_seg import read_dicom_seg, write_dicom_seg

    labels = _labels("oblique")
    io.write(Volume(_hu(), labels.affine), tmp_path / "ct")
    ds = pydicom.dcmread(write_dicom_seg(labels, tmp_path / "labels.dcm", series_dir=tmp_path / "ct"))
    del ds[0x00110010]  # no synthgen record: names, not ids, and no grid
    for item in ds.SegmentSequence:
        del item[0x00110010]
    pydicom.dcmwrite(tmp_path / "foreign.dcm", ds, enforce_file_format=True)
    back = read_dicom_seg(tmp_path / "foreign.dcm")
    np.testing.assert_array_equal(back.numpy(), labels.numpy())  # k = 0 and k = 4 hold labels: the full span
    np.testing.assert_allclose(back.affine, labels.affine, atol=1e-4)


def test_seg_writer_refuses_what_it_cannot_reference(tmp_path):
    from synthgen import io
    from synthgen.io.dicom_seg import write_dicom_seg

    io.write(Volume(_hu(), _affine("lps")), tmp_path / "ct")
    out = tmp_path / "labels.dcm"
    shifted = _affine("lps")
    shifted[2, 3] += 1.0  # 1 mm between the CT's slices
    moved = _labels("lps").replace(affine=shifted)
    cases = [
        (moved, r"label map is not on the grid of this series \(no slice at the position of k = 0\)"),
        (_labels("ras"), r"label map is not on the grid of this series \(orientation differs\)"),
        (_labels().with_array(np.zeros(SHAPE, np.uint8)), "no labelled voxel"),
        (Volume(_hu(), _affine("lps")), "holds a label map"),
    ]
    for labels, match in cases:
        with pytest.raises(InputError, match=match):
            write_dicom_seg(labels, out, series_dir=tmp_path / "ct")
        assert not out.exists()
    write_dicom_seg(_labels(), out, series_dir=tmp_path / "ct")
    with pytest.raises(OverwriteError, match="already exists"):
        write_dicom_seg(_labels(), out, series_dir=tmp_path / "ct")
    write_dicom_seg(_labels(), out, series_dir=tmp_path / "ct", overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_generate_as_dicom_writes_the_labels_as_seg_beside_the_series(tmp_path):
    from synthgen import io
    from synthgen.io.record import Record
    from synthgen.outputs import write_case

    labels = _labels("lps")
    ct = Volume(_hu(), labels.affine, synthetic=True)
    paths = write_case(tmp_path, "synth", ct=ct, labels=labels, record=Record.create("test"), format="dicom")
    assert paths["seg"] == tmp_path / "synth_labels.dcm" and paths["labels"] == tmp_path / "synth_labels.nii.gz"
    seg = io.read(paths["seg"])
    np.testing.assert_array_equal(seg.numpy(), labels.numpy())
    assert seg.same_grid(io.read(paths["ct"])) and seg.same_grid(io.read(paths["labels"]))
    _, seg_back = io.read_pair(paths["ct"], paths["seg"])  # what the engines take: CT + its SEG
    assert seg_back.vocab.name(201) == labels.vocab.name(201)
    series = {d.SeriesInstanceUID for d in _datasets(paths["ct"])}
    assert pydicom.dcmread(paths["seg"]).ReferencedSeriesSequence[0].SeriesInstanceUID in series
