"""The schema of configs/train_*.yaml: one `TrainConfig` holds the networks, the data and one
`StageConfig` per stage (``vae_stage``, ``ldm_stage``, ...). omegaconf merges the YAML and the
command-line overrides into it (`synthgen.config.load_config`); unknown keys are errors.
"""

from __future__ import annotations

import dataclasses

from synthgen.models.networks import DiffusionConfig, UNetConfig, VAEConfig
from synthgen.models.segmenter import SegmenterConfig
from synthgen.train.data import DataConfig

#: The stages that run the training loop, in the order they train (each after the ones it builds on).
STAGES = ("vae", "ldm", "controlnet", "segmenter")
#: Every stage `synthgen train` takes: the loop stages and the texture bank (no loop: real detail
#: blocks cut from the training patients, `synthgen.models.texture`).
ALL_STAGES = (*STAGES, "texture")


@dataclasses.dataclass
class TextureConfig:
    """The texture bank (`synthgen.models.texture.TextureBank.build`): blocks of ``block`` voxels
    of real detail below a Gaussian of ``sigma_vox`` voxels, ``blocks`` per tissue and spacing."""

    spacings: list[float] = dataclasses.field(default_factory=lambda: [2.0, 3.0, 4.0, 5.0])
    block: int = 8
    sigma_vox: float = 1.5
    blocks: int = 96


@dataclasses.dataclass
class StageConfig:
    """Settings of the training loop for one stage (`synthgen.train.loop.train_loop`)."""

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
    texture: TextureConfig = dataclasses.field(default_factory=TextureConfig)
    kl_weight: float = 1e-6
    grad_weight: float = 0.5
    seed: int = 0
    threads: int = 2

    def stage(self, name: str) -> StageConfig:
        """The loop settings of stage ``name`` (one of `STAGES`)."""
        return {"vae": self.vae_stage, "ldm": self.ldm_stage, "controlnet": self.controlnet_stage,
                "segmenter": self.segmenter_stage}[name]
