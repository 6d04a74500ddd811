"""synthgen: a synthetic data engine for medical imaging.

Importing synthgen is cheap and offline: heavy dependencies (torch, itk,
pydicom, monai) are imported inside the functions that need them.
"""

from __future__ import annotations

from synthgen._version import __version__
from synthgen.volume import Volume

__all__ = ["Volume", "__version__"]
