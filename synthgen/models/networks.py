"""Network configs and builders: MONAI's AutoencoderKL, DiffusionModelUNet and ControlNet (3-D).

Each config is a dataclass (the schema of the ``model:`` section of configs/train_*.yaml)
and `build_*` turns it into the MONAI module. Sizes: `configs/train_*_cpu.yaml` is the CPU
default the shipped weights were trained with; `configs/train_*_gpu.yaml` is sized like MAISI.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from synthgen.models.conditioning import N_CHANNELS


@dataclasses.dataclass
class VAEConfig:
    channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64])
    latent_channels: int = 4
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    attention: bool = False  # non-local attention at the lowest level (GPU configs)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)


@dataclasses.dataclass
class UNetConfig:
    channels: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 64])
    attention_levels: list[bool] = dataclasses.field(default_factory=lambda: [False, True, True])
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    num_head_channels: int = 16
    context_dim: int = 64
    control_channels: list[int] = dataclasses.field(default_factory=lambda: [8, 16, 32])
    flash_attention: bool = True  # PyTorch SDPA (fused attention, CPU and CUDA; False: MONAI einsum)


@dataclasses.dataclass
class DiffusionConfig:
    train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction: str = "v_prediction"
    cond_drop: float = 0.1  # classifier-free guidance dropout of the text tokens


def build_vae(cfg: VAEConfig) -> nn.Module:
    from monai.networks.nets import AutoencoderKL

    n = len(cfg.channels)
    return AutoencoderKL(
        spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(cfg.channels),
        latent_channels=cfg.latent_channels, num_res_blocks=cfg.num_res_blocks,
        attention_levels=(False,) * n, norm_num_groups=cfg.norm_num_groups,
        with_encoder_nonlocal_attn=cfg.attention, with_decoder_nonlocal_attn=cfg.attention,
    )


def _unet_kwargs(cfg: UNetConfig, latent_channels: int) -> dict:
    return {
        "spatial_dims": 3, "in_channels": latent_channels, "channels": tuple(cfg.channels),
        "attention_levels": tuple(cfg.attention_levels), "num_res_blocks": cfg.num_res_blocks,
        "norm_num_groups": cfg.norm_num_groups, "num_head_channels": cfg.num_head_channels,
        "with_conditioning": True, "cross_attention_dim": cfg.context_dim,
        "use_flash_attention": cfg.flash_attention,
    }


def build_unet(cfg: UNetConfig, latent_channels: int) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(out_channels=latent_channels, **_unet_kwargs(cfg, latent_channels))


def build_controlnet(cfg: UNetConfig, latent_channels: int) -> nn.Module:
    """ControlNet on the one-hot label channels; its embedding downsamples by the VAE factor
    (``len(control_channels) - 1`` stride-2 steps), so it takes the label map at image size."""
    from monai.networks.nets import ControlNet

    return ControlNet(conditioning_embedding_in_channels=N_CHANNELS,
                      conditioning_embedding_num_channels=tuple(cfg.control_channels),
                      **_unet_kwargs(cfg, latent_channels))


def init_controlnet_from_unet(controlnet: nn.Module, unet: nn.Module) -> int:
    """Copy every matching UNet weight into the ControlNet (its encoder is a UNet encoder copy);
    returns how many tensors were copied. The zero-initialised output convolutions stay zero."""
    own = controlnet.state_dict()
    src = {k: v for k, v in unet.state_dict().items() if k in own and own[k].shape == v.shape}
    controlnet.load_state_dict(src, strict=False)
    return len(src)
