"""Dataset readers: CIFAR-10/100 and SVHN (torchvision downloads, files read here), digits, synthetic.

Eval splits: CIFAR and SVHN use their official test sets. ``digits``
(scikit-learn's 1797 real 8x8 handwritten digits, shipped with the package)
is split 80/20 stratified with a fixed seed (0): 1437 train, 360 test.
``synthetic`` is a seeded, learnable toy set for tests.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mixsweep.data.errors import DataError
from mixsweep.names import DATASETS

if TYPE_CHECKING:  # torch is imported where a dataset is built: `launch --dry-run` never needs it
    import torch


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
    """Per-channel mean and (unbiased) std in [0, 1] units.

    From exact integer sums over chunks of the uint8 images: no float64 copy of
    the training set (1.2 GB for CIFAR), the same figures to float64 rounding.
    """
    import torch

    c = x.shape[1]
    n = x.numel() // c
    s = torch.zeros(c, dtype=torch.int64)
    ss = torch.zeros(c, dtype=torch.int64)
    for chunk in x.split(1024):
        v = chunk.to(torch.int64)
        s += v.sum(dim=(0, 2, 3))
        ss += (v * v).sum(dim=(0, 2, 3))
    mean, std = [], []
    for si, ssi in zip(s.tolist(), ss.tolist(), strict=True):  # Python ints: exact
        var = (n * ssi - si * si) / (n * (n - 1)) if n > 1 else 0.0
        mean.append(si / n / 255.0)
        std.append(max(math.sqrt(var) / 255.0, 1e-3))
    return tuple(mean), tuple(std)


def _build(name, train_x, train_y, test_x, test_y, num_classes, pad, flip) -> ArrayDataset:
    import torch

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


_CIFAR = {  # name -> (folder, train files, test files, label key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def _not_found(name: str, folder: Path) -> DataError:
    return DataError(
        f"{name} not found in {folder} — set `data.download: true` to fetch it "
        f"there, or `data.root` to where it is"
    )


DOWNLOAD_TIMEOUT_S = 30.0  # a server that says nothing for this long fails the download


def _root_problem(name: str, root: Path) -> DataError | None:
    """A data.root that cannot hold the dataset: a file, or under one."""
    for p in (root, *root.parents):
        if p.exists():
            if p.is_dir():
                return None
            return DataError(f"data.root {root}: {p} is a file, not a folder; set data.root "
                             f"to the folder that holds {name} (or will, after the download)")
    return None


def _reach(url: str, timeout: float) -> None:
    """Connect to the server of ``url`` within ``timeout`` in all; an OSError saying why not."""
    from urllib.parse import urlparse

    from mixsweep.reach import reach

    where = urlparse(url)
    why = reach(where.hostname or "", where.port or (443 if where.scheme == "https" else 80),
                timeout)
    if why:
        raise ConnectionError(why)


def _download(name: str, root: Path) -> None:
    """torchvision fetches the files and checks their md5; reading them is ours (below).

    Bounded: the server is reached (name lookup included) within DOWNLOAD_TIMEOUT_S, and
    each socket operation of the download (connect, every read) waits at most that long:
    torchvision's urlopen takes no timeout, so the process default is set around it."""
    import socket

    from torchvision import datasets as tvd

    if name == "svhn":
        urls = [tvd.SVHN.split_list[split][0] for split in ("train", "test")]
    else:
        urls = [(tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100).url]
    _reach(urls[0], DOWNLOAD_TIMEOUT_S)
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        if name == "svhn":
            for split in ("train", "test"):
                tvd.SVHN(str(root), split=split, download=True)
        else:
            (tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100)(str(root), download=True)
    finally:
        socket.setdefaulttimeout(before)


def _fetch(name: str, root: Path) -> None:
    """``_download``, its failures as one DataError line (no network, a timeout, a bad md5)."""
    try:
        _download(name, root)
    except (OSError, RuntimeError) as err:  # URLError, timeouts: OSErrors; a bad md5: RuntimeError
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"could not download {name} into {root}: {reason}; download it where "
                        "there is internet access and set data.root to its folder") from None


def _read_cifar(name: str, root: Path) -> ArrayDataset:
    """The python-pickle batches in torchvision's layout, read the way torchvision reads them.

    Not through ``torchvision.datasets.CIFAR10``: it md5-checks every batch file on
    each load, which rejects anything but the official files (tests write tiny ones).
    """
    folder_name, train_files, test_files, key, classes = _CIFAR[name]
    folder = root / folder_name

    def read(files: list[str]) -> tuple[np.ndarray, list[int]]:
        xs: list[np.ndarray] = []
        ys: list[int] = []
        for f in files:
            path = folder / f
            if not path.is_file():
                raise _not_found(name, folder)
            try:
                with path.open("rb") as fh:
                    entry = pickle.load(fh, encoding="latin1")  # python-2 pickles
                xs.append(np.asarray(entry["data"], dtype=np.uint8))
                ys.extend(int(v) for v in entry[key])
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
                raise DataError(f"{path}: not a {name} batch file ({err!r})") from None
        return np.vstack(xs).reshape(-1, 3, 32, 32), ys  # rows are CHW already

    (xtr, ytr), (xte, yte) = read(train_files), read(test_files)
    return _build(name, xtr, ytr, xte, yte, classes, pad=4, flip=True)


def _read_svhn(root: Path) -> ArrayDataset:
    """``{train,test}_32x32.mat`` (X: H, W, C, N; y: N x 1 with 10 meaning digit 0)."""
    from scipy import io as sio

    parts: list[np.ndarray] = []  # train x, y, test x, y
    for split in ("train", "test"):
        path = root / f"{split}_32x32.mat"
        if not path.is_file():
            raise _not_found("svhn", root)
        try:
            mat = sio.loadmat(path)
            x = np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8)  # -> N, C, H, W
            y = mat["y"].astype(np.int64).reshape(-1)
        except (KeyError, ValueError) as err:
            raise DataError(f"{path}: not an SVHN .mat file ({err!r})") from None
        parts += [x, np.where(y == 10, 0, y)]  # as torchvision: labels 0-9
    xtr, ytr, xte, yte = parts
    return _build("svhn", xtr, ytr, xte, yte, 10, pad=4, flip=False)


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


def load_dataset(
    name: str, root: str | Path = "~/.cache/mixsweep/data", download: bool = False
) -> ArrayDataset:
    """Read a dataset by name into memory (uint8)."""
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return synthetic()
    if name in ("cifar10", "cifar100", "svhn"):
        path = Path(root).expanduser()
        problem = _root_problem(name, path)
        if problem:
            raise problem
        if download and not (path / _FILES[name]).exists():  # `launch` fetched it already
            _fetch(name, path)
        return _read_svhn(path) if name == "svhn" else _read_cifar(name, path)
    raise DataError(
        f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}"
    )


_FILES = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "svhn": "train_32x32.mat",
}


def ensure_available(name: str, root: str | Path, download: bool,
                     say: Callable[[str], None] | None = None) -> bool:
    """Before a sweep starts: the dataset is on disk, or (``data.download: true``) fetched now,
    once, by the launching process, or a DataError naming the folder. True when it downloaded.

    Fetching here rather than in the trials keeps concurrent trials from writing the same
    archive at once, and lets SLURM jobs run on compute nodes without internet access
    (``data.root`` must then be on a filesystem they share with the login node).
    """
    if name not in _FILES:
        return False
    where = Path(root).expanduser()
    problem = _root_problem(name, where)
    if problem:
        raise problem
    if (where / _FILES[name]).exists():
        return False
    if not download:
        raise _not_found(name, where / _FILES[name])
    if say:
        say(f"downloading {name} to {where} (once, before any trial starts)")
    _fetch(name, where)  # a DataError (one line) when it fails
    return True
