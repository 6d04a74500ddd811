"""CPU cost of the latent diffusion stack: generation, tiled VAE decode, training step vs plain MONAI.

Every case runs in its own subprocess, so its ``ru_maxrss`` is that case's peak RSS.

* ``generate``: `TextToCTPipeline` on the given weights (default: the shipped ones), prompt
  "chest CT, 3 cm tumour in the liver", 96x96x96 at 4 mm, 30 DDIM steps, guidance 2 — the
  label map, the sampling and the decode, timed end to end (model load reported apart).
* ``decode-whole`` / ``decode-tiled``: VAE decode of the latent of a 256x256x128 volume (the
  example CT resampled to that grid), in one piece or in 24^3-latent tiles (MONAI sliding
  window, Gaussian blending); also the |HU| difference between the two inside the body. The
  timings and peaks include encoding the volume once (the same in both cases).
* ``train-synthgen`` / ``train-monai``: seconds per LDM training step (UNet + spec encoder,
  batch 2, 64^3 crops -> 16^3 latents) through `synthgen.train.loop`, and the same UNet
  instantiated straight from MONAI with a bare AdamW loop on random tensors of the same shapes.

    python benchmarks/generate.py [--weights DIR] [--steps 30] [--train-steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("generate", "decode-whole", "decode-tiled", "train-synthgen", "train-monai")


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def case_generate(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from synthgen.pipelines.latent_ct import TextToCTPipeline

    t0 = time.perf_counter()
    pipe = TextToCTPipeline.from_pretrained(args.weights)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = pipe("chest CT, 3 cm tumour in the liver", size=(96, 96, 96), spacing=4.0, num_inference_steps=args.steps,
               guidance_scale=2.0, scheduler="ddim", generator=torch.Generator().manual_seed(0))
    return {"seconds": time.perf_counter() - t0, "load_seconds": load, "shape": list(res.ct.shape)}


def _vae(args):
    """The pipeline and the latent of a real 256x256x128 volume: the example CT resampled to that
    grid (1.41 x 1.41 x 2.6 mm), encoded in tiles-free one piece (a random latent would make the
    tiled/whole comparison meaningless)."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from synthgen.data import example_ct
    from synthgen.models.hu import hu_to_model
    from synthgen.pipelines.latent_ct import MaskToCTPipeline

    pipe = MaskToCTPipeline.from_pretrained(args.weights)
    ct, _ = example_ct()
    shape = (256, 256, 128)
    ct = ct.resample([n * s / m for n, s, m in zip(ct.shape, ct.spacing, shape)])
    hu = np.full(shape, -1024.0, np.float32)
    a = ct.numpy()[: shape[0], : shape[1], : shape[2]]
    hu[: a.shape[0], : a.shape[1], : a.shape[2]] = a
    with torch.no_grad():
        z = pipe.vae.encode(torch.from_numpy(hu_to_model(hu))[None, None])[0]
    np.save(Path(args.tmp) / "body.npy", hu > -500)
    return pipe, z


def case_decode(args, tiled: bool) -> dict:
    import numpy as np
    import torch

    from synthgen.models.hu import model_to_hu
    from synthgen.pipelines.latent_ct import tiled_decode

    pipe, z = _vae(args)
    t0 = time.perf_counter()
    with torch.no_grad():
        y = tiled_decode(pipe.vae, z, tile=24 if tiled else None)
    out = {"seconds": time.perf_counter() - t0, "shape": list(y.shape[2:])}
    np.save(Path(args.tmp) / f"decode_{int(tiled)}.npy", model_to_hu(y[0, 0].numpy()).astype(np.float32))
    return out


def _ldm_config(args):
    from synthgen.config import load_config
    from synthgen.train import TrainConfig

    return load_config(TrainConfig, paths=[args.config], overrides=[f"threads={args.threads}"])


def case_train_synthgen(args) -> dict:
    """Steps of the real LDM stage on a run folder prepared by the parent (cache + VAE)."""
    from synthgen.train import train

    cfg = _ldm_config(args)
    cfg.ldm_stage.steps = args.train_steps + 3
    cfg.ldm_stage.checkpoint_every = 10**9
    cfg.ldm_stage.preview_every = 10**9
    res = train("ldm", cfg, args.run, progress=False)
    return {"seconds_per_step": res["seconds"] / len(res["losses"]), "steps": len(res["losses"])}


def case_train_monai(args) -> dict:
    import torch
    from monai.networks.nets import DiffusionModelUNet

    torch.set_num_threads(args.threads)
    cfg = _ldm_config(args)
    u, lc = cfg.unet, cfg.vae.latent_channels
    unet = DiffusionModelUNet(spatial_dims=3, in_channels=lc, out_channels=lc, channels=tuple(u.channels),
                              attention_levels=tuple(u.attention_levels), num_res_blocks=u.num_res_blocks,
                              norm_num_groups=u.norm_num_groups, num_head_channels=u.num_head_channels,
                              with_conditioning=True, cross_attention_dim=u.context_dim)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    n = [c // cfg.vae.downsample for c in cfg.ldm_stage.crop]
    b = cfg.ldm_stage.batch
    x, ctx = torch.randn(b, lc, *n), torch.randn(b, 9, u.context_dim)
    times = []
    for _ in range(args.train_steps + 3):
        t0 = time.perf_counter()
        loss = (unet(x, torch.randint(0, 1000, (b,)), context=ctx) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"seconds_per_step": sum(times[3:]) / len(times[3:]), "steps": len(times)}


def _child(args) -> None:
    fn = {"generate": case_generate, "decode-whole": lambda a: case_decode(a, False),
          "decode-tiled": lambda a: case_decode(a, True), "train-synthgen": case_train_synthgen,
          "train-monai": case_train_monai}[args.case]
    out = fn(args)
    out["peak_rss_gib"] = _peak_gib()
    print("RESULT " + json.dumps(out))


def _run_case(case: str, args, tmp: str, run: str) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--tmp", tmp, "--run", run, "--threads", str(args.threads),
           "--steps", str(args.steps), "--train-steps", str(args.train_steps), "--config", args.config]
    if args.weights:
        cmd += ["--weights", args.weights]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def _prepare_run(args, run: Path) -> None:
    """A run folder with the weights' VAE and a small training cache, for the LDM step timing."""
    import shutil

    from synthgen.pipelines.latent_ct import default_weights

    weights = Path(args.weights) if args.weights else default_weights()
    run.mkdir(parents=True, exist_ok=True)
    shutil.copytree(weights / "vae", run / "vae")
    cfg = _ldm_config(args)
    cfg.data.example_variants, cfg.data.phantoms = 2, 1
    from synthgen.train.data import build_cache

    build_cache(cfg.data, run / "cache", progress=False)
    # the VAE in the weights folder may be stored in float16: the trainer reads it as float32
    from synthgen.models.checkpoint import load_module, save_module
    from synthgen.models.networks import build_vae

    save_module(load_module(build_vae(cfg.vae), run / "vae" / "model.safetensors").float(),
                run / "vae" / "model.safetensors")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None)
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "train_cpu.yaml"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--json", default=None)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        _child(args)
        return
    import numpy as np

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        if any(c.startswith("train") for c in args.cases):
            _prepare_run(args, run)
        for case in args.cases:
            results[case] = _run_case(case, args, tmp, str(run))
            print(f"{case:15s} {json.dumps(results[case])}", flush=True)
        a, b = Path(tmp) / "decode_0.npy", Path(tmp) / "decode_1.npy"
        if a.exists() and b.exists():
            body = np.load(Path(tmp) / "body.npy")
            diff = np.abs(np.load(a) - np.load(b))
            results["tiled_vs_whole_mean_abs_hu_in_body"] = float(diff[body].mean())
            results["tiled_vs_whole_p99_abs_hu_in_body"] = float(np.percentile(diff[body], 99))
    if "train-synthgen" in results and "train-monai" in results and "error" not in results["train-monai"] \
            and "error" not in results["train-synthgen"]:
        results["train_step_ratio_synthgen_over_monai"] = (results["train-synthgen"]["seconds_per_step"]
                                                           / results["train-monai"]["seconds_per_step"])
    results["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": args.threads, "python": platform.python_version()}
    print(json.dumps({k: v for k, v in results.items() if k not in CASES}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
