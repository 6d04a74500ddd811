"""Training the latent diffusion stack: data (`data`), the loop and its stages (`loop`).

``synthgen train {vae,ldm,controlnet,segmenter}`` calls `train`.
"""

from synthgen.train.loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
