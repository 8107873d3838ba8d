"""Datasets, labeled/unlabeled splits and loaders.

Every dataset becomes an ``ArrayDataset``: uint8 images (N, C, H, W) and int64
labels for train and test, plus the normalisation and augmentation it needs.
Loaders turn it into per-step batches on the training device.
"""

from mixsweep.data.datasets import ArrayDataset, DataError, load_dataset
from mixsweep.data.loaders import Batch, make_loader
from mixsweep.data.split import Split, labeled_split

__all__ = [
    "ArrayDataset",
    "Batch",
    "DataError",
    "Split",
    "labeled_split",
    "load_dataset",
    "make_loader",
]
