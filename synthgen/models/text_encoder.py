"""`PromptSpec` -> cross-attention context: a small learned encoder of the parsed prompt.

The free text is read by `synthgen.text.parse_prompt` (which reports every word it does not
understand); this module embeds the *typed* spec, one token per fact:

- a spacing token (an MLP of log voxel spacing) — always present, also under guidance dropout;
- a phase token, up to `MAX_REGIONS` region tokens and up to `MAX_FINDINGS` finding tokens
  (lesion type + organ + an MLP of log size and count);
- a learned null token pads the sequence to `CONTEXT_TOKENS`; classifier-free guidance
  replaces every token but spacing with it.

Why not a sentence encoder: the training text is generated from label maps
(`synthgen.text.captions`), so a generic sentence embedding carries no information the
spec does not, costs an 83 MB model and seconds to load, and cannot tell the user which
words it ignored. The encoder is trained jointly with the diffusion UNet.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from synthgen.lesions.appearance import LESION_TYPES
from synthgen.lesions.appearance import ORGANS as LESION_ORGANS
from synthgen.text.prompt import PROMPT_PHASES, REGIONS, PromptSpec

MAX_REGIONS = 3
MAX_FINDINGS = 4
CONTEXT_TOKENS = 1 + 1 + MAX_REGIONS + MAX_FINDINGS
_PHASES = ("unknown", *PROMPT_PHASES)
#: Lesion types the shipped weights embed, by position. Types added later are encoded as the nearest
#: of these (the prompt parser reads "part-solid" as ground-glass too), so the weights still load.
ENCODED_TYPES = LESION_TYPES[:6]
_ENCODED_AS = {"nodule_part_solid": "nodule_ground_glass"}


def _organ_index(organ: str) -> int:
    for k, fam in enumerate(LESION_ORGANS):
        if organ == fam or organ.startswith(fam + "_"):
            return k + 1
    return 0


def spec_to_indices(spec: PromptSpec | None) -> dict[str, torch.Tensor]:
    """Integer/float tensors describing a spec (None: the unconditional, all-null spec)."""
    phase = torch.zeros(1, dtype=torch.long)
    regions = torch.zeros(MAX_REGIONS, dtype=torch.long)
    ftype = torch.zeros(MAX_FINDINGS, dtype=torch.long)
    forgan = torch.zeros(MAX_FINDINGS, dtype=torch.long)
    fnum = torch.zeros(MAX_FINDINGS, 2)
    present = torch.zeros(1 + MAX_REGIONS + MAX_FINDINGS, dtype=torch.bool)
    if spec is not None:
        phase[0] = _PHASES.index(spec.phase) if spec.phase in _PHASES else 0
        present[0] = spec.phase is not None
        for k, r in enumerate(spec.regions[:MAX_REGIONS]):
            regions[k] = REGIONS.index(r) + 1
            present[1 + k] = True
        for k, f in enumerate(spec.findings[:MAX_FINDINGS]):
            ftype[k] = ENCODED_TYPES.index(_ENCODED_AS.get(f.lesion_type, f.lesion_type)) + 1
            forgan[k] = _organ_index(f.organ)
            size = f.diameter_mm if f.diameter_mm is not None else 20.0
            fnum[k] = torch.tensor([math.log(size / 20.0), math.log(f.count)])
            present[1 + MAX_REGIONS + k] = True
    return {"phase": phase, "regions": regions, "ftype": ftype, "forgan": forgan, "fnum": fnum, "present": present}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class SpecEncoder(nn.Module):
    """Tokens of a batch of specs + spacings -> context ``(B, CONTEXT_TOKENS, dim)``."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.phase = nn.Embedding(len(_PHASES), dim)
        self.region = nn.Embedding(len(REGIONS) + 1, dim)
        self.ftype = nn.Embedding(len(ENCODED_TYPES) + 1, dim)
        self.forgan = nn.Embedding(len(LESION_ORGANS) + 1, dim)
        self.fnum = nn.Sequential(nn.Linear(2, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.spacing = nn.Sequential(nn.Linear(3, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.slot = nn.Parameter(torch.randn(CONTEXT_TOKENS, dim) * 0.02)  # which slot a token sits in
        self.null = nn.Parameter(torch.zeros(dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: dict[str, torch.Tensor], spacing_mm: torch.Tensor,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """``drop``: (B,) bool, True = unconditional (every token but spacing is the null token)."""
        b = spacing_mm.shape[0]
        sp = self.spacing(torch.log(spacing_mm.float() / 4.0))[:, None]
        facts = torch.cat([
            self.phase(tokens["phase"]),
            self.region(tokens["regions"]),
            self.ftype(tokens["ftype"]) + self.forgan(tokens["forgan"]) + self.fnum(tokens["fnum"].float()),
        ], dim=1)
        keep = tokens["present"].clone()
        if drop is not None:
            keep &= ~drop[:, None]
        facts = torch.where(keep[..., None], facts, self.null.expand(b, facts.shape[1], -1))
        return self.norm(torch.cat([sp, facts], dim=1) + self.slot)
