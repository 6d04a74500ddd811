"""Lesion insertion speed on the example CT (512x512x133, 0.70x0.70x2.5 mm), with and without mass effect.

Each case inserts liver tumours (25 mm, or 10-30 mm sampled) with ``insert_lesions`` and reports
the median wall time per call and per lesion over ``--repeat`` seeds (warm: imports, the first
call and reading the scan excluded). A call includes what a data loader pays every time: copying
the CT and label map (the inputs are never modified), the organ mask, contrast-phase estimation
(unless the phase is given), placement, shape, texture, noise matching and the write-back.
The anchors' figure: ~5 s per tumour with mass effect and capsule (SynTumor's reader-study path).

    python benchmarks/lesions.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import numpy as np


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from synthgen.data import example_ct
    from synthgen.lesions.insert import insert_lesions
    from synthgen.lesions.spec import LesionSpec

    ct, labels = example_ct()
    sp = "x".join(f"{s:.2f}" for s in ct.spacing)
    print(f"# example CT {'x'.join(map(str, ct.shape))} voxels at {sp} mm; {machine()}")
    cases = {
        "1 tumour, phase auto": LesionSpec(type="tumor", organ="liver", diameter_mm=25.0),
        "1 tumour, phase given": LesionSpec(type="tumor", organ="liver", diameter_mm=25.0, phase="arterial"),
        "5 tumours 10-30 mm, one call": LesionSpec(type="tumor", organ="liver", diameter_mm=(10.0, 30.0), count=5,
                                                   phase="arterial"),
    }
    insert_lesions(ct, labels, LesionSpec(mass_effect_mm=3.0))  # warm-up (imports, first-call costs)
    print(f"{'case':32s} {'mass effect':>11s} {'s / call':>9s} {'s / lesion':>10s} {'lesions / s':>11s}")
    for name, spec in cases.items():
        for push in (0.0, 4.0):
            times = []
            for seed in range(args.repeat):
                s = dataclasses.replace(spec, seed=seed, mass_effect_mm=push)
                t0 = time.perf_counter()
                insert_lesions(ct, labels, s)
                times.append(time.perf_counter() - t0)
            call = statistics.median(times)
            per = call / spec.count
            print(f"{name:32s} {push:9.1f}mm {call:9.3f} {per:10.3f} {1 / per:11.2f}")


if __name__ == "__main__":
    main()
