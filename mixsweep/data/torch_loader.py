"""The ``torch`` loader: a torch Dataset + DataLoader with torchvision transforms.

The baseline and the reference for correctness. It walks the same per-epoch
index streams as the memory loader (``epoch_streams``), so the labeled subset
and the order of examples are identical; crops and flips are torchvision's
``RandomCrop(pad, fill=0)`` and ``RandomHorizontalFlip`` in the worker
processes (the same law as the memory loader's batched crop/flip: offsets
uniform in [0, 2*pad] per axis, flip with probability 1/2).

Reproducibility: every example of epoch e carries its own seed drawn from
``epoch_generator(seed, e, stream=3)``; the worker seeds its CPU generator
with it before transforming, so the images do not depend on the number of
workers, on which worker gets which batch, or on resuming mid-run.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mixsweep.data.base import (
    Batch,
    LoaderBase,
    Normalize,
    default_workers,
    epoch_generator,
    epoch_streams,
)
from mixsweep.data.datasets import ArrayDataset
from mixsweep.data.split import Split

_SEED_STREAM = 3  # epoch_generator stream of the per-example augmentation seeds


def build_transform(data: ArrayDataset, augment: bool) -> v2.Transform | None:
    """RandomCrop(pad, fill 0) + RandomHorizontalFlip (when the data allows flips)."""
    if not augment:
        return None
    steps: list[v2.Transform] = [v2.RandomCrop(data.shape[1:], padding=data.pad, fill=0)]
    if data.flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return v2.Compose(steps)


class _Examples(Dataset):
    """Item ``(i, seed)`` -> (augmented uint8 image i, label i); seeds make it reproducible."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: v2.Transform | None):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = item
        img = self.x[i]
        if self.transform is not None:
            if torch.utils.data.get_worker_info() is None:
                # in the main process: keep the caller's global RNG untouched
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(seed)
                    img = self.transform(img)
            else:  # a worker owns its RNG
                torch.default_generator.manual_seed(seed)
                img = self.transform(img)
        return img, self.y[i]


class _StepSampler:
    """Yields, per step, the list of (index, seed) items of one stream; set_epoch picks the epoch."""

    def __init__(self, steps: int):
        self.steps = steps
        self.items: list[list[tuple[int, int]]] = []

    def set(self, idx: torch.Tensor, seeds: torch.Tensor) -> None:
        pairs = list(zip(idx.tolist(), seeds.tolist(), strict=True))
        b = len(pairs) // self.steps
        self.items = [pairs[s * b : (s + 1) * b] for s in range(self.steps)]

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return self.steps


class TorchLoader(LoaderBase):
    """torchvision transforms in DataLoader workers; uint8 batches normalised on the device."""

    def __init__(
        self,
        data: ArrayDataset,
        split: Split,
        batch_size: int,
        device: torch.device,
        *,
        augment: bool = True,
        unlabeled: bool = False,
        seed: int = 0,
        num_workers: int | None = None,
    ):
        super().__init__(
            data, split, batch_size, device, augment=augment, unlabeled=unlabeled, seed=seed
        )
        self.norm = Normalize(data, device)
        workers = default_workers() if num_workers is None else num_workers
        ds = _Examples(data.train_x, data.train_y, build_transform(data, augment))
        self.samplers = [_StepSampler(self.steps_per_epoch) for _ in range(1 + unlabeled)]
        self.loaders = [
            DataLoader(
                ds,
                batch_sampler=s,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=device.type == "cuda",
                prefetch_factor=4 if workers > 0 else None,
            )
            for s in self.samplers
        ]

    def epoch(self, epoch: int) -> Iterator[Batch]:
        lab, unl = epoch_streams(self.split, self.steps_per_epoch * self.batch_size,
                                 self.seed, epoch, self.unlabeled)
        g = epoch_generator(self.seed, epoch, _SEED_STREAM)
        idxs = [lab] if unl is None else [lab, unl]  # unl: None unless self.unlabeled
        for sampler, idx in zip(self.samplers, idxs, strict=False):
            sampler.set(idx, torch.randint(0, 2**62, (len(idx),), generator=g))
        streams = [iter(dl) for dl in self.loaders]
        for _ in range(self.steps_per_epoch):
            x, y = next(streams[0])
            xu = None
            if self.unlabeled:
                xu = self.norm(next(streams[1])[0].to(self.device, non_blocking=True))
            yield Batch(self.norm(x.to(self.device, non_blocking=True)),
                        y.to(self.device, non_blocking=True), xu)
