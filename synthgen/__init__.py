"""synthgen: a synthetic data engine for medical imaging.

Importing synthgen is cheap and offline: heavy dependencies (torch, itk,
pydicom, monai) are imported inside the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from synthgen.volume import Volume  # noqa: E402

__all__ = ["Volume", "__version__"]
