"""Label map -> the model's conditioning: grouped channels and the per-structure HU prior.

Every label map, whatever its vocabulary, is reduced by structure *name* to `CHANNELS`
(14 anatomical groups). The ControlNet sees them one-hot at image resolution. The
`Prior` maps each structure name to its mean intensity (model units) measured on the
training data, with the channel mean as a fallback for names it has not seen; the
diffusion model generates the latent residual around the encoded prior image
(see `synthgen.pipelines`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping

import numpy as np
import torch

from synthgen.errors import InputError
from synthgen.models.hu import hu_to_model
from synthgen.vocab import Vocabulary

#: (channel, members): members are structure names or vocabulary groups; a name goes to the
#: first channel that lists it. Unlisted structures are "body"; label 0 is "outside".
CHANNELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("outside", ()),
    ("body", ("body",)),
    ("lung", ("lung", "lung_lesions")),
    ("airway", ("trachea",)),
    ("bone", ("bones", "skull", "sternum", "bone_metastasis")),
    ("liver", ("liver",)),
    ("spleen", ("spleen",)),
    ("kidney", ("kidney", "kidney_cyst")),
    ("artery", ("heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery",
                "common_carotid_artery", "atrial_appendage_left", "iliac_artery")),
    ("vein", ("superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein",
              "brachiocephalic_vein", "iliac_vena", "pulmonary_artery")),
    ("gut", ("stomach", "small_bowel", "duodenum", "colon", "esophagus")),
    ("muscle", ("muscles",)),
    ("organ", ("organs",)),
    ("lesion", ("lesions",)),
)
CHANNEL_NAMES = tuple(c for c, _ in CHANNELS)
N_CHANNELS = len(CHANNELS)
BODY_ID = 200  # the default vocabulary's "body" (soft tissue outside every labelled structure)


def _member_names(members: tuple[str, ...], vocab: Vocabulary) -> set[str]:
    names: set[str] = set()
    default = Vocabulary.default()
    for m in members:
        for v in (vocab, default):
            try:
                names.update(v.name(i) for i in v.ids(m))
            except InputError:
                continue
            except KeyError:
                continue
        names.add(m)
    return names


def channel_of_name(name: str, vocab: Vocabulary | None = None) -> int:
    """The `CHANNELS` index of a structure name (unlisted names: body)."""
    return _channel_table(vocab or Vocabulary.default()).get(name, 1)


@functools.lru_cache(maxsize=32)
def _channel_table(vocab: Vocabulary) -> dict[str, int]:
    table: dict[str, int] = {}
    for k, (_, members) in enumerate(CHANNELS):
        for name in _member_names(members, vocab):
            table.setdefault(name, k)
    return table


def channel_index(labels) -> np.ndarray:
    """uint8 array (label map shape) of `CHANNELS` indices for a label `Volume`."""
    arr = np.asarray(labels.numpy())
    vocab = labels.vocab or Vocabulary.default()
    ids = np.unique(arr)
    lut = np.ones(int(ids.max()) + 1 if ids.size else 1, dtype=np.uint8)
    lut[0] = 0
    for i in ids:
        if i > 0:
            lut[int(i)] = channel_of_name(vocab.name(int(i)) if int(i) in vocab else "", vocab)
    if ids.size and ids.min() < 0:
        raise InputError("label map has negative values; labels must be non-negative integers")
    return lut[arr]


def one_hot(channels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(D, H, W) or (B, D, H, W) channel indices -> float one-hot (B, N_CHANNELS, D, H, W)."""
    t = torch.as_tensor(np.asarray(channels) if not isinstance(channels, torch.Tensor) else channels).long()
    if t.ndim == 3:
        t = t[None]
    return torch.nn.functional.one_hot(t, N_CHANNELS).permute(0, 4, 1, 2, 3).float()


@dataclasses.dataclass
class Prior:
    """Mean intensity (model units) per structure name and per channel, measured on training data;
    ``by_phase``: the same per contrast phase (``{phase: {name: mean}}``) for the phases the
    training captions state, so an arterial prompt gets an arterial aorta whatever else was
    trained on. ``default_phase``: the phase with the most training voxels, used when a prompt
    states none (None: the pooled means)."""

    by_name: dict[str, float]
    by_channel: list[float]
    by_phase: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    default_phase: str | None = None

    @classmethod
    def measure(cls, samples) -> Prior:
        """From ``(y, label_ids)`` or ``(y, label_ids, phase)`` tuples in the default vocabulary
        (y in model units; phase a `synthgen.text.prompt.PROMPT_PHASES` name or None)."""
        vocab = Vocabulary.default()
        sums: dict[str, list[float]] = {}
        phase_sums: dict[str, dict[str, list[float]]] = {}
        phase_voxels: dict[str, int] = {}
        ch_sums = np.zeros((N_CHANNELS, 2))
        for item in samples:
            y, lab = item[0], item[1]
            phase = item[2] if len(item) > 2 else None
            ids, inv = np.unique(lab, return_inverse=True)
            s = np.bincount(inv.ravel(), weights=y.ravel().astype(np.float64))
            n = np.bincount(inv.ravel())
            if phase is not None:
                phase_voxels[phase] = phase_voxels.get(phase, 0) + int((lab > 0).sum())
            for i, si, ni in zip(ids, s, n):
                name = "outside" if i == 0 else vocab.name(int(i))
                for table in (sums, phase_sums.setdefault(phase, {}) if phase is not None else None):
                    if table is not None:
                        acc = table.setdefault(name, [0.0, 0.0])
                        acc[0] += si
                        acc[1] += ni
                ch = 0 if i == 0 else channel_of_name(name, vocab)
                ch_sums[ch] += (si, ni)
        by_name = {k: v[0] / v[1] for k, v in sums.items() if v[1] > 0}
        by_phase = {ph: {k: v[0] / v[1] for k, v in t.items() if v[1] > 0} for ph, t in sorted(phase_sums.items())}

        fallback = {"outside": -1000.0, "body": 0.0, "lung": -850.0, "airway": -950.0, "bone": 500.0}
        by_channel = []
        for k, name in enumerate(CHANNEL_NAMES):
            if ch_sums[k, 1] > 0:
                by_channel.append(float(ch_sums[k, 0] / ch_sums[k, 1]))
            else:
                by_channel.append(float(hu_to_model(np.float32(fallback.get(name, 40.0)))))
        default = max(phase_voxels, key=phase_voxels.get) if phase_voxels else None
        return cls(by_name=by_name, by_channel=by_channel, by_phase=by_phase, default_phase=default)

    def phase_for(self, phase: str | None) -> str | None:
        """The phase whose means `image` uses for a prompt's ``phase`` (None or "auto": the default)."""
        if phase in self.by_phase:
            return phase
        return self.default_phase if phase in (None, "auto") else None

    def image(self, labels, phase: str | None = None) -> np.ndarray:
        """Float32 prior image (model units) of a label `Volume`: each voxel its structure's mean in
        ``phase`` (see `phase_for`), else its pooled mean, else its channel's."""
        arr = np.asarray(labels.numpy())
        vocab = labels.vocab or Vocabulary.default()
        table = self.by_phase.get(self.phase_for(phase), {})
        ids = np.unique(arr)
        lut = np.zeros(int(ids.max()) + 1, dtype=np.float32)
        for i in ids:
            i = int(i)
            name = "outside" if i == 0 else (vocab.name(i) if i in vocab else "")
            ch = 0 if i == 0 else channel_of_name(name, vocab)
            lut[i] = table.get(name, self.by_name.get(name, self.by_channel[ch]))
        return lut[arr]

    def to_json(self) -> str:
        d = {"by_name": self.by_name, "by_channel": dict(zip(CHANNEL_NAMES, self.by_channel))}
        if self.by_phase:
            d.update(by_phase=self.by_phase, default_phase=self.default_phase)
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_mapping(cls, m: Mapping) -> Prior:
        ch = m["by_channel"]
        by_phase = {str(p): {str(k): float(v) for k, v in t.items()} for p, t in m.get("by_phase", {}).items()}
        default = m.get("default_phase")
        return cls(by_name={str(k): float(v) for k, v in m["by_name"].items()},
                   by_channel=[float(ch[c]) for c in CHANNEL_NAMES], by_phase=by_phase,
                   default_phase=str(default) if default is not None else None)
