"""Dataset readers: CIFAR-10/100 and SVHN through torchvision, digits, synthetic.

Eval splits: CIFAR and SVHN use their official test sets. ``digits``
(scikit-learn's 1797 real 8x8 handwritten digits, shipped with the package)
is split 80/20 stratified with a fixed seed (0): 1437 train, 360 test.
``synthetic`` is a seeded, learnable toy set for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(RuntimeError):
    """A dataset cannot be read (missing files, wrong format)."""


@dataclass(frozen=True)
class ArrayDataset:
    name: str
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    pad: int  # random-crop padding
    flip: bool  # horizontal flips make sense for this data

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.double() / 255.0
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _build(name, train_x, train_y, test_x, test_y, num_classes, pad, flip) -> ArrayDataset:
    train_x = torch.as_tensor(np.ascontiguousarray(train_x), dtype=torch.uint8)
    test_x = torch.as_tensor(np.ascontiguousarray(test_x), dtype=torch.uint8)
    mean, std = _stats(train_x)
    return ArrayDataset(
        name=name,
        train_x=train_x,
        train_y=torch.as_tensor(np.asarray(train_y), dtype=torch.int64),
        test_x=test_x,
        test_y=torch.as_tensor(np.asarray(test_y), dtype=torch.int64),
        num_classes=num_classes,
        mean=mean,
        std=std,
        pad=pad,
        flip=flip,
    )


def _torchvision(name: str, root: Path, download: bool) -> ArrayDataset:
    from torchvision import datasets as tvd

    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": "."}[name]
    try:
        if name == "svhn":
            tr = tvd.SVHN(str(root), split="train", download=download)
            te = tvd.SVHN(str(root), split="test", download=download)
            # SVHN is stored (N, 3, 32, 32) already; labels 0-9 (torchvision maps 10 -> 0)
            return _build(name, tr.data, tr.labels, te.data, te.labels, 10, pad=4, flip=False)
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except RuntimeError as err:
        if "not found" not in str(err).lower() and "corrupt" not in str(err).lower():
            raise
        raise DataError(
            f"{name} not found in {root / folder} — set `data.download: true` to fetch it "
            f"there, or `data.root` to where it is"
        ) from None
    to_nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)  # noqa: E731 (HWC -> CHW)
    classes = 10 if name == "cifar10" else 100
    return _build(name, to_nchw(tr.data), tr.targets, to_nchw(te.data), te.targets, classes, 4, True)


def _digits() -> ArrayDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    xtr, xte, ytr, yte = train_test_split(
        images, d.target, test_size=0.2, stratify=d.target, random_state=0
    )
    return _build("digits", xtr, ytr, xte, yte, 10, pad=1, flip=False)


def synthetic(
    n_train: int = 2000, n_test: int = 500, classes: int = 10, size: int = 8, seed: int = 0
) -> ArrayDataset:
    """Noisy class templates: learnable in a few epochs, non-linear enough to be a test."""
    g = np.random.default_rng(seed)
    templates = g.uniform(0, 255, size=(classes, 3, size, size))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % classes
        g.shuffle(y)
        x = templates[y] * 0.6 + g.uniform(0, 255, size=(n, 3, size, size)) * 0.4
        return np.clip(x, 0, 255).astype(np.uint8), y

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    return _build("synthetic", xtr, ytr, xte, yte, classes, pad=1, flip=True)


def load_dataset(name: str, root: str | Path = "~/.cache/mixsweep/data", download: bool = False) -> ArrayDataset:
    """Read a dataset by name into memory (uint8)."""
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return synthetic()
    if name in ("cifar10", "cifar100", "svhn"):
        return _torchvision(name, Path(root).expanduser(), download)
    raise DataError(f"unknown dataset {name!r}; allowed: cifar10, cifar100, svhn, digits, synthetic")


_FILES = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": "train_32x32.mat"}


def require_available(name: str, root: str | Path, download: bool) -> None:
    """Fail before a sweep starts when a dataset is neither on disk nor to be downloaded."""
    if name not in _FILES or download:
        return
    where = Path(root).expanduser()
    if not (where / _FILES[name]).exists():
        raise DataError(
            f"{name} not found in {where / _FILES[name]} — set `data.download: true` to fetch it "
            f"there, or `data.root` to where it is"
        )
