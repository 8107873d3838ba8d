"""Datasets, labeled/unlabeled splits and loaders.

Every dataset becomes an ``ArrayDataset``: uint8 images (N, C, H, W) and int64
labels for train and test, plus the normalisation and augmentation it needs.
Loaders turn it into per-step batches on the training device.

The names are imported on first use: ``mixsweep --help``, ``status`` and
``launch --dry-run`` import this package (for ``DataError``) without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mixsweep.data.errors import DataError

if TYPE_CHECKING:  # the real names for the type checker (and lint-imports); lazy at run time
    from mixsweep.data.base import Batch
    from mixsweep.data.datasets import ArrayDataset, load_dataset
    from mixsweep.data.loaders import make_loader
    from mixsweep.data.split import Split, labeled_split

_WHERE = {
    "ArrayDataset": "mixsweep.data.datasets",
    "load_dataset": "mixsweep.data.datasets",
    "Batch": "mixsweep.data.base",
    "make_loader": "mixsweep.data.loaders",
    "Split": "mixsweep.data.split",
    "labeled_split": "mixsweep.data.split",
}

__all__ = ["ArrayDataset", "Batch", "DataError", "Split", "labeled_split", "load_dataset", "make_loader"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mixsweep.data' has no attribute {name!r}")
