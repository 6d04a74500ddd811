"""Hostile and everyday bad inputs against the real ``synthgen`` CLI: every one must fail cleanly.

Each case builds its inputs in a fresh folder ``WORK/<id>/{inputs,out,outside}``, runs the
CLI as a subprocess (``synthgen --quiet ...``, ``OMP_NUM_THREADS=1``, 120 s timeout, cwd
``out/``) and is classified:

  clean      expected an error; got exit 2 and exactly one stderr line ``synthgen CMD: error: ...``
  ok         a control (or an "either" case) succeeded and its post-check passed
  traceback  stderr holds ``Traceback``, or the exit status is neither 0 nor 2
  silent     expected an error, got exit 0
  outside    a file appeared / changed / vanished outside ``out/`` (in ``outside/``, beside the
             case folders, or at the case folder's top), or an input file changed
  messy      exit 2 but not exactly one ``synthgen CMD: error:`` line on stderr
  fail       a control failed, a preparation step failed, or a post-check (e.g. the user's
             files are still there) failed
  hang       ran past the timeout

Path-escape cases aim their escape at the case's ``outside/`` folder, so a write that escapes
is seen there.  Prints a table and the counts; writes ``DIR/bad_inputs.json`` (one row per case).
Exit status 1 when any case is traceback, silent, outside, messy, fail or hang; 0 otherwise.

    .venv/bin/python benchmarks/bad_inputs.py [--out DIR] [--only SUBSTR] [--jobs 1] [--keep]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SYNTHGEN = Path(sys.executable).with_name("synthgen")
TIMEOUT_S = 120
MEM_LIMIT_GB = 6  # address-space cap per CLI process: a runaway allocation fails fast instead of swamping the box
BAD = ("traceback", "silent", "outside", "messy", "fail", "hang")


# --------------------------------------------------------------------------- fixtures
def _affine(shape, spacing):
    a = np.diag([*map(float, spacing), 1.0])
    a[:3, 3] = -(np.asarray(shape) - 1) / 2 * np.asarray(spacing, float)  # centred on the world origin
    return a


def write_nifti(path: Path, array: np.ndarray, affine=None, spacing=(2.0, 2.0, 2.0)) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    affine = _affine(array.shape[:3], spacing) if affine is None else affine
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def small_ct_arrays(shape=(32, 32, 24)):
    """A 32x32x24 CT at 2 mm (air, a body ellipse of soft tissue, a bright spine) and its label map
    in the default vocabulary (liver 5, spleen 1, kidney_right 2)."""
    i, j, _ = np.indices(shape)
    ci, cj = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    body = ((i - ci) / (shape[0] * 0.45)) ** 2 + ((j - cj) / (shape[1] * 0.4)) ** 2 <= 1
    ct = np.full(shape, -1000, np.int16)
    ct[body] = 40
    lab = np.zeros(shape, np.uint8)
    lab[4:18, 8:24, 4:20] = 5
    lab[20:27, 10:18, 6:16] = 1
    lab[18:24, 20:26, 4:10] = 2
    ct[lab == 5] = 60
    ct[lab == 1] = 50
    ct[lab == 2] = 150
    ct[14:18, 24:28, :] = 700
    rng = np.random.default_rng(0)
    ct = (ct + rng.normal(0, 8, shape) * body).astype(np.int16)
    return ct, lab


def forged_nifti(path: Path, dims, *, datatype=4, bitpix=16, body=b"\0" * 64, pixdim=(1, 2, 2, 2),
                 affine=None, gz=None) -> Path:
    """A NIfTI-1 header claiming ``dims`` (no sanity: huge, negative, zero) followed by a tiny body."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    block = bytearray(hdr.binaryblock)
    dim = np.zeros(8, "<i2")
    dim[0] = len(dims)
    dim[1:1 + len(dims)] = [max(min(d, 32767), -32768) for d in dims]
    dim[1 + len(dims):] = 1
    block[40:56] = dim.tobytes()
    block[70:72] = np.int16(datatype).astype("<i2").tobytes()
    block[72:74] = np.int16(bitpix).astype("<i2").tobytes()
    pd = np.zeros(8, "<f4")
    pd[:len(pixdim)] = pixdim
    block[76:108] = pd.tobytes()
    block[108:112] = np.float32(352).astype("<f4").tobytes()  # vox_offset
    if affine is not None:  # sform_code 1 and its rows; qform_code stays 0
        a = np.asarray(affine, "<f4")
        block[254:256] = np.int16(1).astype("<i2").tobytes()
        block[280:328] = a[:3].tobytes()
    data = bytes(block) + b"\0\0\0\0" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    gz = path.name.endswith(".gz") if gz is None else gz
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


class Shared:
    """Fixtures built once: the small CT + labels, a CLI phantom, an nnU-Net toy dataset, a geometry."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        ct, lab = small_ct_arrays()
        self.ct = write_nifti(root / "ct.nii.gz", ct)
        self.labels = write_nifti(root / "labels.nii.gz", lab)
        self.phantom = root / "P"
        _cli_or_die(["phantom", "--out", str(self.phantom), "shape=[48,40,32]", "spacing=[7,7,9]", "seed=1"])
        self.phantom_ct = self.phantom / "phantom_ct.nii.gz"
        self.phantom_labels = self.phantom / "phantom_labels.nii.gz"
        self.ds = root / "DS"
        self._toy_dataset(self.ds, 5)
        self.geometry = {
            "name": "mine", "source_mm": [0.0, -820.0, 0.0], "detector_center_mm": [0.0, 200.0, 0.0],
            "u_axis": [-1.0, 0.0, 0.0], "v_axis": [0.0, 0.0, -1.0], "pixel_spacing_mm": [2.0, 2.0], "size": [32, 32]}

    def _toy_dataset(self, root: Path, n: int) -> None:
        """The tests' toy set (tests/conftest.py): CLI phantoms at 8 mm relabelled to liver 1, kidney 2,
        liver_tumor 3 (a 3x3x3 tumour in case 0 only, so the tumour is rare)."""
        import nibabel as nib

        for k in range(n):
            ph = self.root / f"toy_ph{k}"
            _cli_or_die(["phantom", "--out", str(ph), "shape=[40,32,36]", "spacing=[8,8,8]", f"seed={k}"])
            ct = nib.load(str(ph / "phantom_ct.nii.gz"))
            src = np.asarray(nib.load(str(ph / "phantom_labels.nii.gz")).dataobj)
            arr = np.zeros(src.shape, np.uint8)
            arr[src == 5] = 1
            arr[np.isin(src, (2, 3))] = 2
            if k == 0:
                c = np.argwhere(arr == 1).mean(0).round().astype(int)
                arr[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2] = 3
            (root / "imagesTr").mkdir(parents=True, exist_ok=True)
            (root / "labelsTr").mkdir(parents=True, exist_ok=True)
            shutil.copy2(ph / "phantom_ct.nii.gz", root / "imagesTr" / f"toy_{k:03d}_0000.nii.gz")
            write_nifti(root / "labelsTr" / f"toy_{k:03d}.nii.gz", arr, affine=ct.affine)
        write_dataset_json(root, n)


TOY_LABELS = {"background": 0, "liver": 1, "kidney": 2, "liver_tumor": 3}


def write_dataset_json(root: Path, n: int, labels: dict | None = None) -> None:
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels or TOY_LABELS, "numTraining": n, "file_ending": ".nii.gz"}))


def _cli_or_die(argv):
    r = subprocess.run([str(SYNTHGEN), "--quiet", *argv], capture_output=True, text=True, env=_env(), timeout=300,
                       check=False)
    if r.returncode != 0:
        raise SystemExit(f"fixture step failed: synthgen {' '.join(argv)}\n{r.stderr}")


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               TQDM_DISABLE="1")
    return env


# --------------------------------------------------------------------------- a case's folder
class Ctx:
    def __init__(self, root: Path, shared: Shared):
        self.root, self.shared = root, shared
        self.inputs, self.out, self.outside = root / "inputs", root / "out", root / "outside"
        for d in (self.inputs, self.out, self.outside):
            d.mkdir(parents=True)
        (self.outside / "sentinel.txt").write_text("do not touch\n")

    def i(self, name: str) -> str:
        return str(self.inputs / name)

    def o(self, name: str = "") -> str:
        return str(self.out / name) if name else str(self.out)

    def text(self, name: str, content: str | bytes, where: Path | None = None) -> str:
        p = (where or self.inputs) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(p)

    def ct(self) -> tuple[str, str]:
        shutil.copy2(self.shared.ct, self.inputs / "ct.nii.gz")
        shutil.copy2(self.shared.labels, self.inputs / "labels.nii.gz")
        return self.i("ct.nii.gz"), self.i("labels.nii.gz")

    def phantom(self) -> tuple[str, str]:
        shutil.copy2(self.shared.phantom_ct, self.inputs / "ph_ct.nii.gz")
        shutil.copy2(self.shared.phantom_labels, self.inputs / "ph_labels.nii.gz")
        return self.i("ph_ct.nii.gz"), self.i("ph_labels.nii.gz")

    def dataset(self, where: Path | None = None, name: str = "DS") -> Path:
        dst = (where or self.inputs) / name
        shutil.copytree(self.shared.ds, dst)
        return dst

    def geometry(self, fname: str = "g.json", **changes) -> str:
        g = {**self.shared.geometry, **changes}
        return self.text(fname, json.dumps(g))

    def nifti(self, name: str, array, **kw) -> str:
        return str(write_nifti(self.inputs / name, np.asarray(array), **kw))


@dataclasses.dataclass
class Case:
    id: str
    expect: str  # "error" | "ok" | "either"
    build: Callable[[Ctx], list]  # returns argv, or a list of argvs (all but the last are preparation)
    check: Callable[[Ctx, list], str | None] | None = None  # post-check: None or what is wrong
    note: str = ""


CASES: list[Case] = []


def case(id: str, expect: str = "error", check=None, note: str = ""):
    def deco(fn):
        CASES.append(Case(id, expect, fn, check, note))
        return fn

    return deco


def E(id: str, build, note: str = ""):
    """Shorthand for a case expected to fail cleanly."""
    CASES.append(Case(id, "error", build, None, note))


YAML_BAD = {
    "syntax": "seed: [1, 2\nshape: {a: }\n  - x\n",
    "python_tag": "!!python/object/apply:os.system ['touch ../outside/pwned_by_yaml']\n",
    "list": "- 1\n- 2\n- 3\n",
    "binary": bytes(range(256)) * 4,
    "env": "seed: ${oc.env:HOME}\n",
}


# ----------------------------------------------------------------------------- info
E("info/missing_file", lambda c: ["info", c.i("nope.nii.gz")])
E("info/empty_file", lambda c: ["info", c.text("empty.nii.gz", b"")])
E("info/empty_folder", lambda c: (c.inputs.joinpath("d").mkdir(), ["info", c.i("d")])[1])
E("info/wrong_extension_text", lambda c: ["info", c.text("ct.txt", "hello\n")])
E("info/garbage_niigz", lambda c: ["info", c.text("junk.nii.gz", os.urandom(4096))])
E("info/gzip_of_garbage", lambda c: ["info", c.text("junk2.nii.gz", gzip.compress(os.urandom(4096)))])


def _truncated(c: Ctx):
    data = gzip.decompress(c.shared.ct.read_bytes())
    return ["info", c.text("trunc.nii.gz", gzip.compress(data[: len(data) // 3]))]


E("info/truncated_body", _truncated)
E("info/huge_dims_nii", lambda c: ["info", str(forged_nifti(c.inputs / "huge.nii", (30000, 30000, 30000)))])
E("info/huge_dims_niigz", lambda c: ["info", str(forged_nifti(c.inputs / "huge.nii.gz", (30000, 30000, 30000)))])
E("info/negative_dims", lambda c: ["info", str(forged_nifti(c.inputs / "neg.nii.gz", (-5, 10, 10)))])
E("info/zero_dim", lambda c: ["info", str(forged_nifti(c.inputs / "zero.nii.gz", (0, 10, 10)))])
E("info/nan_affine", lambda c: ["info", str(forged_nifti(c.inputs / "nanaff.nii.gz", (8, 8, 8), body=b"\0" * 1024,
                                                     affine=[[np.nan, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]]))])
E("info/zero_spacing", lambda c: ["info", str(forged_nifti(c.inputs / "zsp.nii.gz", (8, 8, 8), body=b"\0" * 1024,
                                                       pixdim=(1, 0, 0, 0)))])
E("info/singular_affine", lambda c: ["info", str(forged_nifti(c.inputs / "sing.nii.gz", (8, 8, 8), body=b"\0" * 1024,
                                                          affine=[[2, 0, 0, 0], [2, 0, 0, 0], [0, 0, 2, 0]]))])
E("info/nrrd_huge_sizes", lambda c: ["info", c.text("huge.nrrd", b"NRRD0004\ntype: short\ndimension: 3\n"
                                                     b"sizes: 30000 30000 30000\nencoding: raw\nendian: little\n\n"
                                                     + b"\0" * 64)])
E("info/mha_huge_dims", lambda c: ["info", c.text("huge.mha", b"ObjectType = Image\nNDims = 3\nDimSize = 30000 30000 "
                                                   b"30000\nElementType = MET_SHORT\nElementSpacing = 1 1 1\n"
                                                   b"ElementDataFile = LOCAL\n" + b"\0" * 64)])
E("info/mhd_data_file_missing", lambda c: ["info", c.text("x.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\n"
                                                           "ElementType = MET_SHORT\nElementDataFile = x.raw\n")])
E("info/labels_mismatched_grid", lambda c: ["info", c.ct()[0], "--labels",
                                            c.nifti("lab_small.nii.gz", np.zeros((16, 16, 12), np.uint8))])
E("info/vocab_junk", lambda c: ["info", c.ct()[1], "--as-labels", "--vocab", c.text("v.json", "{not json")])
E("info/no_path", lambda c: ["info"])
E("info/dicom_folder_of_junk", lambda c: ["info", (c.text("dcm/IM0001.dcm", os.urandom(512)),
                                                   c.text("dcm/IM0002.dcm", b"DICM" * 40), c.i("dcm"))[2]])
case("info/control", "ok")(lambda c: ["info", c.ct()[0], "--labels", c.i("labels.nii.gz")])

# ---------------------------------------------------------------------------- convert
E("convert/missing_input", lambda c: ["convert", c.i("nope.nii.gz"), c.o("x.nrrd")])
E("convert/unknown_output_extension", lambda c: ["convert", c.ct()[0], c.o("x.xyz")])


def _parent_file(c: Ctx, tail: str) -> str:
    c.text("afile", "i am a file\n", where=c.out)
    return c.o(f"afile/{tail}")


E("convert/output_parent_is_file", lambda c: ["convert", c.ct()[0], _parent_file(c, "sub/x.nrrd")])
E("convert/output_is_input", lambda c: ["convert", c.ct()[0], c.i("ct.nii.gz")])
E("convert/huge_dims_input", lambda c: ["convert", str(forged_nifti(c.inputs / "huge.nii.gz", (30000,) * 3)),
                                        c.o("x.nrrd")])
E("convert/empty_input", lambda c: ["convert", c.text("e.nii.gz", b""), c.o("x.nrrd")])
E("convert/input_is_folder_of_text", lambda c: ["convert", (c.text("f/readme.txt", "hi"), c.i("f"))[1],
                                                c.o("x.nii.gz")])
E("convert/4d_input", lambda c: ["convert", c.nifti("4d.nii.gz", np.zeros((8, 8, 8, 3), np.int16)), c.o("x.nrrd")])
E("convert/float_labels", lambda c: ["convert", c.nifti("fl.nii.gz", np.random.default_rng(0).random((8, 8, 8))
                                                        .astype(np.float32) * 3.7), c.o("x.nii.gz"), "--as-labels"])
E("convert/negative_labels", lambda c: ["convert", c.nifti("nl.nii.gz", -np.ones((8, 8, 8), np.int16) * 3),
                                        c.o("x.nii.gz"), "--as-labels"])


def _nonempty_folder(c: Ctx):
    c.text("series/notes.txt", "mine\n", where=c.out)
    return ["convert", c.ct()[0], c.o("series")]


E("convert/into_nonempty_folder", _nonempty_folder)


def _exists(c: Ctx):
    ct = c.ct()[0]
    return [["convert", ct, c.o("x.nrrd")], ["convert", ct, c.o("x.nrrd")]]


E("convert/exists_without_overwrite", _exists)


def _two_records_check(c: Ctx, results) -> str | None:
    d = c.out / "d"
    imgs = sorted(p.name for p in d.iterdir() if not p.name.endswith(".json"))
    recs = sorted(p.name for p in d.glob("*.json"))
    if imgs != ["x.mha", "x.nrrd"] or len(recs) != 2:
        return f"expected x.nrrd + x.mha and two records, found {sorted(p.name for p in d.iterdir())}"
    return None


case("convert/two_outputs_one_stem", "ok", check=_two_records_check)(
    lambda c: [["convert", c.ct()[0], c.o("d/x.nrrd")], ["convert", c.i("ct.nii.gz"), c.o("d/x.mha")]])


def _overwrite_keeps(c: Ctx):
    ct = c.ct()[0]
    series = c.o("series")
    return [["convert", ct, series],
            ["__shell__", lambda: (c.text("series/mine.txt", "user notes\n", where=c.out),
                                   c.text("series/sub/other.nii.gz", b"user data", where=c.out))],
            ["convert", ct, series, "--overwrite"]]


def _overwrite_check(c: Ctx, results) -> str | None:
    s = c.out / "series"
    if not (s / "mine.txt").is_file() or (s / "mine.txt").read_text() != "user notes\n":
        return "series/mine.txt (the user's file) was deleted or changed"
    if not (s / "sub" / "other.nii.gz").is_file():
        return "series/sub/other.nii.gz (the user's file) was deleted"
    return None


case("convert/overwrite_keeps_user_files", "ok", check=_overwrite_check)(_overwrite_keeps)
case("convert/control_nrrd", "ok")(lambda c: ["convert", c.ct()[0], c.o("x.nrrd")])

# ---------------------------------------------------------------------------- phantom
PH = ["shape=[24,20,16]", "spacing=[14,14,18]"]
E("phantom/name_escape", lambda c: ["phantom", "--out", c.o(), "--name", "../outside/X", *PH])
E("phantom/name_escape_deep", lambda c: ["phantom", "--out", c.o("a/b"), "--name", "../../../outside/X", *PH])
E("phantom/name_slash", lambda c: ["phantom", "--out", c.o(), "--name", "a/b", *PH])
E("phantom/huge_shape", lambda c: ["phantom", "--out", c.o(), "shape=[4096,4096,4096]"])
E("phantom/negative_shape", lambda c: ["phantom", "--out", c.o(), "shape=[-4,32,32]"])
E("phantom/shape_two_values", lambda c: ["phantom", "--out", c.o(), "shape=[32,32]"])
E("phantom/zero_spacing", lambda c: ["phantom", "--out", c.o(), "shape=[16,16,16]", "spacing=[0,0,0]"])
E("phantom/nan_spacing", lambda c: ["phantom", "--out", c.o(), "shape=[16,16,16]", "spacing=[nan,2,2]"])
E("phantom/negative_noise", lambda c: ["phantom", "--out", c.o(), *PH, "noise_hu=-5"])
E("phantom/unknown_key", lambda c: ["phantom", "--out", c.o(), *PH, "bogus=1"])
E("phantom/wrong_type", lambda c: ["phantom", "--out", c.o(), *PH, "seed=abc"])
E("phantom/override_without_equals", lambda c: ["phantom", "--out", c.o(), *PH, "seed"])
E("phantom/override_env_resolver", lambda c: ["phantom", "--out", c.o(), *PH, "seed=${oc.env:HOME}"])
def _phantom_config(text):
    return lambda c: ["phantom", "--out", c.o(), "--config", c.text("cfg.yaml", text), *PH]


for _k, _v in YAML_BAD.items():
    E(f"phantom/config_yaml_{_k}", _phantom_config(_v))
E("phantom/config_env_resolver_nested", lambda c: ["phantom", "--out", c.o(), "--config",
                                                   c.text("cfg.yaml", "shape: [16, 16, 16]\nseed: ${oc.env:PATH,0}\n")])
E("phantom/config_missing", lambda c: ["phantom", "--out", c.o(), "--config", c.i("nope.yaml")])
E("phantom/config_is_folder", lambda c: ["phantom", "--out", c.o(), "--config", str(c.inputs)])
E("phantom/config_unknown_key", lambda c: ["phantom", "--out", c.o(), "--config", c.text("cfg.yaml", "sizes: [1,2]\n")])
E("phantom/out_parent_is_file", lambda c: ["phantom", "--out", _parent_file(c, "sub"), *PH])
E("phantom/exists_without_overwrite", lambda c: [["phantom", "--out", c.o(), *PH], ["phantom", "--out", c.o(), *PH]])
case("phantom/control", "ok")(lambda c: ["phantom", "--out", c.o(), *PH])

# -------------------------------------------------------------------------------- drr
DRR = ["--size", "32", "--view", "PA"]
E("drr/size_100000", lambda c: ["drr", c.ct()[0], "--size", "100000", "--out", c.o()])
E("drr/size_zero", lambda c: ["drr", c.ct()[0], "--size", "0", "--out", c.o()])
E("drr/geometry_size_100000", lambda c: ["drr", c.ct()[0], "--geometry", c.geometry(size=[100000, 100000]),
                                         "--out", c.o()])
E("drr/geometry_name_escape", lambda c: ["drr", c.ct()[0], "--geometry", c.geometry(name="../outside/x"),
                                         "--out", c.o()])
E("drr/geometry_name_escape_deep", lambda c: ["drr", c.ct()[0], "--geometry", c.geometry(name="../../outside/x"),
                                              "--out", c.o("a")])
E("drr/geometry_bad_json", lambda c: ["drr", c.ct()[0], "--geometry", c.text("g.json", "{"), "--out", c.o()])
E("drr/geometry_is_list", lambda c: ["drr", c.ct()[0], "--geometry", c.text("g.json", "[1, 2]"), "--out", c.o()])
E("drr/geometry_missing_key", lambda c: ["drr", c.ct()[0], "--geometry", c.text("g.json", json.dumps(
    {k: v for k, v in c.shared.geometry.items() if k != "u_axis"})), "--out", c.o()])
E("drr/geometry_nan_source", lambda c: ["drr", c.ct()[0], "--geometry", c.text("g.json", json.dumps(
    c.shared.geometry).replace("-820.0", "NaN")), "--out", c.o()])
E("drr/geometry_zero_axis", lambda c: ["drr", c.ct()[0], "--geometry", c.geometry(u_axis=[0, 0, 0]), "--out", c.o()])
E("drr/geometry_string_size", lambda c: ["drr", c.ct()[0], "--geometry", c.geometry(size="big"), "--out", c.o()])
E("drr/geometry_missing_file", lambda c: ["drr", c.ct()[0], "--geometry", c.i("nope.json"), "--out", c.o()])
E("drr/unknown_view", lambda c: ["drr", c.ct()[0], "--view", "XYZ", "--size", "32", "--out", c.o()])
E("drr/view_name_escape", lambda c: ["drr", c.ct()[0], "--view", "../outside/PA", "--size", "32", "--out", c.o()])
E("drr/carm_angle_absurd", lambda c: ["drr", c.ct()[0], "--view", "LAO99999", "--size", "32", "--out", c.o()])
E("drr/scatter_negative", lambda c: ["drr", c.ct()[0], *DRR, "--scatter", "-1", "--out", c.o()])
E("drr/kev_negative", lambda c: ["drr", c.ct()[0], *DRR, "--kev", "-5", "--out", c.o()])
E("drr/kvp_huge", lambda c: ["drr", c.ct()[0], *DRR, "--kvp", "1e6", "--out", c.o()])
E("drr/dose_nan", lambda c: ["drr", c.ct()[0], *DRR, "--dose", "nan", "--out", c.o()])
E("drr/dose_negative", lambda c: ["drr", c.ct()[0], *DRR, "--dose", "-100", "--out", c.o()])
E("drr/spacing_zero", lambda c: ["drr", c.ct()[0], *DRR, "--spacing", "0", "--out", c.o()])
E("drr/sdd_negative", lambda c: ["drr", c.ct()[0], *DRR, "--sdd", "-100", "--out", c.o()])
E("drr/huge_dims_ct", lambda c: ["drr", str(forged_nifti(c.inputs / "huge.nii.gz", (30000,) * 3)), *DRR,
                                 "--out", c.o()])
E("drr/negative_dims_ct", lambda c: ["drr", str(forged_nifti(c.inputs / "neg.nii.gz", (-3, 8, 8))), *DRR,
                                     "--out", c.o()])
E("drr/nan_ct", lambda c: ["drr", c.nifti("nan.nii.gz", np.full((16, 16, 16), np.nan, np.float32)), *DRR,
                           "--out", c.o()])
E("drr/label_map_as_ct_mismatch", lambda c: ["drr", c.ct()[0], "--labels",
                                             c.nifti("lab_small.nii.gz", np.zeros((16, 16, 12), np.uint8)),
                                             *DRR, "--out", c.o()])
E("drr/out_parent_is_file", lambda c: ["drr", c.ct()[0], *DRR, "--out", _parent_file(c, "sub")])
E("drr/unknown_config_key", lambda c: ["drr", c.ct()[0], *DRR, "--out", c.o(), "physics.bogus=1"])
E("drr/wrong_type", lambda c: ["drr", c.ct()[0], "--view", "PA", "--out", c.o(), "size=abc"])
def _drr_config(text):
    return lambda c: ["drr", c.ct()[0], *DRR, "--out", c.o(), "--config", c.text("cfg.yaml", text)]


for _k, _v in YAML_BAD.items():
    E(f"drr/config_yaml_{_k}", _drr_config(_v))
E("drr/config_env_in_physics", lambda c: ["drr", c.ct()[0], *DRR, "--out", c.o(), "--config",
                                          c.text("cfg.yaml", "physics:\n  kev: ${oc.env:HOME}\n")])
case("drr/control", "ok")(lambda c: ["drr", c.ct()[0], "--labels", c.i("labels.nii.gz"), *DRR, "--out", c.o()])
case("drr/control_geometry", "ok")(lambda c: ["drr", c.ct()[0], "--geometry", c.geometry(), "--out", c.o()])

# ------------------------------------------------------------------------- lesion insert
LES = ["lesion", "insert"]


def _les(c: Ctx, *extra, small=False):
    ct, lab = c.ct() if small else c.phantom()
    return [*LES, ct, "--labels", lab, "--out", c.o(), *extra]


E("lesion/location_nan", lambda c: _les(c, "--location", "nan", "0", "0"))
E("lesion/location_far_away", lambda c: _les(c, "--location", "1e6", "0", "0"))
E("lesion/spec_is_nifti", lambda c: [*LES, *c.phantom()[:1], "--labels", c.i("ph_labels.nii.gz"),
                                     "--spec", c.ct()[0], "--out", c.o()])
E("lesion/spec_bad_yaml", lambda c: _les(c, "--spec", c.text("s.yaml", "lesions: [ {type: tumor")))
E("lesion/spec_python_tag", lambda c: _les(c, "--spec", c.text("s.yaml", YAML_BAD["python_tag"])))
E("lesion/spec_unknown_key", lambda c: _les(c, "--spec", c.text("s.yaml", "- {type: tumor, organ: liver, size: 3}\n")))
E("lesion/spec_wrong_type", lambda c: _les(c, "--spec", c.text("s.yaml", "- {type: tumor, organ: liver, count: many}\n")))
E("lesion/spec_missing", lambda c: _les(c, "--spec", c.i("nope.yaml")))
E("lesion/diameter_negative", lambda c: _les(c, "--diameter", "-3"))
E("lesion/diameter_huge", lambda c: _les(c, "--diameter", "1e6"))
E("lesion/diameter_range_reversed", lambda c: _les(c, "--diameter", "30", "10"))
E("lesion/diameter_three_values", lambda c: _les(c, "--diameter", "10", "20", "30"))
E("lesion/count_zero", lambda c: _les(c, "--count", "0"))
E("lesion/count_huge", lambda c: _les(c, "--count", "100000"))
E("lesion/unknown_organ", lambda c: _les(c, "--organ", "livr"))
E("lesion/unknown_type", lambda c: _les(c, "--type", "tumour_x"))
E("lesion/type_wrong_organ", lambda c: _les(c, "--organ", "liver", "--type", "nodule_ground_glass"))
E("lesion/organ_absent", lambda c: _les(c, "--organ", "pancreas", small=True))
E("lesion/phase_bogus", lambda c: _les(c, "--phase", "bogus"))
E("lesion/necrosis_5", lambda c: _les(c, "--necrosis", "5"))
E("lesion/margin_negative", lambda c: _les(c, "--margin", "-10"))
E("lesion/mismatched_grid", lambda c: [*LES, c.ct()[0], "--labels", c.phantom()[1], "--out", c.o()])
E("lesion/float_labels", lambda c: [*LES, c.ct()[0], "--labels", c.nifti(
    "fl.nii.gz", np.random.default_rng(0).random((32, 32, 24)).astype(np.float32) * 5.5), "--out", c.o()])
E("lesion/negative_labels", lambda c: [*LES, c.ct()[0], "--labels", c.nifti(
    "nl.nii.gz", -5 * np.ones((32, 32, 24), np.int16)), "--out", c.o()])
E("lesion/labels_missing", lambda c: [*LES, c.ct()[0], "--labels", c.i("nope.nii.gz"), "--out", c.o()])
E("lesion/out_parent_is_file", lambda c: [*LES, *c.phantom()[:1], "--labels", c.i("ph_labels.nii.gz"),
                                          "--out", _parent_file(c, "sub")])
case("lesion/control", "ok")(lambda c: _les(c, "--diameter", "20"))

# ---------------------------------------------------------------------------- generate
GEN = ["generate", "chest CT, 3 cm tumour in the liver"]
TINY = ["--size", "16", "16", "16", "--steps", "2"]
E("generate/stem_escape", lambda c: [*GEN, *TINY, "--out", c.o(), "--stem", "../outside/X"])
E("generate/stem_escape_deep", lambda c: [*GEN, *TINY, "--out", c.o("a/b"), "--stem", "../../../outside/X"])
E("generate/spacing_1e9", lambda c: [*GEN, *TINY, "--spacing", "1e9", "--out", c.o()])
E("generate/spacing_negative", lambda c: [*GEN, *TINY, "--spacing", "-4", "--out", c.o()])
E("generate/guidance_nan", lambda c: [*GEN, *TINY, "--guidance", "nan", "--out", c.o()])
E("generate/steps_zero", lambda c: [*GEN, "--size", "16", "16", "16", "--steps", "0", "--out", c.o()])
E("generate/steps_negative", lambda c: [*GEN, "--size", "16", "16", "16", "--steps", "-3", "--out", c.o()])
E("generate/size_zero", lambda c: [*GEN, "--size", "0", "16", "16", "--steps", "2", "--out", c.o()])
E("generate/size_huge", lambda c: [*GEN, "--size", "100000", "100000", "100000", "--steps", "2", "--out", c.o()])
E("generate/scheduler_bogus", lambda c: [*GEN, *TINY, "--scheduler", "bogus", "--out", c.o()])
E("generate/weights_missing", lambda c: [*GEN, *TINY, "--weights", c.i("nope"), "--out", c.o()])
E("generate/weights_empty_folder", lambda c: [*GEN, *TINY, "--weights", (c.inputs.joinpath("w").mkdir(), c.i("w"))[1],
                                              "--out", c.o()])
E("generate/weights_junk_pipeline_json", lambda c: [*GEN, *TINY, "--weights",
                                                    (c.text("w/pipeline.json", "{junk"), c.i("w"))[1], "--out", c.o()])
E("generate/labels_missing", lambda c: [*GEN, *TINY, "--labels", c.i("nope.nii.gz"), "--out", c.o()])
E("generate/labels_float", lambda c: [*GEN, "--steps", "2", "--labels", c.nifti(
    "fl.nii.gz", np.random.default_rng(0).random((16, 16, 16)).astype(np.float32) * 5.5), "--out", c.o()])
E("generate/out_parent_is_file", lambda c: [*GEN, *TINY, "--out", _parent_file(c, "sub")])
case("generate/control", "ok")(lambda c: [*GEN, *TINY, "--out", c.o()])

# ------------------------------------------------------------------------------- check
E("check/phase_bogus", lambda c: ["check", *c.phantom(), "--phase", "bogus"])
E("check/mismatched_grid", lambda c: ["check", c.ct()[0], c.phantom()[1]])
E("check/missing_ct", lambda c: ["check", c.i("nope.nii.gz"), c.ct()[1]])
E("check/out_parent_is_file", lambda c: ["check", *c.phantom(), "--out", _parent_file(c, "x.json")])
E("check/weights_missing", lambda c: ["check", *c.phantom(), "--weights", c.i("nope")])

# ------------------------------------------------------------------------------ expand
EXP = ["--budget", "1"]


def _ds_with_classes(c: Ctx, labels: dict) -> str:
    ds = c.dataset()
    write_dataset_json(ds, 5, labels)
    return str(ds)


E("expand/class_name_escape", lambda c: ["expand", _ds_with_classes(c, {"background": 0, "liver": 1, "kidney": 2,
                                          "liver_tumor/../../../../outside/x": 3}), *EXP, "--out", c.o("E")])
E("expand/class_name_slash", lambda c: ["expand", _ds_with_classes(c, {"background": 0, "liver": 1, "kidney": 2,
                                                                       "liver/tumor": 3}), *EXP, "--out", c.o("E")])
def _escape_in_place(c: Ctx):
    ds = c.dataset(where=c.out)
    write_dataset_json(ds, 5, {"background": 0, "liver": 1, "kidney": 2, "liver_tumor/../../../../outside/x": 3})
    return ["expand", str(ds), *EXP]


E("expand/class_name_escape_in_place", _escape_in_place)


def _symlinked_images(c: Ctx):
    ds = c.dataset(where=c.out)
    shutil.move(str(ds / "imagesTr"), str(c.outside / "imagesTr"))
    os.symlink(c.outside / "imagesTr", ds / "imagesTr")
    return ["expand", str(ds), *EXP]


E("expand/symlinked_imagesTr_in_place", _symlinked_images, note="in place: synthetic files would land in outside/")


def _symlinked_out_images(c: Ctx):
    ds = c.dataset()
    (c.out / "E").mkdir()
    (c.outside / "imgs").mkdir()
    os.symlink(c.outside / "imgs", c.out / "E" / "imagesTr")
    return ["expand", str(ds), *EXP, "--out", c.o("E")]


E("expand/symlinked_imagesTr_in_out", _symlinked_out_images)

USER_SYNTH = b"the user's own case, not synthgen's"


def _user_synth(c: Ctx):
    ds = c.dataset(where=c.out)
    (ds / "imagesTr" / "synth_liver_tumor_0000_0000.nii.gz").write_bytes(USER_SYNTH)
    (ds / "labelsTr" / "synth_liver_tumor_0000.nii.gz").write_bytes(USER_SYNTH)
    return ["expand", str(ds), *EXP]


def _user_synth_check(c: Ctx, results) -> str | None:
    for p in ("imagesTr/synth_liver_tumor_0000_0000.nii.gz", "labelsTr/synth_liver_tumor_0000.nii.gz"):
        f = c.out / "DS" / p
        if not f.is_file() or f.read_bytes() != USER_SYNTH:
            return f"the user's own {p} was overwritten or removed"
    return None


case("expand/user_file_with_synth_name", "either", check=_user_synth_check,
     note="clean refusal or success that leaves the user's file alone")(_user_synth)


def _out_nonempty(c: Ctx):
    ds = c.dataset()
    other = c.out / "Other"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lung": 1}, "numTraining": 0}))
    (other / "notes.txt").write_text("mine\n")
    return ["expand", str(ds), *EXP, "--out", str(other)]


def _out_nonempty_check(c: Ctx, results) -> str | None:
    other = c.out / "Other"
    if json.loads((other / "dataset.json").read_text()).get("labels") != {"background": 0, "lung": 1}:
        return "the user's Other/dataset.json was replaced"
    if not (other / "notes.txt").is_file():
        return "the user's Other/notes.txt vanished"
    return None


CASES.append(Case("expand/out_nonempty_with_dataset_json", "error", _out_nonempty, _out_nonempty_check))
E("expand/out_parent_is_file", lambda c: ["expand", str(c.dataset()), *EXP, "--out", _parent_file(c, "E")])
def _ds_json(text: str):
    def build(c: Ctx):
        ds = c.dataset()
        (ds / "dataset.json").write_text(text)
        return ["expand", str(ds), *EXP, "--out", c.o("E")]

    return build


E("expand/dataset_json_is_list", _ds_json("[1, 2, 3]"))
E("expand/dataset_json_invalid", _ds_json("{oops"))
E("expand/dataset_json_empty", _ds_json(""))
E("expand/labels_not_ints", lambda c: ["expand", _ds_with_classes(c, {"background": "zero", "liver": [1],
                                                                      "liver_tumor": None}), *EXP, "--out", c.o("E")])
E("expand/missing_dataset", lambda c: ["expand", c.i("nope"), *EXP, "--out", c.o("E")])
E("expand/empty_folder", lambda c: ["expand", (c.inputs.joinpath("empty").mkdir(), c.i("empty"))[1], "--out", c.o("E")])
E("expand/csv_wrong_columns", lambda c: ["expand", c.text("d.csv", "foo,bar\n1,2\n"), "--out", c.o("E")])
E("expand/datalist_wrong_shape", lambda c: ["expand", c.text("d.json", json.dumps({"training": "nope"})),
                                            "--out", c.o("E")])
E("expand/target_bogus", lambda c: ["expand", str(c.dataset()), "--target", "bogus", "--out", c.o("E")])
E("expand/target_fraction_nan", lambda c: ["expand", str(c.dataset()), "--target", "fraction=nan", "--out", c.o("E")])
E("expand/budget_negative", lambda c: ["expand", str(c.dataset()), "--budget", "-1", "--out", c.o("E")])
E("expand/rare_unknown_class", lambda c: ["expand", str(c.dataset()), "--rare", "bogus", *EXP, "--out", c.o("E")])
E("expand/rare_fraction_nan", lambda c: ["expand", str(c.dataset()), "--rare-fraction", "nan", *EXP,
                                         "--out", c.o("E")])
E("expand/size_negative", lambda c: ["expand", str(c.dataset()), "--size", "-3", *EXP, "--out", c.o("E")])


def _bad_item(kind: str):
    def build(c: Ctx):
        ds = c.dataset()
        img = ds / "imagesTr" / "toy_004_0000.nii.gz"
        import nibabel as nib

        ref = nib.load(str(img))
        shape = ref.shape
        arr = np.full(shape, np.nan, np.float32) if kind == "nan" else np.zeros((*shape, 2), np.int16)
        img.unlink()
        write_nifti(img, arr, affine=ref.affine)
        return ["expand", str(ds), *EXP, "--out", c.o("E")]

    return build


def _names_bad_item(c: Ctx, results) -> str | None:
    stdout = results[-1]["stdout"]
    if "toy_004" not in stdout:
        return "the summary does not name the bad item toy_004"
    synth = list((c.out / "E" / "imagesTr").glob("synth_*")) if (c.out / "E" / "imagesTr").is_dir() else []
    if not synth:
        return "no synthetic case written"
    if any("toy_004" in line for line in (c.out / "E" / "synthetic_manifest.jsonl").read_text().splitlines()):
        return "the bad item toy_004 hosted a synthetic case"
    return None


case("expand/nan_image_left_out", "ok", check=_names_bad_item)(_bad_item("nan"))
case("expand/4d_image_left_out", "ok", check=_names_bad_item)(_bad_item("4d"))
case("expand/control", "ok")(lambda c: ["expand", str(c.dataset()), *EXP, "--out", c.o("E")])
case("expand/control_dry_run", "ok")(lambda c: ["expand", str(c.dataset()), "--dry-run"])

# ------------------------------------------------------------------------------ train
E("train/no_config", lambda c: ["train", "vae", "--out", c.o("run")])
E("train/unknown_stage", lambda c: ["train", "bogus", "--config", str(REPO / "configs/train_cpu.yaml"),
                                    "--out", c.o("run")])
E("train/config_missing", lambda c: ["train", "vae", "--config", c.i("nope.yaml"), "--out", c.o("run")])
E("train/config_python_tag", lambda c: ["train", "vae", "--config", c.text("t.yaml", YAML_BAD["python_tag"]),
                                        "--out", c.o("run")])
E("train/export_without_to", lambda c: ["train", "export", "--out", c.o("run")])
E("train/export_missing_run", lambda c: ["train", "export", "--out", c.i("nope"), "--to", c.o("dest")])
E("train/data_folder_missing", lambda c: ["train", "vae", "--config", str(REPO / "configs/train_cpu.yaml"),
                                          "--out", c.o("run"), f"data.folders=[{c.i('nope')}]", "vae_stage.steps=1"])

# -------------------------------------------------------------------------------- run
E("run/missing_recipe", lambda c: ["run", c.i("nope.yaml"), "--out", c.o()])


def _recipe(text: str):
    return lambda c: ["run", c.text("r.yaml", text), "--out", c.o("run")]


PH_STEP = "    overrides: ['shape=[24,20,16]', 'spacing=[14,14,18]']\n"
E("run/step_name_escape", _recipe("name: r\nsteps:\n  - task: phantom\n    name: ../x\n" + PH_STEP))
E("run/step_name_escape_outside", _recipe("name: r\nsteps:\n  - task: phantom\n    name: ../../outside/x\n" + PH_STEP))
E("run/step_name_absolute", _recipe("name: r\nsteps:\n  - task: phantom\n    name: /tmp/x\n" + PH_STEP))
E("run/unknown_task", _recipe("name: r\nsteps:\n  - task: bogus\n"))
E("run/unknown_step_reference", _recipe("name: r\nsteps:\n  - task: drr\n    inputs: ['@nope/ct']\n"
                                        "    overrides: ['size=[32,32]']\n"))
E("run/reference_to_later_step", _recipe("name: r\nsteps:\n  - task: drr\n    inputs: ['@ph/ct']\n"
                                         "    overrides: ['size=[32,32]']\n  - task: phantom\n    name: ph\n" + PH_STEP))
E("run/duplicate_step_names", _recipe("name: r\nsteps:\n  - task: phantom\n    name: a\n" + PH_STEP
                                      + "  - task: phantom\n    name: a\n" + PH_STEP))
E("run/recipe_is_list", _recipe("- task: phantom\n"))
E("run/recipe_python_tag", _recipe(YAML_BAD["python_tag"]))
E("run/recipe_binary", lambda c: ["run", c.text("r.yaml", YAML_BAD["binary"]), "--out", c.o("run")])
E("run/no_steps", _recipe("name: r\nsteps: []\n"))
E("run/step_env_resolver", _recipe("name: r\nsteps:\n  - task: phantom\n    overrides: ['seed=${oc.env:HOME}']\n"))
E("run/step_input_missing_file", _recipe("name: r\nsteps:\n  - task: drr\n    inputs: [/nonexistent/ct.nii.gz]\n"))
E("run/step_unknown_key", _recipe("name: r\nsteps:\n  - task: phantom\n    bogus: 1\n"))
E("run/out_parent_is_file", lambda c: ["run", c.text("r.yaml", "name: r\nsteps:\n  - task: phantom\n" + PH_STEP),
                                       "--out", _parent_file(c, "run")])
case("run/control", "ok")(_recipe("name: r\nsteps:\n  - task: phantom\n" + PH_STEP))

# ---------------------------------------------------------------------------- evaluate
E("evaluate/missing_dataset", lambda c: ["evaluate", c.i("nope"), "--out", c.o("ev")])
REAL_ARMS = "arms=[real,weighted]"  # no synthetic arm: no expanded set needed, so the bad number is what is judged
E("evaluate/seeds_zero", lambda c: ["evaluate", str(c.dataset()), "--seeds", "0", "--steps", "1", "--out", c.o("ev"),
                                    REAL_ARMS])
E("evaluate/steps_negative", lambda c: ["evaluate", str(c.dataset()), "--seeds", "1", "--steps", "-5",
                                        "--out", c.o("ev"), REAL_ARMS])
E("evaluate/steps_zero", lambda c: ["evaluate", str(c.dataset()), "--seeds", "1", "--steps", "0",
                                    "--out", c.o("ev"), REAL_ARMS])
E("evaluate/task_mismatch", lambda c: ["evaluate", str(c.dataset()), "--task", "cls", "--seeds", "1", "--steps", "1",
                                       "--out", c.o("ev")])
E("evaluate/unknown_arm", lambda c: ["evaluate", str(c.dataset()), "--seeds", "1", "--steps", "1", "--out", c.o("ev"),
                                     "arms=[real,bogus]"])
E("evaluate/expanded_missing", lambda c: ["evaluate", str(c.dataset()), "--expanded", c.i("nope"), "--seeds", "1",
                                          "--steps", "1", "--out", c.o("ev")])


# --------------------------------------------------------------------------- running
def _snapshot(root: Path, skip: Path | None) -> dict[str, str]:
    """Relative path -> content hash (or 'dir' / 'link:target') of everything under root except ``skip``."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        if skip is not None and d == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            if skip is not None and p == skip:
                continue
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                try:
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
                except OSError as e:
                    out[rel] = f"unreadable:{e}"
        dirnames[:] = [n for n in dirnames if not (d / n).is_symlink()]
    return out


def _diff(before: dict, after: dict) -> list[str]:
    changes = [f"+{k}" for k in after if k not in before]
    changes += [f"-{k}" for k in before if k not in after]
    changes += [f"~{k}" for k in before if k in after and before[k] != after[k]]
    return sorted(changes)


def _limits() -> None:
    import resource

    if MEM_LIMIT_GB > 0:
        cap = int(MEM_LIMIT_GB * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _command_name(argv: list[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "?")


def run_case(cs: Case, work: Path, shared: Shared, check_siblings: bool) -> dict:
    root = work / cs.id.replace("/", "__")
    ctx = Ctx(root, shared)
    row = {"id": cs.id, "expect": cs.expect, "note": cs.note}
    try:
        built = cs.build(ctx)
    except Exception as e:  # noqa: BLE001 - a broken case is the benchmark's bug, not synthgen's
        row.update(classification="fail", rc=None, cmd="", first_stderr=f"case setup failed: {e!r}", seconds=0.0)
        return row
    steps = built if built and isinstance(built[0], list) else [built]
    before_case = _snapshot(root, skip=ctx.out)
    around = (work, work.parent)
    before_work = [sorted(p.name for p in d.iterdir()) for d in around] if check_siblings else None
    results = []
    t0 = time.perf_counter()
    hang = False
    for argv in steps:
        if argv and argv[0] == "__shell__":
            argv[1]()
            continue
        cmd = [str(SYNTHGEN), "--quiet", *map(str, argv)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ctx.out, timeout=TIMEOUT_S,
                               stdin=subprocess.DEVNULL, preexec_fn=_limits, check=False)
            results.append({"argv": argv, "rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr})
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            results.append({"argv": argv, "rc": None, "stdout": "", "stderr": err})
            hang = True
            break
    seconds = time.perf_counter() - t0
    # what else changed: the case folder outside out/ (inputs, outside/, its top), and the work folder
    # beside the case folders. out/ itself may change freely, except the files the setup put there are
    # judged by each case's own check.
    changes = _diff(before_case, _snapshot(root, skip=ctx.out))
    if check_siblings:
        for up, d, names in zip(("../", "../../"), around, before_work):
            changes += [f"+{up}{n}" for n in sorted(p.name for p in d.iterdir()) if n not in names]
    last = results[-1] if results else {"argv": [], "rc": None, "stdout": "", "stderr": ""}
    err_lines = [ln for ln in last["stderr"].splitlines() if ln.strip()]
    any_tb = any("Traceback" in r["stderr"] or (r["rc"] is not None and r["rc"] not in (0, 2)) for r in results)
    prep_failed = [r for r in results[:-1] if r["rc"] != 0]
    cmd_name = _command_name(last["argv"])
    prefix = f"synthgen {cmd_name}: error:"
    one_clean_line = last["rc"] == 2 and len(last["stderr"].splitlines()) == 1 and err_lines[0].startswith(prefix)
    problem = None
    if hang:
        cls = "hang"
    elif changes:
        cls, problem = "outside", "changed outside out/: " + ", ".join(changes[:6])
    elif any_tb:
        cls = "traceback"
    elif prep_failed:
        cls, problem = "fail", f"preparation step failed (rc {prep_failed[0]['rc']})"
    elif cs.expect == "error":
        cls = "silent" if last["rc"] == 0 else ("clean" if one_clean_line else "messy")
    elif cs.expect == "ok":
        cls = "ok" if all(r["rc"] == 0 for r in results) else "fail"
    else:  # either
        cls = "clean" if one_clean_line else ("ok" if last["rc"] == 0 else "messy")
    if cls in ("clean", "ok", "silent") and cs.check is not None:
        problem = cs.check(ctx, results)
        if problem and cls != "silent":
            cls = "fail"
    first = err_lines[0] if err_lines else ""
    if cls == "traceback":
        tb = next((r["stderr"] for r in results if "Traceback" in r["stderr"] or r["rc"] not in (0, 2)), "")
        lines = [ln for ln in tb.splitlines() if ln.strip()]
        # the exception line (the last unindented one), not 'Traceback ...' nor a YAML error's '  in "file"' tail
        exc = [ln for ln in lines if not ln[0].isspace() and not ln.startswith(("Traceback", "During handling",
                                                                                "The above exception"))]
        named = [ln for ln in exc if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", ln)]
        first = (named or exc or lines or [f"rc {last['rc']} with empty stderr"])[-1]
        frames = [ln.strip() for ln in lines if ln.strip().startswith("File ")]
        ours = [f for f in frames if "/synthgen/" in f and "site-packages" not in f]
        row["traceback_at"] = (ours or frames or [""])[-1].replace(str(REPO) + "/", "")
    first = first.replace(str(root), "CASE")
    row.update(cmd="synthgen --quiet " + " ".join(_short(a, root) for a in last["argv"]),
               rc=last["rc"], first_stderr=first[:300], stderr_lines=len(last["stderr"].splitlines()),
               classification=cls, problem=problem, seconds=round(seconds, 2),
               steps=[{"cmd": " ".join(_short(a, root) for a in r["argv"]), "rc": r["rc"]} for r in results])
    return row


def _short(arg, root: Path) -> str:
    s = str(arg).replace(str(root), "CASE")
    return repr(s) if (" " in s or not s) else s


def main() -> int:
    global MEM_LIMIT_GB
    import warnings

    warnings.simplefilter("ignore")  # nibabel's, while forging headers; the CLI's own stderr is what is judged
    np.seterr(all="ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "out" / "bad_inputs"), help="where bad_inputs.json goes")
    parser.add_argument("--only", default=None, help="run only the cases whose id contains this")
    parser.add_argument("--jobs", type=int, default=1, help="cases at a time (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the case folders (under --out/work)")
    parser.add_argument("--list", action="store_true", help="list the case ids and stop")
    parser.add_argument("--mem-gb", type=float, default=MEM_LIMIT_GB,
                        help=f"address-space cap per CLI process in GiB (default {MEM_LIMIT_GB}; 0: none)")
    args = parser.parse_args()
    MEM_LIMIT_GB = args.mem_gb

    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    cases = [c for c in CASES if args.only is None or args.only in c.id]
    if args.list:
        print("\n".join(f"{c.expect:6s} {c.id}" for c in cases))
        return 0
    if not SYNTHGEN.exists():
        raise SystemExit(f"{SYNTHGEN}: not found; run this with the venv's python (.venv/bin/python)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.keep:
        work = out / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
    else:
        work = Path(tempfile.mkdtemp(prefix="synthgen_bad_inputs_"))
    try:
        t0 = time.perf_counter()
        shared = Shared(work / "_shared")
        cases_dir = work / "cases"
        cases_dir.mkdir()
        print(f"# fixtures in {time.perf_counter() - t0:.1f} s; {len(cases)} cases; work folder {work}", flush=True)
        rows: list[dict] = []
        jobs = max(1, args.jobs)

        def one(cs):
            row = run_case(cs, cases_dir, shared, check_siblings=jobs == 1)
            print(f"{row['classification']:9s} {row['seconds']:6.1f}s  {row['id']:45s} {row['first_stderr'][:110]}",
                  flush=True)
            return row

        if jobs == 1:
            rows = [one(cs) for cs in cases]
        else:
            with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                rows = list(pool.map(one, cases))
        total = time.perf_counter() - t0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    counts = {k: sum(r["classification"] == k for r in rows)
              for k in ("clean", "ok", "traceback", "silent", "outside", "messy", "fail", "hang")}
    summary = {"tried": len(rows), "clean_one_line_errors": counts["clean"], "controls_ok": counts["ok"],
               "tracebacks": counts["traceback"], "silent_acceptances": counts["silent"],
               "writes_outside": counts["outside"], "messy_errors": counts["messy"], "failed": counts["fail"],
               "hangs": counts["hang"], "seconds": round(total, 1)}
    (out / "bad_inputs.json").write_text(json.dumps({"summary": summary, "cases": rows}, indent=2))

    print()
    print(f"{'id':45s} {'expect':6s} {'rc':>4s}  {'result':9s}  first stderr line / problem")
    print("-" * 130)
    for r in rows:
        detail = r.get("problem") or r["first_stderr"]
        print(f"{r['id']:45s} {r['expect']:6s} {r['rc']!s:>4}  {r['classification']:9s}  {detail[:120]}")
    print()
    print(f"tried {summary['tried']}: clean one-line errors {counts['clean']}, controls ok {counts['ok']}; "
          f"tracebacks {counts['traceback']} (goal 0), silent acceptances {counts['silent']} (goal 0), "
          f"writes outside the output root {counts['outside']} (goal 0), messy errors {counts['messy']}, "
          f"failed {counts['fail']}, hangs {counts['hang']}; {total:.0f} s")
    print(f"wrote {out / 'bad_inputs.json'}")
    return 1 if any(counts[k] for k in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
