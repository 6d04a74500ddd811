"""`synthgen train vae|ldm|controlnet`: the three training stages of the latent diffusion stack.

One config file (configs/train_cpu.yaml, configs/train_gpu.yaml) holds the networks, the data
and the per-stage settings; every stage writes into the same run folder::

    RUN/cache/                 augmented training variants (.npz), built once
    RUN/checkpoints/<stage>/   step_NNNNNN/ (model, EMA, optimizer: safetensors) + state.json
    RUN/previews/<stage>/      PNG previews every ``preview_every`` steps
    RUN/vae/ RUN/unet/ RUN/text_encoder/ RUN/controlnet/   final (EMA) weights + config.yaml
    RUN/prior.json RUN/latent.json RUN/train_config.yaml

The run folder is a pipeline folder: `synthgen.pipelines.MaskToCTPipeline.from_pretrained(RUN)`
loads it. ``--resume`` continues from the newest checkpoint of the stage; all randomness is
derived from (seed, rank, step), so a resumed run draws the same batches an uninterrupted one
would. Under ``torchrun`` the model is wrapped in DDP (gloo on CPU, nccl on CUDA), each rank
draws its own crops, rank 0 writes; the end of each stage records every rank's weight hash.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthgen.config import save_config
from synthgen.errors import InputError, did_you_mean
from synthgen.fidelity import thumbnail
from synthgen.models.checkpoint import load_module, load_optimizer, save_module, save_optimizer, state_hash
from synthgen.models.conditioning import Prior, channel_index, one_hot
from synthgen.models.hu import hu_to_model, model_to_hu
from synthgen.models.networks import (
    DiffusionConfig,
    UNetConfig,
    VAEConfig,
    build_controlnet,
    build_unet,
    build_vae,
    init_controlnet_from_unet,
)
from synthgen.models.sampling import sample_latent
from synthgen.models.segmenter import SegmenterConfig, build_segmenter, organ_targets
from synthgen.models.text_encoder import SpecEncoder, collate, spec_to_indices
from synthgen.report.montage import save_png, window
from synthgen.text.prompt import parse_prompt
from synthgen.train.data import DataConfig, Sample, build_cache
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

STAGES = ("vae", "ldm", "controlnet", "segmenter")
#: Air (-1024 HU) in model units: the padding of crops and volumes.
_AIR = hu_to_model(np.float32(-1024))


@dataclasses.dataclass
class StageConfig:
    steps: int = 1000
    batch: int = 1
    crop: list[int] = dataclasses.field(default_factory=lambda: [48, 48, 48])  # image voxels
    lr: float = 1e-3
    ema: float = 0.995
    checkpoint_every: int = 100
    preview_every: int = 250
    keep_checkpoints: int = 2


@dataclasses.dataclass
class TrainConfig:
    vae: VAEConfig = dataclasses.field(default_factory=VAEConfig)
    unet: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    vae_stage: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(steps=1000, lr=1e-3))
    ldm_stage: StageConfig = dataclasses.field(
        default_factory=lambda: StageConfig(steps=2000, batch=2, crop=[64, 64, 64], lr=5e-4))
    controlnet_stage: StageConfig = dataclasses.field(
        default_factory=lambda: StageConfig(steps=1000, batch=2, crop=[64, 64, 64], lr=5e-4))
    segmenter: SegmenterConfig = dataclasses.field(default_factory=SegmenterConfig)
    segmenter_stage: StageConfig = dataclasses.field(
        default_factory=lambda: StageConfig(steps=600, batch=2, crop=[64, 64, 64], lr=2e-3))
    kl_weight: float = 1e-6
    grad_weight: float = 0.5
    seed: int = 0
    threads: int = 2


# ----------------------------------------------------------------------------- helpers
class _Dist:
    """Rank/world of this process; initialises torch.distributed under torchrun."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather_strings(self, s: str) -> list[str]:
        if self.world == 1:
            return [s]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, s)
        return [str(x) for x in out]


class _LossModule(torch.nn.Module):
    """``forward(step)`` = the stage's loss on its trained modules, so DDP wraps one module whose
    forward is the whole step (and synchronises every trained parameter's gradient)."""

    def __init__(self, holder: torch.nn.ModuleDict, loss_fn) -> None:
        super().__init__()
        self.holder = holder
        self._loss_fn = loss_fn

    def forward(self, step: int) -> torch.Tensor:
        return self._loss_fn(self.holder, step)


class EMA:
    """Exponential moving average of a module's floating-point state."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, module: torch.nn.Module) -> torch.nn.Module:
        module.load_state_dict(self.shadow)
        return module


def _rng(seed: int, rank: int, step: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, rank, step, stream])


def _crop_box(shape, crop, rng: np.random.Generator, labels: np.ndarray | None = None) -> tuple[slice, ...]:
    """A random crop box; centred on a body voxel when labels are given (so crops see anatomy)."""
    starts = []
    centre = None
    if labels is not None:
        idx = np.flatnonzero(labels.ravel()[::7])
        if idx.size:
            centre = np.unravel_index(idx[int(rng.integers(idx.size))] * 7, labels.shape)
    for a, (n, c) in enumerate(zip(shape, crop)):
        if n <= c:
            starts.append(0)
        elif centre is not None:
            starts.append(int(np.clip(centre[a] - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, n - c)))
        else:
            starts.append(int(rng.integers(0, n - c + 1)))
    return tuple(slice(s, s + c) for s, c in zip(starts, crop))


def _pad_to(a: np.ndarray, shape, value) -> np.ndarray:
    pad = [(0, max(0, s - n)) for n, s in zip(a.shape, shape)]
    return np.pad(a, pad, constant_values=value) if any(p[1] for p in pad) else a


def _checkpoints(run: Path, stage: str) -> list[Path]:
    d = run / "checkpoints" / stage
    return sorted(p for p in d.glob("step_*") if (p / "state.json").exists()) if d.exists() else []


def _save_checkpoint(run: Path, stage: str, step: int, model, ema: EMA, opt, extra: dict, keep: int) -> None:
    d = run / "checkpoints" / stage / f"step_{step:06d}"
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_module(model, tmp / "model.safetensors")
    save_module(ema.copy_to(_clone_module(model)), tmp / "ema.safetensors")
    save_optimizer(opt, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    for old in _checkpoints(run, stage)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _clone_module(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


def _preview_png(rows: list[list[np.ndarray]], path: Path) -> None:
    """Grid of mid-axial slices (HU), soft-tissue window, one row per item."""

    tiles = [np.concatenate([window(a, center=40, width=600) for a in row], axis=1) for row in rows]
    w = max(t.shape[1] for t in tiles)
    img = np.concatenate([np.pad(t, ((0, 2), (0, w - t.shape[1]))) for t in tiles], axis=0)
    rgb = np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(rgb, path, overwrite=True)


def _mid_axial(vol: np.ndarray) -> np.ndarray:
    return np.rot90(vol[:, :, vol.shape[2] // 2])


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Runs one stage of a `TrainConfig` into a run folder (see module docstring)."""

    def __init__(self, cfg: TrainConfig, run: str | os.PathLike, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.run = Path(run)
        self.progress = progress
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, cfg.threads))
        self.dist = _Dist(self.device)
        f = cfg.vae.downsample
        for name in ("vae_stage", "ldm_stage", "controlnet_stage", "segmenter_stage"):
            crop = getattr(cfg, name).crop
            if len(crop) != 3 or any(c % f or c < f for c in crop):
                raise InputError(f"{name}.crop must be 3 sizes, each a multiple of the VAE factor {f}, got {crop}")

    # -- data ---------------------------------------------------------------
    def samples(self) -> list[Sample]:
        if not hasattr(self, "_samples"):
            cache = self.run / "cache"
            if self.dist.main:
                build_cache(self.cfg.data, cache, progress=self.progress)
            self.dist.barrier()
            files = build_cache(self.cfg.data, cache, progress=False)
            self._samples = [Sample.load(p) for p in files]
        return self._samples

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    # -- generic loop -------------------------------------------------------
    def _loop(self, stage: str, model: torch.nn.Module, params, loss_fn, preview_fn, *, resume: bool,
              extra_modules: dict[str, torch.nn.Module] | None = None) -> dict:
        sc: StageConfig = getattr(self.cfg, f"{stage}_stage")
        trained = {"model": model, **(extra_modules or {})}
        holder = torch.nn.ModuleDict(trained)
        opt = torch.optim.AdamW(params, lr=sc.lr, weight_decay=0.0)
        ema = EMA(holder, sc.ema)
        start = 0
        if resume and (ckpts := _checkpoints(self.run, stage)):
            last = ckpts[-1]
            load_module(holder, last / "model.safetensors")
            ema.shadow = {k: v.clone() for k, v in load_module(_clone_module(holder), last / "ema.safetensors")
                          .state_dict().items()}
            load_optimizer(opt, last / "optimizer.safetensors")
            start = json.loads((last / "state.json").read_text())["step"]
        elif not resume and _checkpoints(self.run, stage):
            raise InputError(f"{self.run} already has {stage} checkpoints; pass --resume to continue them "
                             "or choose another --out")
        wrapped = self.dist.wrap(_LossModule(holder, loss_fn))
        for g in opt.param_groups:
            g.setdefault("initial_lr", sc.lr)

        def lr_factor(s: int) -> float:  # 50-step warm-up, cosine decay to 10 %
            return min(1.0, (s + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, sc.steps) / sc.steps)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor, last_epoch=start - 1)
        from tqdm.auto import tqdm

        losses: list[float] = []
        log = self.run / "checkpoints" / stage / "loss.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(range(start, sc.steps), desc=f"train {stage}", disable=not (self.progress and self.dist.main),
                   initial=start, total=sc.steps)
        t0 = time.perf_counter()
        for step in bar:
            holder.train()
            # global RNG (e.g. the VAE's reparameterisation) from (seed, rank, step): resume-exact
            torch.manual_seed(int(_rng(self.cfg.seed, self.dist.rank, step, 2).integers(2**62)))
            with self._autocast():
                loss = wrapped(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(holder.parameters(), 1.0)
            opt.step()
            sched.step()
            ema.update(holder)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            done = step + 1
            if self.dist.main:
                with open(log, "a") as f:
                    f.write(json.dumps({"step": done, "loss": losses[-1]}) + "\n")
                if done % sc.checkpoint_every == 0 or done == sc.steps:
                    _save_checkpoint(self.run, stage, done, holder, ema, opt, {"loss": losses[-1]},
                                     sc.keep_checkpoints)
                if preview_fn is not None and (done % sc.preview_every == 0 or done == sc.steps):
                    ema_holder = ema.copy_to(_clone_module(holder)).eval()
                    with torch.no_grad():
                        preview_fn(ema_holder, self.run / "previews" / stage / f"step_{done:06d}.png")
        final = ema.copy_to(_clone_module(holder)).eval()
        hashes = self.dist.gather_strings(state_hash(holder))
        self.dist.barrier()
        return {"final": final, "losses": losses, "seconds": time.perf_counter() - t0, "start": start,
                "rank_hashes": hashes}

    def _export(self, component: str, module: torch.nn.Module, config: Any, info: dict) -> None:
        if not self.dist.main:
            return
        d = self.run / component
        d.mkdir(parents=True, exist_ok=True)
        save_module(module, d / "model.safetensors")
        save_config(config, d / "config.yaml", overwrite=True)
        (d / "train_info.json").write_text(json.dumps(info, indent=1))

    def _info(self, res: dict) -> dict:
        return {"steps_run": len(res["losses"]), "resumed_from": res["start"], "seconds": round(res["seconds"], 1),
                "final_loss_mean20": float(np.mean(res["losses"][-20:])) if res["losses"] else None,
                "rank_weight_hashes": res["rank_hashes"], "threads": self.cfg.threads,
                "device": self.device.type, "world_size": self.dist.world}

    # -- stage: VAE ---------------------------------------------------------
    def train_vae(self, *, resume: bool = False) -> dict:
        cfg, sc = self.cfg, self.cfg.vae_stage
        samples = self.samples()
        torch.manual_seed(cfg.seed)
        vae = build_vae(cfg.vae).to(self.device)

        def batch(step: int) -> torch.Tensor:
            rng = _rng(cfg.seed, self.dist.rank, step)
            xs = []
            for _ in range(sc.batch):
                s = samples[int(rng.integers(len(samples)))]
                box = _crop_box(s.hu.shape, sc.crop, rng, s.labels)
                xs.append(_pad_to(hu_to_model(s.hu[box]), sc.crop, _AIR))
            return torch.from_numpy(np.stack(xs)[:, None]).to(self.device)

        def loss_fn(model, step):
            x = batch(step)
            recon, mu, sigma = model["model"](x)
            kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-8) - 1).mean()
            grad = sum((torch.diff(recon.float(), dim=d) - torch.diff(x, dim=d)).abs().mean() for d in (2, 3, 4))
            return (recon.float() - x).abs().mean() + cfg.grad_weight * grad + cfg.kl_weight * kl

        fixed = samples[0]

        def preview(holder, path):
            f = cfg.vae.downsample
            x = _pad_to(hu_to_model(fixed.hu), [math.ceil(n / f) * f for n in fixed.hu.shape], _AIR)
            rec = holder["model"].reconstruct(torch.from_numpy(x)[None, None].to(self.device))[0, 0].cpu().numpy()
            _preview_png([[_mid_axial(fixed.hu.astype(np.float32)), _mid_axial(model_to_hu(rec))]], path)

        res = self._loop("vae", vae, vae.parameters(), loss_fn, preview, resume=resume)
        self._export("vae", res["final"]["model"], cfg.vae, self._info(res))
        if self.dist.main:
            save_config(cfg, self.run / "train_config.yaml", overwrite=True)
        return res

    # -- latents shared by the diffusion stages ------------------------------
    def _load_vae(self) -> torch.nn.Module:
        """The trained VAE of this run, read once (latents and every preview use it)."""
        if not hasattr(self, "_vae"):
            p = self.run / "vae" / "model.safetensors"
            if not p.exists():
                raise InputError(f"{self.run}: no trained VAE (run `synthgen train vae` with this --out first)")
            self._vae = load_module(build_vae(self.cfg.vae), p).to(self.device).eval()
        return self._vae

    def latents(self) -> dict:
        """Per sample: latent of the CT, latent of its prior image, channels, spec tokens; + scale."""
        if hasattr(self, "_latents"):
            return self._latents
        samples = self.samples()
        prior_path = self.run / "prior.json"
        if prior_path.exists():
            prior = Prior.from_mapping(json.loads(prior_path.read_text()))
        else:
            prior = Prior.measure((hu_to_model(s.hu), s.labels) for s in samples)
            if self.dist.main:
                prior_path.write_text(prior.to_json())
        vae = self._load_vae()
        f = self.cfg.vae.downsample
        m = f * 2 ** (len(self.cfg.unet.channels) - 1)  # whole volumes must pass the UNet too
        out = []

        for s in samples:
            shape = [math.ceil(n / m) * m for n in s.hu.shape]
            lab = _pad_to(s.labels, shape, 0)
            vol = Volume(lab, np.diag([*s.spacing, 1.0]), kind="label", vocab=Vocabulary.default())
            y = _pad_to(hu_to_model(s.hu), shape, float(_AIR))
            yp = prior.image(vol)
            with torch.no_grad():
                z = vae.encode(torch.from_numpy(np.stack([y, yp])[:, None]).to(self.device))[0]
            out.append({"z": z[0].cpu(), "zp": z[1].cpu(), "channels": torch.from_numpy(channel_index(vol)),
                        "tokens": spec_to_indices(parse_prompt(s.caption)),
                        "spacing": torch.tensor(s.spacing, dtype=torch.float32)})
        lat_path = self.run / "latent.json"
        if lat_path.exists():
            scale = json.loads(lat_path.read_text())["scale"]
        else:
            r = torch.cat([(o["z"] - o["zp"]).flatten() for o in out])
            scale = float(1.0 / r.std())
            if self.dist.main:
                lat_path.write_text(json.dumps({"scale": scale, "factor": f}))
        thumbs = self.run / "training_thumbnails.safetensors"
        if self.dist.main and not thumbs.exists():
            from safetensors.numpy import save_file


            save_file({"thumbnails": np.stack([thumbnail(s.hu, s.labels) for s in samples]).astype(np.float16)},
                      str(thumbs), metadata={"sources": json.dumps([s.source for s in samples])})
        self._latents = {"items": out, "scale": scale, "prior": prior}
        return self._latents

    def _noise_scheduler(self):
        from diffusers import DDPMScheduler

        d = self.cfg.diffusion
        return DDPMScheduler(num_train_timesteps=d.train_timesteps, beta_start=d.beta_start, beta_end=d.beta_end,
                             beta_schedule="scaled_linear", prediction_type=d.prediction, clip_sample=False)

    def _diffusion_batch(self, step: int, crop_latent: list[int], batch: int) -> dict:
        lat = self.latents()
        items, scale = lat["items"], lat["scale"]
        f = self.cfg.vae.downsample
        rng = _rng(self.cfg.seed, self.dist.rank, step, 1)
        zs, chans, toks, sps = [], [], [], []
        for _ in range(batch):
            it = items[int(rng.integers(len(items)))]
            box = _crop_box(it["z"].shape[1:], crop_latent, rng,
                            it["channels"][::f, ::f, ::f].numpy())
            res = (it["z"] - it["zp"])[(slice(None), *box)] * scale
            zs.append(torch.from_numpy(_pad_to(res.numpy(), [res.shape[0], *crop_latent], 0.0)))
            ibox = tuple(slice(b.start * f, b.stop * f) for b in box)
            chans.append(torch.from_numpy(_pad_to(it["channels"][ibox].numpy(), [c * f for c in crop_latent], 0)))
            toks.append(it["tokens"])
            sps.append(it["spacing"])
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        z0 = torch.stack(zs)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, self.cfg.diffusion.train_timesteps, (z0.shape[0],), generator=gen)
        drop = torch.rand(z0.shape[0], generator=gen) < self.cfg.diffusion.cond_drop
        return {"z0": z0, "noise": noise, "t": t, "drop": drop, "tokens": collate(toks),
                "spacing": torch.stack(sps), "channels": torch.stack(chans)}

    def _denoise_loss(self, step: int, crop: list[int], batch: int, sched, forward) -> torch.Tensor:
        """MSE of ``forward(z_t, t, batch)`` against the noise or velocity target of a fresh batch."""
        dev = self.device
        b = self._diffusion_batch(step, crop, batch)
        zt = sched.add_noise(b["z0"], b["noise"], b["t"]).to(dev)
        b["tokens"] = {k: v.to(dev) for k, v in b["tokens"].items()}
        b["spacing"], b["drop"] = b["spacing"].to(dev), b["drop"].to(dev)
        pred = forward(zt, b["t"].to(dev), b)
        return F.mse_loss(pred.float(), self._target(sched, b["z0"], b["noise"], b["t"]).to(dev))

    def _target(self, sched, z0, noise, t):
        return sched.get_velocity(z0, noise, t) if self.cfg.diffusion.prediction == "v_prediction" else noise

    # -- stage: LDM (UNet + spec encoder) ----------------------------------------
    def train_ldm(self, *, resume: bool = False) -> dict:
        cfg, sc = self.cfg, self.cfg.ldm_stage
        lc = cfg.vae.latent_channels
        torch.manual_seed(cfg.seed + 1)
        unet = build_unet(cfg.unet, lc).to(self.device)
        enc = SpecEncoder(cfg.unet.context_dim).to(self.device)
        sched = self._noise_scheduler()
        crop = [c // cfg.vae.downsample for c in sc.crop]
        self.latents()

        def loss_fn(model, step):
            def forward(zt, t, b):
                ctx = model["encoder"](b["tokens"], b["spacing"], b["drop"])
                return model["model"](zt, t, context=ctx)

            return self._denoise_loss(step, crop, sc.batch, sched, forward)

        preview = self._diffusion_preview(controlnet=False)
        res = self._loop("ldm", unet, list(unet.parameters()) + list(enc.parameters()), loss_fn, preview,
                         resume=resume, extra_modules={"encoder": enc})
        self._export("unet", res["final"]["model"], cfg.unet, self._info(res))
        self._export("text_encoder", res["final"]["encoder"], {"dim": cfg.unet.context_dim}, self._info(res))
        return res

    # -- stage: ControlNet -----------------------------------------------------------
    def train_controlnet(self, *, resume: bool = False) -> dict:
        cfg, sc = self.cfg, self.cfg.controlnet_stage
        lc = cfg.vae.latent_channels
        unet, enc = self._load_unet_encoder()
        torch.manual_seed(cfg.seed + 2)
        cn = build_controlnet(cfg.unet, lc).to(self.device)
        init_controlnet_from_unet(cn, unet)
        sched = self._noise_scheduler()
        crop = [c // cfg.vae.downsample for c in sc.crop]
        self.latents()
        dev = self.device

        def loss_fn(model, step):
            def forward(zt, t, b):
                with torch.no_grad():
                    ctx = enc(b["tokens"], b["spacing"], b["drop"])
                down, mid = model["model"](zt, t, controlnet_cond=one_hot(b["channels"]).to(dev), context=ctx)
                return unet(zt, t, context=ctx, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid)

            return self._denoise_loss(step, crop, sc.batch, sched, forward)

        preview = self._diffusion_preview(controlnet=True)
        res = self._loop("controlnet", cn, cn.parameters(), loss_fn, preview, resume=resume)
        self._export("controlnet", res["final"]["model"], cfg.unet, self._info(res))
        return res

    def _load_unet_encoder(self):
        lc = self.cfg.vae.latent_channels
        for c in ("unet", "text_encoder"):
            if not (self.run / c / "model.safetensors").exists():
                raise InputError(f"{self.run}: no trained {c} (run `synthgen train ldm` with this --out first)")
        unet = load_module(build_unet(self.cfg.unet, lc), self.run / "unet" / "model.safetensors").to(self.device)
        enc = load_module(SpecEncoder(self.cfg.unet.context_dim), self.run / "text_encoder" / "model.safetensors")
        for m in (unet, enc):
            m.eval().requires_grad_(False)
        return unet, enc.to(self.device)

    def _diffusion_preview(self, *, controlnet: bool):
        """Preview: the first training variant regenerated from its label map and caption
        (20 DDIM steps), beside the real image and the prior."""
        def preview(holder, path):
            lat = self.latents()
            it, s = lat["items"][0], self.samples()[0]
            if controlnet:
                unet, enc = self._load_unet_encoder()
                cn = holder["model"]
            else:
                unet, enc, cn = holder["model"], holder["encoder"], None
            vae = self._load_vae()
            z = sample_latent(unet, enc, cn, zp=it["zp"][None].to(self.device), channels=it["channels"][None],
                              tokens=collate([it["tokens"]]), spacing=it["spacing"][None], scale=lat["scale"],
                              diffusion=self.cfg.diffusion, steps=20, guidance=1.0,
                              generator=torch.Generator().manual_seed(0))
            rec = model_to_hu(vae.decode(z)[0, 0].cpu().numpy())[tuple(slice(0, n) for n in s.hu.shape)]
            prior_img = model_to_hu(vae.decode(it["zp"][None].to(self.device))[0, 0].cpu().numpy())
            prior_img = prior_img[tuple(slice(0, n) for n in s.hu.shape)]
            _preview_png([[_mid_axial(s.hu.astype(np.float32)), _mid_axial(prior_img), _mid_axial(rec)]], path)
        return preview


def _is_real(sample: Sample) -> bool:
    return not sample.source.startswith("phantom")


def train_segmenter_stage(t: Trainer, *, resume: bool = False) -> dict:
    """The fidelity check's organ segmenter (`synthgen.models.segmenter`) on the real scans only."""
    from monai.losses import DiceCELoss

    cfg, sc = t.cfg, t.cfg.segmenter_stage
    samples = [s for s in t.samples() if _is_real(s)]
    if not samples:
        raise InputError("the segmenter trains on real scans; the training data has only phantoms")
    torch.manual_seed(cfg.seed + 3)
    model = build_segmenter(cfg.segmenter).to(t.device)
    loss_f = DiceCELoss(to_onehot_y=True, softmax=True)

    def loss_fn(holder, step):
        rng = _rng(cfg.seed, t.dist.rank, step, 3)
        xs, ys = [], []
        for _ in range(sc.batch):
            s = samples[int(rng.integers(len(samples)))]
            box = _crop_box(s.hu.shape, sc.crop, rng, s.labels)
            xs.append(_pad_to(hu_to_model(s.hu[box]), sc.crop, _AIR))
            ys.append(_pad_to(organ_targets(s.labels[box]), sc.crop, 0))
        x = torch.from_numpy(np.stack(xs)[:, None]).to(t.device)
        y = torch.from_numpy(np.stack(ys)[:, None]).to(t.device)
        return loss_f(holder["model"](x).float(), y)

    res = t._loop("segmenter", model, model.parameters(), loss_fn, None, resume=resume)
    t._export("segmenter", res["final"]["model"], cfg.segmenter, t._info(res))
    return res


def train(stage: str, cfg: TrainConfig, run: str | os.PathLike, *, resume: bool = False,
          progress: bool = True) -> dict:
    if stage not in STAGES:

        raise InputError(f"unknown training stage {stage!r}{did_you_mean(stage, STAGES)}; stages: {', '.join(STAGES)}")
    t = Trainer(cfg, run, progress=progress)
    if stage == "segmenter":
        return train_segmenter_stage(t, resume=resume)
    return getattr(t, f"train_{stage}")(resume=resume)
