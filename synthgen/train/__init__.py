"""Training the latent diffusion stack (``synthgen train {vae,ldm,controlnet,segmenter}``).

- `synthgen.train.config`: `TrainConfig`, the schema of configs/train_*.yaml;
- `synthgen.train.data`: the training variants (`Sample`, `build_cache`) and their random crops;
- `synthgen.train.loop`: the training loop every stage runs (optimiser, EMA, logging, DDP);
- `synthgen.train.checkpoints`: checkpoints, resume, the exported component folders;
- `synthgen.train.latents`: what the diffusion stages train on (encoded samples, noised crops);
- `synthgen.train.stages`: the four stages and `train`, the entry point.
"""

from synthgen.train.config import TrainConfig
from synthgen.train.stages import train

__all__ = ["TrainConfig", "train"]
