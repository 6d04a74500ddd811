"""The pipeline folder: every component of a latent CT pipeline read from and written to disk.

A pipeline folder (written by `save_components`, i.e. ``save_pretrained``) holds::

    pipeline.json          diffusion noise schedule, latent scale, training spacings (`PipelineSettings`)
    prior.json             per-structure mean intensity (`synthgen.models.conditioning.Prior`)
    vae/ unet/ text_encoder/ controlnet/ segmenter/    config.yaml + model.safetensors each
    scheduler/scheduler_config.json                   diffusers' own scheduler config
    training_thumbnails.safetensors                   for the memorisation check
    texture/bank.safetensors                          real detail per tissue (`synthgen.models.texture`), optional

A training run folder (``synthgen train --out RUN``) is read as one too: its settings come from
``train_config.yaml`` + ``latent.json``. A folder without ``scheduler/`` (a training run, the
shipped weights) samples with the named fallback scheduler built on its noise schedule.
Weights load strictly (`synthgen.models.checkpoint.load_module`); unknown settings are errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from synthgen._version import __version__
from synthgen.config import load_config, save_config
from synthgen.errors import InputError
from synthgen.files.atomic import atomic_dir
from synthgen.io.record import InputRef, sha256_file
from synthgen.models.checkpoint import load_module, save_module
from synthgen.models.conditioning import Prior
from synthgen.models.networks import DiffusionConfig, UNetConfig, VAEConfig, build_controlnet, build_unet, build_vae
from synthgen.models.sampling import SCHEDULERS, accepted_settings, make_scheduler, scheduler_class
from synthgen.models.segmenter import SegmenterConfig, load_segmenter
from synthgen.models.text_encoder import SpecEncoder
from synthgen.models.texture import BANK_FILE, TextureBank

#: The networks of a pipeline, each in its own sub-folder; controlnet and segmenter are optional.
NETWORKS = ("vae", "unet", "text_encoder", "controlnet", "segmenter")
#: The `DiffusionConfig` fields that are the training noise schedule (what sampling needs).
NOISE_SCHEDULE = ("train_timesteps", "beta_start", "beta_end", "prediction")
#: The keys of pipeline.json (``synthgen``: the version that wrote it, informational).
SETTINGS_KEYS = ("diffusion", "scale", "spacings", "synthgen")
#: The voxel sizes (mm) assumed trained on when a folder does not say.
TRAINED_SPACINGS_MM = (3.0, 4.0, 5.0)
THUMBNAILS = "training_thumbnails.safetensors"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """Everything a pipeline needs besides weights: the training noise schedule, the latent
    scale (``z = zp + r / scale``), the voxel sizes trained on (mm), and the network configs
    (written to each component's config.yaml; the ControlNet shares the UNet's)."""

    diffusion: DiffusionConfig
    scale: float
    vae: VAEConfig
    unet: UNetConfig
    spacings: tuple[float, ...] = TRAINED_SPACINGS_MM
    segmenter: SegmenterConfig | None = None

    @property
    def trained_mm(self) -> tuple[float, float]:
        """(smallest, largest) training voxel size in mm."""
        return min(self.spacings), max(self.spacings)

    def to_json(self) -> str:
        """pipeline.json."""
        doc = {"diffusion": {k: getattr(self.diffusion, k) for k in NOISE_SCHEDULE}, "scale": self.scale,
               "spacings": list(self.spacings), "synthgen": __version__}
        return json.dumps(doc, indent=1)


@dataclasses.dataclass(frozen=True)
class TrainingThumbnails:
    """Small copies of the training volumes (as stored) and where each came from, for
    `synthgen.fidelity.memorisation`."""

    images: np.ndarray
    sources: tuple[str, ...]

    @classmethod
    def read(cls, path: Path) -> TrainingThumbnails:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            return cls(images=f.get_tensor("thumbnails"), sources=tuple(json.loads(f.metadata()["sources"])))

    def write(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"thumbnails": np.ascontiguousarray(self.images)}, str(path),
                  metadata={"sources": json.dumps(list(self.sources))})


@dataclasses.dataclass(frozen=True)
class WeightFiles:
    """The folder a pipeline was loaded from and its weight files (each network's model file
    and the prior) by SHA-256: the ``inputs`` of every record it writes."""

    folder: Path
    files: tuple[InputRef, ...]

    @classmethod
    def of(cls, folder: Path) -> WeightFiles:
        names = [*(f"{c}/model.safetensors" for c in NETWORKS), "prior.json", f"texture/{BANK_FILE}"]
        return cls(folder=folder, files=tuple(InputRef(name=n, sha256=sha256_file(folder / n))
                                              for n in names if (folder / n).is_file()))


def load_components(folder: str | os.PathLike, *, fallback_scheduler: str) -> dict[str, Any]:
    """The constructor arguments of a pipeline, read from ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"weights folder not found: {folder} (train one with `synthgen train`, "
                         "see README, or leave --weights out for the shipped default)")
    settings = read_settings(folder)
    lc = settings.vae.latent_channels
    components: dict[str, Any] = {
        "vae": load_module(build_vae(settings.vae), _need(folder / "vae" / "model.safetensors")),
        "unet": load_module(build_unet(settings.unet, lc), _need(folder / "unet" / "model.safetensors")),
        "text_encoder": load_module(SpecEncoder(settings.unet.context_dim),
                                    _need(folder / "text_encoder" / "model.safetensors")),
        "controlnet": None, "segmenter": None,
        "scheduler": _load_scheduler(folder, settings, fallback_scheduler),
        "prior": Prior.from_mapping(_read_json_object(_need(folder / "prior.json"), folder)),
        "texture": TextureBank.load(folder / "texture") if (folder / "texture" / BANK_FILE).is_file() else None,
        "settings": settings,
        "thumbnails": TrainingThumbnails.read(folder / THUMBNAILS) if (folder / THUMBNAILS).is_file() else None,
        "weights": WeightFiles.of(folder),
    }
    if (folder / "controlnet" / "model.safetensors").is_file():
        components["controlnet"] = load_module(build_controlnet(settings.unet, lc),
                                               folder / "controlnet" / "model.safetensors")
    if settings.segmenter is not None:
        components["segmenter"] = load_segmenter(folder / "segmenter", settings.segmenter)
    return components


def save_components(components: Mapping[str, Any], folder: str | os.PathLike, *, half: bool = False,
                    overwrite: bool = False) -> Path:
    """Write a pipeline folder that `load_components` reads back into the same components
    (``half``: floating-point weights stored as float16, loaded back as float32)."""
    settings: PipelineSettings = components["settings"]
    configs = {"vae": settings.vae, "unet": settings.unet, "controlnet": settings.unet,
               "text_encoder": {"dim": components["text_encoder"].dim}, "segmenter": settings.segmenter}
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for name in NETWORKS:
            if components[name] is None:
                continue
            (tmp / name).mkdir()
            save_module(components[name], tmp / name / "model.safetensors", half=half)
            save_config(configs[name], tmp / name / "config.yaml", overwrite=True)
        components["scheduler"].save_pretrained(tmp / "scheduler")
        (tmp / "prior.json").write_text(components["prior"].to_json())
        if components["texture"] is not None:
            components["texture"].save(tmp / "texture")
        (tmp / "pipeline.json").write_text(settings.to_json())
        if components["thumbnails"] is not None:
            components["thumbnails"].write(tmp / THUMBNAILS)
    return Path(folder)


def read_settings(folder: Path) -> PipelineSettings:
    """pipeline.json (or a training run's equivalent) and the network configs."""
    doc, source = _settings_document(folder)
    unknown = sorted(set(doc) - set(SETTINGS_KEYS))
    missing = [k for k in ("diffusion", "scale") if k not in doc]
    if unknown or missing:
        raise InputError(f"{source}: " + (f"unknown settings {', '.join(unknown)}" if unknown else
                                          f"missing {', '.join(missing)}"))
    diffusion, scale, spacings = doc["diffusion"], doc["scale"], doc.get("spacings", TRAINED_SPACINGS_MM)
    if not isinstance(diffusion, Mapping) or not set(diffusion) <= set(NOISE_SCHEDULE):
        raise InputError(f"{source}: diffusion must be an object with keys among {', '.join(NOISE_SCHEDULE)}, "
                         f"got {diffusion!r}")
    if not _positive(scale) or not spacings or not all(_positive(s) for s in spacings):
        raise InputError(f"{source}: scale and spacings must be positive numbers, got {scale!r} and {spacings!r}")
    seg_cfg = folder / "segmenter" / "config.yaml"
    has_segmenter = (folder / "segmenter" / "model.safetensors").is_file()
    return PipelineSettings(
        diffusion=DiffusionConfig(**diffusion), scale=float(scale), spacings=tuple(float(s) for s in spacings),
        vae=load_config(VAEConfig, paths=[_need(folder / "vae" / "config.yaml")]),
        unet=load_config(UNetConfig, paths=[_need(folder / "unet" / "config.yaml")]),
        segmenter=load_config(SegmenterConfig, paths=[_need(seg_cfg)]) if has_segmenter else None)


def _settings_document(folder: Path) -> tuple[dict, Path]:
    """The settings as pipeline.json spells them, and the file they came from."""
    p = folder / "pipeline.json"
    if p.exists():
        return _read_json_object(p, folder), p
    run_cfg, lat = folder / "train_config.yaml", folder / "latent.json"
    if run_cfg.exists() and lat.exists():
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(run_cfg))
        d = cfg.get("diffusion", {})
        return {"diffusion": {k: d[k] for k in NOISE_SCHEDULE if k in d},
                "scale": _read_json_object(lat, folder)["scale"],
                "spacings": cfg.get("data", {}).get("spacings", list(TRAINED_SPACINGS_MM))}, run_cfg
    raise InputError(f"{folder}: not a synthgen pipeline folder (no pipeline.json, nor a training run's "
                     "train_config.yaml + latent.json)")


def _load_scheduler(folder: Path, settings: PipelineSettings, fallback: str):
    """scheduler/scheduler_config.json through diffusers' own ``from_pretrained`` (its class one
    of `SCHEDULERS`, every key one that class takes), else ``fallback`` on the noise schedule."""
    p = folder / SCHEDULER_CONFIG
    if not p.exists():
        return make_scheduler(settings.diffusion, fallback)
    config = _read_json_object(p, folder)
    known = {s.class_name: name for name, s in SCHEDULERS.items()}
    if config.get("_class_name") not in known:
        raise InputError(f"{p}: scheduler class {config.get('_class_name')!r} is not one synthgen samples "
                         f"with ({', '.join(known)})")
    cls = scheduler_class(known[config["_class_name"]])
    unknown = sorted(k for k in config if not k.startswith("_") and k not in accepted_settings(cls))
    if unknown:
        raise InputError(f"{p}: unknown {cls.__name__} settings {', '.join(unknown)}")
    return cls.from_pretrained(str(p.parent))


def _read_json_object(p: Path, folder: Path) -> dict:
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: not valid JSON ({e}); is {folder} a synthgen pipeline folder?") from e
    if not isinstance(doc, dict):
        raise InputError(f"{p}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and np.isfinite(v)


def _need(p: Path) -> Path:
    if not p.exists():
        raise InputError(f"{p}: missing from the weights folder (an incomplete training run or export?)")
    return p
