"""What the diffusion stages (ldm, controlnet) train on: every training sample encoded once by
the run's VAE, noised crops of those latents, the denoising loss and the preview.

The model learns the latent *residual* ``(z - zp) * scale`` around the latent ``zp`` of the
sample's prior image (`synthgen.models.conditioning.Prior`, each voxel its structure's mean).
Encoding a run's samples also writes, once (rank 0), the files the pipelines read beside the
weights: ``prior.json``, ``latent.json`` (scale, VAE factor) and ``training_thumbnails.safetensors``
(for the memorisation check).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthgen.errors import InputError
from synthgen.fidelity import thumbnail
from synthgen.models.checkpoint import load_module
from synthgen.models.conditioning import Prior, channel_index
from synthgen.models.hu import hu_to_model, model_to_hu
from synthgen.models.networks import DiffusionConfig, VAEConfig, build_unet, build_vae
from synthgen.models.sampling import make_scheduler, sample_latent
from synthgen.models.text_encoder import SpecEncoder, collate, spec_to_indices
from synthgen.text.prompt import parse_prompt
from synthgen.train.config import StageConfig, TrainConfig
from synthgen.train.data import AIR, Sample, crop_box, pad_to, step_rng
from synthgen.train.loop import LossFn, PreviewFn, private_rng
from synthgen.train.previews import mid_axial, preview_png


@dataclasses.dataclass(frozen=True)
class LatentItem:
    """One sample in latent space: ``z`` and ``zp`` ``(C, d, h, w)``, label ``channels`` at image
    size (`synthgen.models.conditioning.channel_index`), caption ``tokens``, ``spacing`` (mm)."""

    z: torch.Tensor
    zp: torch.Tensor
    channels: torch.Tensor
    tokens: dict
    spacing: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Latents:
    items: list[LatentItem]
    scale: float  # 1 / std of the residual z - zp over all items


@dataclasses.dataclass(frozen=True)
class DiffusionBatch:
    """Residual latent crops ``z0``, their ``noise`` and timesteps ``t`` (on the CPU, where the
    noise schedule is applied), and their conditioning: caption tokens, spacing, the guidance
    dropout mask ``drop`` and the label channels at image size."""

    z0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    drop: torch.Tensor
    tokens: dict
    spacing: torch.Tensor
    channels: torch.Tensor

    def conditioning_on(self, device: torch.device) -> DiffusionBatch:
        """The batch with its conditioning moved to ``device``."""
        return dataclasses.replace(self, drop=self.drop.to(device), spacing=self.spacing.to(device),
                                   tokens={k: v.to(device) for k, v in self.tokens.items()},
                                   channels=self.channels.to(device))


#: ``forward(trained, z_t, t, batch)``: the stage's prediction of the noise (or velocity) target.
Forward = Callable[[torch.nn.ModuleDict, torch.Tensor, torch.Tensor, DiffusionBatch], torch.Tensor]


# ----------------------------------------------------------------------------- trained networks
def load_vae(run: Path, cfg: VAEConfig, device: torch.device) -> torch.nn.Module:
    """The run's trained VAE, in eval mode."""
    p = run / "vae" / "model.safetensors"
    if not p.exists():
        raise InputError(f"{run}: no trained VAE (run `synthgen train vae` with this --out first)")
    with private_rng():  # its random init is overwritten by the weights
        vae = build_vae(cfg)
    return load_module(vae, p).to(device).eval()


def load_unet_encoder(run: Path, cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The run's trained UNet and spec encoder, frozen (eval, no gradients)."""
    for c in ("unet", "text_encoder"):
        if not (run / c / "model.safetensors").exists():
            raise InputError(f"{run}: no trained {c} (run `synthgen train ldm` with this --out first)")
    with private_rng():  # their random init is overwritten by the weights
        unet, enc = build_unet(cfg.unet, cfg.vae.latent_channels), SpecEncoder(cfg.unet.context_dim)
    load_module(unet, run / "unet" / "model.safetensors")
    load_module(enc, run / "text_encoder" / "model.safetensors")
    return tuple(m.to(device).eval().requires_grad_(False) for m in (unet, enc))


# ----------------------------------------------------------------------------- encoding
def encode_samples(samples: list[Sample], vae: torch.nn.Module, *, cfg: TrainConfig, run: Path,
                   device: torch.device, write: bool) -> Latents:
    """Every sample through the VAE, padded so whole volumes also pass the UNet. The prior and the
    scale are measured on the first call and read from ``run`` afterwards; ``write``: this rank
    writes the run files (see module docstring)."""
    prior = _prior(samples, run / "prior.json", write=write)
    multiple = cfg.vae.downsample * 2 ** (len(cfg.unet.channels) - 1)
    items = [_encode(s, vae, prior, multiple=multiple, device=device) for s in samples]
    scale = _scale(items, run / "latent.json", factor=cfg.vae.downsample, write=write)
    thumbs = run / "training_thumbnails.safetensors"
    if write and not thumbs.exists():
        from safetensors.numpy import save_file

        stack = np.stack([thumbnail(s.ct.numpy(), s.labels.numpy()) for s in samples]).astype(np.float16)
        save_file({"thumbnails": stack}, str(thumbs), metadata={"sources": json.dumps([s.source for s in samples])})
    return Latents(items=items, scale=scale)


def _prior(samples: list[Sample], path: Path, *, write: bool) -> Prior:
    if path.exists():
        return Prior.from_mapping(json.loads(path.read_text()))
    prior = Prior.measure((hu_to_model(s.ct.numpy()), s.labels.numpy(), parse_prompt(s.caption).phase)
                          for s in samples)
    if write:
        path.write_text(prior.to_json())
    return prior


def _encode(s: Sample, vae: torch.nn.Module, prior: Prior, *, multiple: int, device: torch.device) -> LatentItem:
    spec = parse_prompt(s.caption)
    shape = [math.ceil(n / multiple) * multiple for n in s.ct.shape]
    # padded at the high end only: voxel 0, and so the affine, stay valid for the padded grid
    labels = s.labels.replace(array=pad_to(s.labels.numpy(), shape, 0))
    y = pad_to(hu_to_model(s.ct.numpy()), shape, AIR)
    with torch.no_grad():
        z = vae.encode(torch.from_numpy(np.stack([y, prior.image(labels, spec.phase)])[:, None]).to(device))[0]
    return LatentItem(z=z[0].cpu(), zp=z[1].cpu(), channels=torch.from_numpy(channel_index(labels)),
                      tokens=spec_to_indices(spec),
                      spacing=torch.tensor(s.ct.spacing, dtype=torch.float32))


def _scale(items: list[LatentItem], path: Path, *, factor: int, write: bool) -> float:
    if path.exists():
        return json.loads(path.read_text())["scale"]
    scale = float(1.0 / torch.cat([(it.z - it.zp).flatten() for it in items]).std())
    if write:
        path.write_text(json.dumps({"scale": scale, "factor": factor}))
    return scale


# ----------------------------------------------------------------------------- batches and loss
def diffusion_batch(lat: Latents, step: int, *, crop: list[int], batch: int, cfg: TrainConfig,
                    rank: int) -> DiffusionBatch:
    """``batch`` random latent crops of ``crop`` latent voxels with their noise, timesteps and
    guidance dropout, all drawn from (seed, rank, step)."""
    f = cfg.vae.downsample
    rng = step_rng(cfg.seed, rank, step, 1)
    zs, chans, toks, sps = [], [], [], []
    for _ in range(batch):
        it = lat.items[int(rng.integers(len(lat.items)))]
        box = crop_box(it.z.shape[1:], crop, rng, it.channels[::f, ::f, ::f].numpy())
        res = (it.z - it.zp)[(slice(None), *box)] * lat.scale
        zs.append(torch.from_numpy(pad_to(res.numpy(), [res.shape[0], *crop], 0.0)))
        ibox = tuple(slice(b.start * f, b.stop * f) for b in box)
        chans.append(torch.from_numpy(pad_to(it.channels[ibox].numpy(), [c * f for c in crop], 0)))
        toks.append(it.tokens)
        sps.append(it.spacing)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    z0 = torch.stack(zs)
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, cfg.diffusion.train_timesteps, (z0.shape[0],), generator=gen)
    drop = torch.rand(z0.shape[0], generator=gen) < cfg.diffusion.cond_drop
    return DiffusionBatch(z0=z0, noise=noise, t=t, drop=drop, tokens=collate(toks), spacing=torch.stack(sps),
                          channels=torch.stack(chans))


def noise_scheduler(d: DiffusionConfig):
    """The DDPM training noise schedule of ``d``."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=d.train_timesteps, beta_start=d.beta_start, beta_end=d.beta_end,
                         beta_schedule="scaled_linear", prediction_type=d.prediction, clip_sample=False)


def denoising_loss(lat: Latents, forward: Forward, *, cfg: TrainConfig, stage: StageConfig, rank: int,
                   device: torch.device) -> LossFn:
    """The loop's ``loss_fn``: MSE of ``forward`` on a fresh `diffusion_batch` against the noise
    (or, for v-prediction, the velocity) target."""
    sched = noise_scheduler(cfg.diffusion)
    crop = [c // cfg.vae.downsample for c in stage.crop]

    def loss_fn(trained: torch.nn.ModuleDict, step: int) -> torch.Tensor:
        b = diffusion_batch(lat, step, crop=crop, batch=stage.batch, cfg=cfg, rank=rank)
        zt = sched.add_noise(b.z0, b.noise, b.t).to(device)
        pred = forward(trained, zt, b.t.to(device), b.conditioning_on(device))
        v = cfg.diffusion.prediction == "v_prediction"
        target = sched.get_velocity(b.z0, b.noise, b.t) if v else b.noise
        return F.mse_loss(pred.float(), target.to(device))

    return loss_fn


def diffusion_preview(lat: Latents, sample: Sample, vae: torch.nn.Module, networks: Callable, *,
                      diffusion: DiffusionConfig, device: torch.device) -> PreviewFn:
    """The loop's ``preview``: ``sample`` (the first training variant, whose latents are
    ``lat.items[0]``) regenerated from its label map and caption (20 DDIM steps, seed 0), beside
    the real image and the decoded prior. ``networks(ema_modules)`` -> (unet, encoder, controlnet)."""
    it = lat.items[0]
    box = tuple(slice(0, n) for n in sample.ct.shape)

    def decoded_hu(z: torch.Tensor) -> np.ndarray:
        return model_to_hu(vae.decode(z)[0, 0].cpu().numpy())[box]

    def preview(ema: torch.nn.ModuleDict, path: Path) -> None:
        unet, enc, cn = networks(ema)
        z = sample_latent(unet, enc, cn, scheduler=make_scheduler(diffusion, "ddim"), zp=it.zp[None].to(device),
                          channels=it.channels[None], tokens=collate([it.tokens]), spacing=it.spacing[None],
                          scale=lat.scale, steps=20, guidance=1.0, generator=torch.Generator().manual_seed(0))
        real = sample.ct.numpy().astype(np.float32)
        preview_png([[mid_axial(real), mid_axial(decoded_hu(it.zp[None].to(device))), mid_axial(decoded_hu(z))]],
                    path)

    return preview
