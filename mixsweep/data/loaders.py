"""``make_loader``: the loader named by ``data.loader`` (memory, torch or ffcv).

Every kind yields the same ``Batch`` stream for the same seed (``base.py`` holds
what they share). The shared names are re-exported here for callers that import
them from this module.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mixsweep.data.base import (
    Batch,
    LoaderBase,
    Normalize,
    crop_flip,
    crop_flip_params,
    default_workers,
    epoch_generator,
    epoch_streams,
    eval_batches,
    step_row,
    stream_indices,
)
from mixsweep.data.datasets import ArrayDataset
from mixsweep.data.ffcv_loader import FfcvLoader
from mixsweep.data.memory_loader import MemoryLoader
from mixsweep.data.split import Split
from mixsweep.data.torch_loader import TorchLoader
from mixsweep.names import LOADERS

__all__ = ["Batch", "FfcvLoader", "LoaderBase", "MemoryLoader", "Normalize", "TorchLoader",
           "crop_flip", "crop_flip_params", "default_workers", "epoch_generator", "epoch_streams",
           "eval_batches", "make_loader", "step_row", "stream_indices"]


def make_loader(
    kind: str,
    data: ArrayDataset,
    split: Split,
    batch_size: int,
    device: torch.device,
    *,
    augment: bool,
    unlabeled: bool,
    seed: int,
    ffcv_dir: str | Path | None = None,
    num_workers: int | None = None,
):
    """The loader named by ``data.loader``; every kind yields the same ``Batch`` stream.

    Args:
        kind: memory | torch | ffcv.
        ffcv_dir: the folder of ``train.beton`` (``mixsweep data prepare``); ffcv only.
        num_workers: worker processes of the torch loader, threads of FFCV's (None: one
            per core this process may run on; a trial passes its ``cpus_per_trial``).
    """
    if kind == "memory":
        return MemoryLoader(data, split, batch_size, device, augment=augment,
                            unlabeled=unlabeled, seed=seed)
    if kind == "torch":
        return TorchLoader(data, split, batch_size, device, num_workers=num_workers,
                           augment=augment, unlabeled=unlabeled, seed=seed)
    if kind == "ffcv":
        if ffcv_dir is None:
            raise ValueError("loader 'ffcv' needs ffcv_dir (data.ffcv_dir)")
        return FfcvLoader(data, split, batch_size, device, ffcv_dir=ffcv_dir,
                          num_workers=num_workers, augment=augment, unlabeled=unlabeled,
                          seed=seed)
    raise ValueError(f"unknown loader {kind!r}; allowed: {', '.join(LOADERS)}")
