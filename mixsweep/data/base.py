"""What every loader kind shares: the batch type, the loader base class, the seeded
per-epoch index streams, the batched crop + flip, normalisation and the worker count.

The loader kinds (``memory_loader``, ``torch_loader``, ``ffcv_loader``) import this
module; the factory ``loaders.make_loader`` imports them. Randomness: every stream of
epoch e comes from ``epoch_generator(seed, e, stream)`` (0: labeled indices,
1: unlabeled indices, 2: mixing weights, 3: the torch loader's per-example seeds,
4/5: crop and flip of the labeled / unlabeled images), so a resumed trial sees exactly
the batches an uninterrupted one would, whatever the loader.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mixsweep.data.datasets import ArrayDataset
from mixsweep.data.split import Split


def default_workers() -> int:
    """One worker per core this process may run on (the loaders' default worker count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Batch:
    """One training step's tensors, on the training device."""

    x: torch.Tensor  # labeled images, float, normalised
    y: torch.Tensor  # int64 labels
    xu: torch.Tensor | None  # unlabeled images (modes with a consistency loss)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator owned by one (seed, epoch, stream): resumable randomness."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def stream_indices(pool: torch.Tensor, count: int, g: torch.Generator) -> torch.Tensor:
    """``count`` indices from ``pool``: back-to-back shuffles, so every item is seen."""
    reps = math.ceil(count / len(pool))
    order = torch.cat([torch.randperm(len(pool), generator=g) for _ in range(reps)])
    return pool[order[:count]]


def epoch_streams(
    split: Split, n: int, seed: int, epoch: int, unlabeled: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The labeled (and unlabeled) index streams of one epoch: ``n`` indices each.

    Every loader kind walks these, so the labeled subset and the order of
    examples do not depend on the loader.
    """
    lab = stream_indices(split.labeled, n, epoch_generator(seed, epoch, 0))
    unl = stream_indices(split.unlabeled, n, epoch_generator(seed, epoch, 1)) if unlabeled else None
    return lab, unl


def crop_flip_params(n: int, pad: int, flip: bool, g: torch.Generator):
    """Per-example crop offsets in [0, 2*pad] and flip flags (the augmentation law)."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    fl = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, fl


def crop_flip(
    padded: torch.Tensor, dy, dx, fl, size: tuple[int, int], idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Batched random crop (from zero-padded images) + horizontal flip.

    ``idx`` picks the examples of ``padded`` (default: all of it, in order).
    ``unfold`` views every crop window without copying; indexing it by
    (example, dy, dx) then copies whole rows, 2x faster on CPU than indexing
    every pixel (mixsweep bench). The flip is a ``where`` (no host sync on GPU).
    """
    h, w = size
    dev = padded.device
    b = torch.arange(padded.shape[0], device=dev) if idx is None else idx.to(dev)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 2p+1, 2p+1, H, W), a view
    out = windows[b, :, dy.to(dev), dx.to(dev)]  # (B, C, H, W)
    return torch.where(fl.to(dev).view(-1, 1, 1, 1), out.flip(3), out)


class Normalize:
    """uint8 images -> float32, normalised by the dataset's mean and std (on ``device``)."""

    def __init__(self, data: ArrayDataset, device: torch.device):
        c = len(data.mean)
        self.mean = torch.tensor(data.mean, device=device).view(1, c, 1, 1) * 255
        self.std = torch.tensor(data.std, device=device).view(1, c, 1, 1) * 255

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float() - self.mean) / self.std


class LoaderBase:
    """What every loader kind shares: the data, the split and an epoch's step count.

    Subclasses implement ``epoch(e) -> Iterator[Batch]`` over ``epoch_streams``.
    """

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
    ):
        self.data, self.split, self.batch_size = data, split, batch_size
        self.device, self.augment, self.unlabeled, self.seed = device, augment, unlabeled, seed
        self.steps_per_epoch = math.ceil(len(data.train_y) / batch_size)
        self._setup()

    def _setup(self) -> None:
        """Kind-specific preparation, after the shared fields are set."""


def step_row(table: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
    """Row ``i`` of a per-step table; ``i`` may be a 1-element device tensor (a step counter
    read inside a CUDA graph): indexed on the device, no host sync."""
    return table[i] if isinstance(i, int) else table.index_select(0, i).squeeze(0)


def eval_batches(
    data: ArrayDataset, device: torch.device, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The test set, normalised, no augmentation."""
    norm = Normalize(data, device)
    for i in range(0, len(data.test_y), batch_size):
        yield norm(data.test_x[i : i + batch_size].to(device)), data.test_y[i : i + batch_size].to(device)
