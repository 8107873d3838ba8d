"""Loaders: per-step (labeled, unlabeled) batches, normalised, on the device.

``memory`` (default) keeps the whole training set on the training device,
padded and normalised once (float32); each epoch draws a seeded permutation and does random crop
+ flip as batched tensor ops (no worker processes). All randomness of epoch e
comes from generators seeded by (seed, e), so a resumed trial sees exactly the
batches an uninterrupted one would.

An epoch is ``ceil(len(train) / batch_size)`` steps whatever the labeled
fraction: the labeled stream cycles through the labeled subset, the unlabeled
stream through the pool.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mixsweep.data.datasets import ArrayDataset
from mixsweep.data.split import Split
from mixsweep.names import LOADERS


@dataclass(frozen=True)
class Batch:
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


class MemoryLoader(LoaderBase):
    """The whole dataset on the device; augmentation batched there."""

    def _setup(self) -> None:
        p = self.data.pad if self.augment else 0
        self.pad = p
        x = self.data.train_x.to(self.device)
        # Padded in pixel space (zeros, like torchvision's fill=0), then normalised once:
        # float32 costs 4x the memory of uint8 but measured faster per batch (mixsweep bench).
        self.train = Normalize(self.data, self.device)(
            torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        )
        self.labels = self.data.train_y.to(self.device)
        self.size = self.data.shape[1:]

    def _images(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if not self.augment:
            return self.train[idx.to(self.device)]
        dy, dx, fl = crop_flip_params(len(idx), self.pad, self.data.flip, g)
        return crop_flip(self.train, dy, dx, fl, self.size, idx=idx)

    def draws(self, epoch: int) -> dict[str, torch.Tensor]:
        """Epoch ``epoch``'s randomness, drawn up front on the CPU: exactly what
        ``epoch()`` draws step by step (same generators, same order).

        Keys: ``lab`` / ``unl`` (steps, B) indices; with augmentation
        ``lab_dy, lab_dx, lab_fl`` (and ``unl_*``) (steps, B) crop offsets and flips.
        """
        n, steps = self.steps_per_epoch * self.batch_size, self.steps_per_epoch
        lab, unl = epoch_streams(self.split, n, self.seed, epoch, self.unlabeled)
        out = {"lab": lab.view(steps, -1)}
        if unl is not None:
            out["unl"] = unl.view(steps, -1)
        if self.augment:
            for name, g in (("lab", epoch_generator(self.seed, epoch, 4)),
                            ("unl", epoch_generator(self.seed, epoch, 5))):
                if name not in out:
                    continue
                dy, dx, fl = zip(*(crop_flip_params(self.batch_size, self.pad, self.data.flip, g)
                                   for _ in range(steps)), strict=True)
                out[f"{name}_dy"], out[f"{name}_dx"] = torch.stack(dy), torch.stack(dx)
                out[f"{name}_fl"] = torch.stack(fl)
        return out

    def batch_at(self, d: dict[str, torch.Tensor], i: int | torch.Tensor) -> Batch:
        """Step ``i``'s batch from ``draws`` already on the device; ``i`` may be a
        1-element device tensor (a step counter read inside a CUDA graph): no host sync."""
        def pick(key: str) -> torch.Tensor:
            return step_row(d[key], i)

        def images(name: str) -> torch.Tensor:
            idx = pick(name)
            if not self.augment:
                return self.train[idx]
            return crop_flip(self.train, pick(f"{name}_dy"), pick(f"{name}_dx"),
                             pick(f"{name}_fl"), self.size, idx=idx)

        lab = pick("lab")
        return Batch(images("lab"), self.labels[lab], images("unl") if "unl" in d else None)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        n, steps = self.steps_per_epoch * self.batch_size, self.steps_per_epoch
        lab, unl = epoch_streams(self.split, n, self.seed, epoch, self.unlabeled)
        # augmentation draws its own streams (4, 5): the index streams stay loader-independent
        g_lab, g_unl = epoch_generator(self.seed, epoch, 4), epoch_generator(self.seed, epoch, 5)
        lab = lab.view(steps, -1)
        unl = unl.view(steps, -1) if unl is not None else None
        for step in range(steps):
            x = self._images(lab[step], g_lab)
            y = self.labels[lab[step].to(self.device)]
            xu = self._images(unl[step], g_unl) if unl is not None else None
            yield Batch(x, y, xu)


def eval_batches(
    data: ArrayDataset, device: torch.device, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The test set, normalised, no augmentation."""
    norm = Normalize(data, device)
    for i in range(0, len(data.test_y), batch_size):
        yield norm(data.test_x[i : i + batch_size].to(device)), data.test_y[i : i + batch_size].to(device)


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
        num_workers: worker processes of the torch loader (None: one per core).
    """
    kw = {"augment": augment, "unlabeled": unlabeled, "seed": seed}
    if kind == "memory":
        return MemoryLoader(data, split, batch_size, device, **kw)
    if kind == "torch":
        from mixsweep.data.torch_loader import TorchLoader

        return TorchLoader(data, split, batch_size, device, num_workers=num_workers, **kw)
    if kind == "ffcv":
        from mixsweep.data.ffcv_loader import FfcvLoader

        if ffcv_dir is None:
            raise ValueError("loader 'ffcv' needs ffcv_dir (data.ffcv_dir)")
        return FfcvLoader(data, split, batch_size, device, ffcv_dir=ffcv_dir, **kw)
    raise ValueError(f"unknown loader {kind!r}; allowed: {', '.join(LOADERS)}")
