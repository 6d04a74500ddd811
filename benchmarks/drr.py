"""CPU render speed and peak memory of synthgen's DRR engine beside its peers, on the example chest CT.

One geometry for every renderer: synthgen's ``named_view("PA", ct, size=(n, n))``
(source 820 mm before the volume's centre, flat detector 1020 mm from the source,
pixel spacing fitted to the volume). Every case runs in its own subprocess, so
its ``ru_maxrss`` is that case's peak RSS.

Renderers (``--peers`` picks the peers; synthgen always runs):

* ``synthgen-joseph`` / ``synthgen-siddon``: ``DRRRenderer.material_line_integrals``
  (one ray pass over the water and bone density volumes, 2 channels).
* ``synthgen-render``: ``DRRRenderer.render(projection, XRaySettings(kvp=120))`` (the default
  beam, named): the Joseph pass plus the 120 kVp spectrum physics, -log and display mapping
  (no labels, no noise).
* ``diffdrr-siddon`` / ``diffdrr-trilinear``: DiffDRR's ``DRR`` module (trilinear with its
  default 500 points per ray) on mu at 70 keV, posed to synthgen's source and detector.
* ``nanodrr``: nanodrr's ``DRR`` with its torch backend, 500 samples per ray, same mu volume.
* ``itk``: ITK's ``RayCastInterpolateImageFunction`` driven by a ``ResampleImageFilter``
  onto the detector grid, 2 threads, same mu volume.

A peer whose package does not import (nanodrr and itk are optional) is skipped with a note.
Every image is checked against synthgen-siddon's (Pearson r and relative L2 of the mu
line integrals) and every peer's rays against synthgen's (``geom err``, mm).

    python benchmarks/drr.py [--sizes 200 512] [--repeat 3] [--peers diffdrr nanodrr itk]
                             [--skip-peers] [--timeout 300] [--json results.json]

``--peers diffdrr-trilinear nanodrr itk`` leaves out DiffDRR's Siddon (slow and
memory-hungry at 512x512: tens of seconds, >10 GB).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: Energy (keV) of the monoenergetic mu volume every peer integrates.
MU_KEV = 70.0
#: Samples per ray of the sampling peers (DiffDRR trilinear's default, and nanodrr's).
N_SAMPLES = 500
#: Threads given to ITK (the machine's core count at the time of writing).
ITK_THREADS = 2

SYNTHGEN_CASES = ("synthgen-joseph", "synthgen-siddon", "synthgen-render")
PEER_CASES = ("diffdrr-siddon", "diffdrr-trilinear", "nanodrr", "itk")
PEER_GROUPS = {"diffdrr": ("diffdrr-siddon", "diffdrr-trilinear")}
#: Module each peer case needs, and how to get it.
PEER_MODULES = {
    "diffdrr-siddon": ("diffdrr.drr", "pip install --no-deps diffdrr==0.6.1"),
    "diffdrr-trilinear": ("diffdrr.drr", "pip install --no-deps diffdrr==0.6.1"),
    "nanodrr": ("nanodrr.drr", "pip install --no-deps nanodrr==0.1.7 platformdirs"),
    "itk": ("itk", "pip install itk"),
}
REFERENCE = "synthgen-siddon"
BASELINE = "synthgen-joseph"

EXCLUDED = (
    "imports, reading the CT, HU -> density/mu conversion, building the renderer/module/subject, "
    "and the first (warm-up) render, which for synthgen loads the numba kernels and caches the volume layout"
)


# ------------------------------------------------------------------ one case (child process)
@dataclasses.dataclass
class Prepared:
    """A ready renderer: ``render()`` does one rendering, ``image(result)`` maps it to mu x mm (rows, cols)."""

    render: Callable[[], Any]
    image: Callable[[Any], np.ndarray]
    geom_err_mm: float | None = None
    note: str = ""


def _load(size: int):
    """(the example CT Volume, its PA Projection at size x size)."""
    from synthgen.data import example_ct
    from synthgen.drr.geometry import named_view

    ct, _ = example_ct()
    return ct, named_view("PA", ct, size=(size, size))


def _mu(ct):
    """The peers' volume: mu (I, J, K) float32 tensor in 1/mm at MU_KEV (synthgen's own water/bone split)."""
    import torch

    from synthgen.drr.physics import hu_to_mu_per_mm

    hu = torch.from_numpy(np.ascontiguousarray(ct.numpy())).to(torch.float32)
    return hu_to_mu_per_mm(hu, energy_kev=MU_KEV)


def _max_dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)))


def _prepare_synthgen(case: str, ct, proj) -> Prepared:
    from synthgen.drr.physics import mass_attenuation_cm2_per_g
    from synthgen.drr.render import DRRRenderer, XRaySettings

    renderer = DRRRenderer(ct)
    if case == "synthgen-render":
        settings = XRaySettings(kvp=120.0)  # the default beam, named so a change of default cannot move it
        note = f"{settings.kvp:g} kVp spectrum, {settings.method}; image: -log(I/I0)"
        return Prepared(lambda: renderer.render(proj, settings), lambda d: d.line_integral.numpy(), None, note)
    method = case.split("-")[1]
    mu_w = float(mass_attenuation_cm2_per_g("water", MU_KEV))
    mu_b = float(mass_attenuation_cm2_per_g("cortical_bone", MU_KEV))

    def image(water_bone):  # (2, rows, cols) g/cm^3 x mm -> mu x mm, as hu_to_mu_per_mm (cm^2/g -> per mm)
        water, bone = water_bone.numpy()
        return (mu_w * water + mu_b * bone) / 10.0

    def render():
        return renderer.material_line_integrals(proj, method=method)

    return Prepared(render, image, None, "2 materials")


def _camera_axes(proj) -> tuple[np.ndarray, bool]:
    """DiffDRR camera -> world rotation for ``proj`` and its ``reverse_x_axis`` flag.

    DiffDRR's detector (reverse_x_axis=False) puts column c at camera x = +(c - (W-1)/2) * delx and
    row r at camera y = -(r - (H-1)/2) * dely, the source at the camera origin, the detector at z = sdd.
    So camera (x, y, z) = world (u, -v, beam); for views whose (u, v, beam) frame is right-handed
    (AP) that matrix is a reflection, and reverse_x_axis=True (camera x = -u) makes it a rotation.
    """
    u, v, b = proj.u_axis, proj.v_axis, proj.beam_direction
    rot = np.stack([u, -v, b], axis=1)
    if np.linalg.det(rot) > 0:
        return rot, False
    return np.stack([-u, -v, b], axis=1), True


def _prepare_diffdrr(case: str, ct, proj) -> Prepared:
    import torch
    import torchio
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform

    from synthgen.drr.geometry import rays

    mu = _mu(ct)
    # The subject diffdrr.data.read would build, minus its HU thresholds and min-max
    # normalisation: our mu volume as "density", world = the CT's RAS affine, no reorientation.
    image = torchio.ScalarImage(tensor=mu[None], affine=ct.affine)
    subject = torchio.Subject(
        volume=image, density=image, mask=None, reorient=torch.eye(4), orientation=None, fiducials=None
    )
    rows, cols = proj.size
    du, dv = proj.pixel_spacing_mm
    c0, r0 = proj.principal_point
    rot, reverse = _camera_axes(proj)
    x0 = ((cols - 1) / 2 - c0) * du * (-1 if reverse else 1)
    y0 = (r0 - (rows - 1) / 2) * dv
    renderer = case.split("-")[1]
    drr = DRR(
        subject, sdd=proj.sdd_mm, height=rows, width=cols, delx=du, dely=dv, x0=x0, y0=y0,
        reverse_x_axis=reverse, renderer=renderer,
    )
    pose_m = np.eye(4)
    pose_m[:3, :3], pose_m[:3, 3] = rot, proj.source_mm
    pose = RigidTransform(torch.as_tensor(pose_m, dtype=torch.float32))
    with torch.no_grad():
        src, tgt = drr.detector(pose, None)
    source_mm, targets_mm = rays(proj)
    err = max(_max_dist(src[0].numpy(), source_mm[None]), _max_dist(tgt[0].numpy(), targets_mm.reshape(-1, 3)))

    def render():
        with torch.no_grad():
            return drr(pose)

    note = f"{N_SAMPLES} points/ray (default)" if renderer == "trilinear" else ""
    return Prepared(render, lambda img: img[0, 0].numpy(), err, note)


def _prepare_nanodrr(case: str, ct, proj) -> Prepared:
    import torch
    import torchio
    from nanodrr.data import Subject
    from nanodrr.drr import DRR
    from nanodrr.geometry import transform_point

    from synthgen.drr.geometry import rays

    mu = _mu(ct)
    subject = Subject.from_images(torchio.ScalarImage(tensor=mu[None], affine=ct.affine), convert_to_mu=False)
    rows, cols = proj.size
    du, dv = proj.pixel_spacing_mm
    c0, r0 = proj.principal_point
    # nanodrr's pixel (c, r) sits at camera ((c + 1/2 - cx) du, (r + 1/2 - cy) dv, sdd), cx = x0/du + W/2,
    # so camera x = u and y = v; its camera -> world matrix is then [u v beam | source] (a reflection for
    # PA, which its torch backend applies like any affine map).
    drr = DRR.from_carm_intrinsics(
        proj.sdd_mm, du, dv, (c0 - (cols - 1) / 2) * du, (r0 - (rows - 1) / 2) * dv, rows, cols,
        dtype=torch.float32,
    )
    rt = np.eye(4)
    rt[:3, :3] = np.stack([proj.u_axis, proj.v_axis, proj.beam_direction], axis=1)
    rt[:3, 3] = proj.source_mm
    rt_inv = torch.as_tensor(rt, dtype=torch.float32)[None]
    source_mm, targets_mm = rays(proj)
    err = max(
        _max_dist(transform_point(rt_inv, drr.src)[0].numpy(), source_mm[None]),
        _max_dist(transform_point(rt_inv, drr.tgt)[0].numpy(), targets_mm.reshape(-1, 3)),
    )

    def render():
        with torch.no_grad():
            return drr(subject, rt_inv, n_samples=N_SAMPLES, backend="torch")

    return Prepared(render, lambda img: img[0, 0].numpy(), err, f"torch backend, {N_SAMPLES} samples/ray")


def _prepare_itk(case: str, ct, proj) -> Prepared:
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(ITK_THREADS)
    mu = _mu(ct)
    image_t = itk.Image[itk.F, 3]
    # ITK's ray caster ignores the image direction (it maps a point to voxels by origin and spacing
    # only), so everything is expressed in the volume's own frame: p_vol = R^T (p_world - t), where
    # the CT's affine is [R diag(spacing) | t]. That map is rigid (R may be a reflection), so lengths
    # in mm are kept, and the image gets origin 0, the CT's spacing and the identity direction.
    spacing = np.linalg.norm(ct.affine[:3, :3], axis=0)
    rot_t = (ct.affine[:3, :3] / spacing).T

    def to_vol(p_mm: np.ndarray) -> np.ndarray:
        return (np.asarray(p_mm) - ct.affine[:3, 3]) @ rot_t.T

    volume = itk.GetImageFromArray(np.ascontiguousarray(mu.numpy().transpose(2, 1, 0)))  # ITK index (i, j, k)
    volume.SetSpacing(spacing.tolist())
    volume.SetOrigin([0.0, 0.0, 0.0])

    identity = itk.IdentityTransform[itk.D, 3].New()
    interp = itk.RayCastInterpolateImageFunction[image_t, itk.D].New()
    interp.SetTransform(identity)
    interp.SetThreshold(0.0)  # mu >= 0: sums every sample
    interp.SetFocalPoint(itk.Point[itk.D, 3](to_vol(proj.source_mm).tolist()))

    # The detector as a one-slice output image: index (c, r, 0) at the centre of pixel (r, c).
    rows, cols = proj.size
    du, dv = proj.pixel_spacing_mm
    u, v = rot_t @ proj.u_axis, rot_t @ proj.v_axis
    out_dir = np.stack([u, v, np.cross(u, v)], axis=1)
    resample = itk.ResampleImageFilter[image_t, image_t].New()
    resample.SetInput(volume)
    resample.SetInterpolator(interp)
    resample.SetTransform(identity)
    resample.SetDefaultPixelValue(0.0)
    resample.SetSize([cols, rows, 1])
    resample.SetOutputSpacing([du, dv, 1.0])
    resample.SetOutputOrigin(to_vol(proj.pixel_centers_mm()[0, 0]).tolist())
    resample.SetOutputDirection(itk.matrix_from_array(np.ascontiguousarray(out_dir)))
    resample.UpdateOutputInformation()
    out = resample.GetOutput()
    corners = [(0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1)]
    got = np.array([out.TransformIndexToPhysicalPoint([c, r, 0]) for r, c in corners], dtype=np.float64)
    want = to_vol(np.array([proj.pixel_centers_mm()[r, c] for r, c in corners]))
    err = max(_max_dist(got, want), _max_dist(np.array(interp.GetFocalPoint()), to_vol(proj.source_mm)))

    def render():
        resample.Modified()
        resample.Update()
        return resample.GetOutput()

    note = f"ResampleImageFilter, {ITK_THREADS} threads"
    return Prepared(render, lambda img: itk.array_from_image(img)[0].copy(), err, note)


PREPARE = {
    **dict.fromkeys(SYNTHGEN_CASES, _prepare_synthgen),
    "diffdrr-siddon": _prepare_diffdrr,
    "diffdrr-trilinear": _prepare_diffdrr,
    "nanodrr": _prepare_nanodrr,
    "itk": _prepare_itk,
}


def _cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine from /proc/stat, CPU seconds of this process) so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    return busy, own.ru_utime + own.ru_stime


def run_case(case: str, size: int, repeat: int, image_out: Path) -> dict[str, Any]:
    """Prepare ``case``, render once to warm up, then ``repeat`` times; the image goes to ``image_out`` (.npy)."""
    t0 = time.perf_counter()
    ct, proj = _load(size)
    prep = PREPARE[case](case, ct, proj)
    prep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = prep.render()
    first_s = time.perf_counter() - t0
    times = []
    busy0, own0 = _cpu_seconds()
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = prep.render()
        times.append(time.perf_counter() - t0)
    busy1, own1 = _cpu_seconds()
    img = np.asarray(prep.image(result), dtype=np.float64)
    if img.shape != proj.size:
        raise RuntimeError(f"{case}: image shape {img.shape}, expected {proj.size}")
    np.save(image_out, img)
    return {
        "case": case,
        "size": size,
        "status": "ok",
        "times_s": times,
        "median_s": statistics.median(times),
        "first_s": first_s,
        "prepare_s": prep_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        "geom_err_mm": prep.geom_err_mm,
        # Mean number of cores this process kept busy while timed, and how many other processes did:
        # a busy machine (other_cores well above 0) makes the times slower than the renderer is.
        "own_cores": (own1 - own0) / sum(times),
        "other_cores": max(0.0, (busy1 - busy0) - (own1 - own0)) / sum(times),
        "note": prep.note,
    }


# ------------------------------------------------------------------ driver (parent process)
def _machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"torch": torch.__version__}
    for pkg in ("numba", "diffdrr", "nanodrr", "itk"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - any failure just means "not installed"
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }


def _spawn(case: str, size: int, repeat: int, image_out: Path, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--case", case, "--size", str(size), "--repeat", str(repeat)]
    cmd += ["--image-out", str(image_out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"case": case, "size": size, "status": "timeout", "note": f"killed after {timeout_s:g} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT ") :])
            res["wall_s"] = time.perf_counter() - t0
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return {"case": case, "size": size, "status": "error", "note": tail[0][:200]}


def _missing(case: str) -> str | None:
    """Why ``case`` cannot run here (its peer package does not import), or None."""
    if case not in PEER_MODULES:
        return None
    module, hint = PEER_MODULES[case]
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    err = (proc.stderr.strip().splitlines() or ["import failed"])[-1]
    return f"skipped: `import {module}` fails ({err[:80]}); {hint}"


def _compare(results: list[dict[str, Any]], images: dict[tuple[str, int], Path]) -> None:
    """Adds the Pearson r and relative L2 against synthgen-siddon, and the time ratio to synthgen-joseph."""
    for res in results:
        size = res["size"]
        ref_path, own_path = images.get((REFERENCE, size)), images.get((res["case"], size))
        base = next((r for r in results if r["case"] == BASELINE and r["size"] == size and r["status"] == "ok"), None)
        res["corr"] = res["rel_l2"] = res["ratio"] = None
        if res["status"] != "ok":
            continue
        if base is not None:
            res["ratio"] = res["median_s"] / base["median_s"]
        if ref_path is not None and ref_path.exists() and own_path is not None and own_path.exists():
            ref, own = np.load(ref_path).ravel(), np.load(own_path).ravel()
            res["corr"] = float(np.corrcoef(own, ref)[0, 1])
            res["rel_l2"] = float(np.linalg.norm(own - ref) / np.linalg.norm(ref))


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _table(results: list[dict[str, Any]], machine: dict[str, Any], repeat: int) -> str:
    v = machine["versions"]
    lines = [
        f"# DRR CPU benchmark, example chest CT 512x512x133 (0.70x0.70x2.5 mm), PA view, {machine['date']}",
        f"# machine: {machine['cpu']}, {machine['cores']} cores; "
        f"torch {v['torch']} ({machine['torch_threads']} threads), "
        f"numba {v['numba']}, diffdrr {v['diffdrr']}, nanodrr {v['nanodrr']}, itk {v['itk']}",
        f"# median s: median of {repeat} warm renders after 1 warm-up render (first s). Excluded: {EXCLUDED}.",
        "# peak RSS: ru_maxrss of the case's own process (python, imports, CT, preparation and renders), GiB.",
        "# t/joseph: median time / synthgen-joseph's at that size (how many times faster synthgen-joseph is).",
        f"# corr, rel L2: Pearson r and ||a-b||/||b|| against synthgen-siddon's image of mu at {MU_KEV:g} keV "
        "(1/mm x mm; synthgen joseph/siddon as mu-weighted water+bone integrals); synthgen-render's image is "
        "its 120 kVp -log(I/I0), so a lower r is physics (beam hardening), not geometry.",
        "# geom err: largest distance (mm) between a peer's ray source/pixel positions and synthgen's.",
        "# cores own/other: mean CPU cores used by the case / by all other processes while it was timed "
        "(other > ~0.2 means the machine was shared and that time is inflated).",
        "",
        f"{'size':>5s}  {'renderer':18s} {'median s':>9s} {'first s':>8s} {'peak RSS GiB':>12s} {'t/joseph':>8s} "
        f"{'corr':>8s} {'rel L2':>8s} {'geom err mm':>11s} {'cores own/other':>15s}  note",
    ]
    for r in results:
        ok = r["status"] == "ok"
        lines.append(
            f"{r['size']:>5d}  {r['case']:18s} "
            f"{_fmt(r.get('median_s'), '9.3f') if ok else r['status'].upper():>9s} "
            f"{_fmt(r.get('first_s'), '8.2f'):>8s} {_fmt(r.get('peak_rss_gib'), '12.2f'):>12s} "
            f"{_fmt(r.get('ratio'), '8.2f'):>8s} {_fmt(r.get('corr'), '8.5f'):>8s} {_fmt(r.get('rel_l2'), '8.2e'):>8s} "
            f"{_fmt(r.get('geom_err_mm'), '11.1e'):>11s} "
            f"{_fmt(r.get('own_cores'), '7.2f'):>7s}/{_fmt(r.get('other_cores'), '<7.2f'):7s}  {r.get('note', '')}"
        )
    return "\n".join(lines)


def _cases(args) -> list[str]:
    if args.skip_peers:
        return list(SYNTHGEN_CASES)
    peers = []
    for p in args.peers:
        for c in PEER_GROUPS.get(p, (p,)):
            if c not in peers:
                peers.append(c)
    return [*SYNTHGEN_CASES, *[c for c in PEER_CASES if c in peers]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 512], help="detector sizes (n x n pixels)")
    parser.add_argument("--repeat", type=int, default=3, help="timed renders per case, after one warm-up")
    parser.add_argument(
        "--peers", nargs="+", default=["diffdrr", "nanodrr", "itk"],
        choices=sorted({*PEER_CASES, *PEER_GROUPS}), help="peers to run ('diffdrr' = its siddon and trilinear)",
    )
    parser.add_argument("--skip-peers", action="store_true", help="run synthgen only")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case before it is killed")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--case", choices=[*SYNTHGEN_CASES, *PEER_CASES], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--image-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or any(s < 2 for s in args.sizes):
        parser.error(f"--repeat must be >= 1 and --sizes >= 2, got {args.repeat} and {args.sizes}")

    if args.case is not None:  # internal: one case in this (fresh) process
        print("RESULT " + json.dumps(run_case(args.case, args.size, args.repeat, args.image_out)), flush=True)
        return

    machine = _machine()
    cases = _cases(args)
    results, images = [], {}
    missing = {case: why for case in cases if (why := _missing(case)) is not None}
    for why in dict.fromkeys(missing.values()):
        print(f"note: {why}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for case in cases:
                if case in missing:
                    results.append({"case": case, "size": size, "status": "skipped", "note": missing[case]})
                    continue
                path = Path(tmp) / f"{case}_{size}.npy"
                print(f"... {case} at {size}x{size}", file=sys.stderr, flush=True)
                res = _spawn(case, size, args.repeat, path, args.timeout)
                if res["status"] == "ok":
                    images[(case, size)] = path
                results.append(res)
        _compare(results, images)
    print(_table(results, machine, args.repeat))
    if args.json is not None:
        payload = {"machine": machine, "repeat": args.repeat, "excluded_from_time": EXCLUDED, "results": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
