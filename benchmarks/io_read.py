"""Read speed of `synthgen.io.read` beside the libraries it wraps, on the example CT.

For each format the example CT (512x512x133) is written once to a temp folder,
then read repeatedly by synthgen (which adds LPS->RAS conversion, NaN and 2D
checks, and for DICOM slice sorting/spacing checks) and by the plain library
call a user would otherwise write (nibabel, SimpleITK, SimpleITK's GDCM series
reader). Prints the median seconds and the ratio synthgen / peer (lower is better).

    python benchmarks/io_read.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peer_nibabel(path: Path):
    import nibabel as nib

    return np.asanyarray(nib.load(str(path)).dataobj)


def _peer_sitk(path: Path):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _peer_sitk_series(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from synthgen import io
    from synthgen.data import example_ct

    ct, _ = example_ct()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "nifti (.nii.gz)": (Path(tmp) / "ct.nii.gz", _peer_nibabel, "nibabel"),
            "nrrd": (Path(tmp) / "ct.nrrd", _peer_sitk, "SimpleITK"),
            "mha": (Path(tmp) / "ct.mha", _peer_sitk, "SimpleITK"),
            "dicom series": (Path(tmp) / "series", _peer_sitk_series, "SimpleITK/GDCM"),
        }
        for name, (path, peer, peer_name) in cases.items():
            io.write(ct, path)
            ours = _time(lambda: io.read(path), args.repeat)
            theirs = _time(lambda: peer(path), args.repeat)
            rows.append((name, ours, peer_name, theirs))
    print(f"{'format':18s} {'synthgen s':>11s} {'peer':>16s} {'peer s':>8s} {'ratio':>6s}")
    for name, ours, peer_name, theirs in rows:
        print(f"{name:18s} {ours:11.3f} {peer_name:>16s} {theirs:8.3f} {ours / theirs:6.2f}")


if __name__ == "__main__":
    main()
