"""Datasets in their real on-disk formats (tiny files written here), splits and loaders."""

from __future__ import annotations

import io
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import io as sio

from mixsweep.data import DataError, labeled_split, load_dataset, make_loader
from mixsweep.data.datasets import _build
from mixsweep.data.loaders import crop_flip, crop_flip_params, epoch_generator, eval_batches
from mixsweep.data.split import Split

# --------------------------------------------------------------------------- tiny real-format files


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` as python-2 ``str`` (BINSTRING), as the official CIFAR pickles have it:
    loaded with encoding="latin1" the keys are str, with encoding="bytes" they are b'data'."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def write_py2_pickle(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, rng: np.random.Generator):
    """A tiny CIFAR-10 in the real layout under root/cifar-10-batches-py: (train_x, train_y, test_x, test_y)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x, y = rows(rng, 3), [int(v) for v in rng.integers(0, 10, 3)]
        write_py2_pickle(
            folder / f"data_batch_{i}",
            {b"batch_label": b"training batch", b"data": x, b"labels": y},
        )
        train_x.append(x)
        train_y += y
    test_x, test_y = rows(rng, 4), [0, 9, 5, 1]
    write_py2_pickle(
        folder / "test_batch",
        {b"batch_label": b"testing batch", b"data": test_x, b"labels": test_y},
    )
    write_py2_pickle(
        folder / "batches.meta", {b"label_names": [b"airplane"] * 10, b"num_vis": 3072}
    )
    return np.vstack(train_x), train_y, test_x, test_y


@pytest.fixture
def cifar10_root(tmp_path: Path) -> tuple[Path, np.ndarray, list[int], np.ndarray, list[int]]:
    return (tmp_path, *write_cifar10(tmp_path, np.random.default_rng(0)))


def to_chw(r: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(r.reshape(-1, 3, 32, 32))


def test_cifar10_round_trip(cifar10_root) -> None:
    root, train_x, train_y, test_x, test_y = cifar10_root
    d = load_dataset("cifar10", root)
    assert d.train_x.shape == (15, 3, 32, 32) and d.test_x.shape == (4, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert torch.equal(d.train_x, to_chw(train_x)) and torch.equal(d.test_x, to_chw(test_x))
    assert d.train_y.tolist() == train_y and d.test_y.tolist() == test_y
    assert d.num_classes == 10 and d.flip and d.pad == 4
    # a known pixel: row 0 holds R (1024), then G, then B; each row-major 32x32
    assert int(d.train_x[0, 1, 2, 3]) == int(train_x[0, 1024 + 2 * 32 + 3])


def test_cifar10_matches_torchvision_reading(cifar10_root, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our reader gives exactly what torchvision's CIFAR10 reads from the same files (its md5
    check, which rejects anything but the official files, bypassed for this comparison)."""
    from torchvision import datasets as tvd

    root = cifar10_root[0]
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        tvd.CIFAR10(str(root), train=True)  # why the reader does not go through torchvision
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.CIFAR10, "_load_meta", lambda self: None)
    tv_train, tv_test = tvd.CIFAR10(str(root), train=True), tvd.CIFAR10(str(root), train=False)
    d = load_dataset("cifar10", root)
    assert torch.equal(d.train_x, torch.from_numpy(tv_train.data).permute(0, 3, 1, 2))
    assert torch.equal(d.test_x, torch.from_numpy(tv_test.data).permute(0, 3, 1, 2))
    assert d.train_y.tolist() == tv_train.targets and d.test_y.tolist() == tv_test.targets


def test_cifar100_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    tr, te = rows(rng, 6), rows(rng, 2)
    fine_tr, fine_te = [0, 99, 42, 7, 7, 63], [99, 1]
    for name, x, fine in (("train", tr, fine_tr), ("test", te, fine_te)):
        write_py2_pickle(
            folder / name,
            {
                b"data": x,
                b"fine_labels": fine,
                b"coarse_labels": [f % 20 for f in fine],
                b"filenames": [b"f.png"] * len(fine),
            },
        )
    write_py2_pickle(
        folder / "meta", {b"fine_label_names": [b"c"] * 100, b"coarse_label_names": [b"s"] * 20}
    )
    d = load_dataset("cifar100", tmp_path)
    assert d.num_classes == 100
    assert torch.equal(d.train_x, to_chw(tr)) and torch.equal(d.test_x, to_chw(te))
    assert d.train_y.tolist() == fine_tr and d.test_y.tolist() == fine_te


def write_svhn(root: Path, split: str, x_nchw: np.ndarray, y: list[int]) -> None:
    # the .mat layout: X (32, 32, 3, N) = (row, col, channel, example); y (N, 1), 10 = digit 0
    sio.savemat(
        root / f"{split}_32x32.mat",
        {"X": x_nchw.transpose(2, 3, 1, 0), "y": np.asarray(y, dtype=np.uint8)[:, None]},
    )


def test_svhn_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    tr = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    te = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    write_svhn(tmp_path, "train", tr, [10, 1, 2, 9, 10])
    write_svhn(tmp_path, "test", te, [3, 10, 5])
    d = load_dataset("svhn", tmp_path)
    assert d.train_x.shape == (5, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert torch.equal(d.train_x, torch.from_numpy(tr)) and torch.equal(
        d.test_x, torch.from_numpy(te)
    )
    assert d.train_y.tolist() == [0, 1, 2, 9, 0] and d.test_y.tolist() == [3, 0, 5]
    assert d.train_y.dtype == torch.int64 and not d.flip
    # the same as torchvision's SVHN reading of these files (md5 check bypassed)
    from torchvision import datasets as tvd

    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    tv = tvd.SVHN(str(tmp_path), split="train")
    assert torch.equal(d.train_x, torch.from_numpy(tv.data))
    assert d.train_y.tolist() == tv.labels.tolist()


@pytest.mark.parametrize(
    ("name", "folder"),
    [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("svhn", "")],
)
def test_missing_files_name_the_folder_and_download(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(name, tmp_path)
    msg = str(info.value)
    assert str(tmp_path / folder) in msg and "data.download" in msg
    assert "\n" not in msg


def test_download_only_when_missing(cifar10_root, monkeypatch: pytest.MonkeyPatch) -> None:
    from mixsweep.data import datasets

    calls: list[str] = []
    monkeypatch.setattr(datasets, "_download", lambda name, root: calls.append(name))
    root = cifar10_root[0]
    assert len(load_dataset("cifar10", root, download=True).train_y) == 15
    assert not datasets.ensure_available("cifar10", root, download=True)
    assert calls == []  # on disk: no network, no re-check of 170 MB per trial
    with pytest.raises(DataError, match="cifar-100-python"):
        datasets.ensure_available("cifar100", root, download=False)
    assert datasets.ensure_available("cifar100", root, download=True) and calls == ["cifar100"]


def test_corrupt_file_is_a_data_error(cifar10_root) -> None:
    root = cifar10_root[0]
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", root)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_digits_embedded() -> None:
    d = load_dataset("digits")
    assert d.train_x.shape == (1437, 1, 8, 8) and d.test_x.shape == (360, 1, 8, 8)
    assert d.train_x.dtype == torch.uint8 and int(d.train_x.max()) == 255
    assert sorted(set(d.train_y.tolist())) == list(range(10))


# --------------------------------------------------------------------------- labeled split


def test_labeled_split_class_balanced_and_deterministic() -> None:
    labels = torch.arange(1000) % 10
    s = labeled_split(labels, 0.1, seed=3)
    counts = torch.bincount(labels[s.labeled], minlength=10)
    assert counts.tolist() == [10] * 10
    again = labeled_split(labels, 0.1, seed=3)
    assert torch.equal(s.labeled, again.labeled) and torch.equal(s.unlabeled, again.unlabeled)
    assert not torch.equal(s.labeled, labeled_split(labels, 0.1, seed=4).labeled)
    # disjoint, and together the whole set
    assert not set(s.labeled.tolist()) & set(s.unlabeled.tolist())
    assert sorted(s.labeled.tolist() + s.unlabeled.tolist()) == list(range(1000))


def test_labeled_split_uneven_classes_and_tiny_fraction() -> None:
    labels = torch.tensor([0] * 50 + [1] * 7 + [2] * 3)
    s = labeled_split(labels, 0.01, seed=0)
    assert torch.bincount(labels[s.labeled]).tolist() == [1, 1, 1]  # at least one per class


def test_labeled_split_full_fraction() -> None:
    labels = torch.arange(50) % 5
    s = labeled_split(labels, 1.0, seed=9)
    assert torch.equal(s.labeled, torch.arange(50)) and torch.equal(s.unlabeled, torch.arange(50))
    with pytest.raises(ValueError):
        labeled_split(labels, 0.0, seed=0)


def test_labeled_split_by_count_is_equal_per_class() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)  # imbalanced, as SVHN is
    s = labeled_split(labels, 1.0, seed=5, num_labels=15)
    assert torch.bincount(labels[s.labeled]).tolist() == [5, 5, 5]
    assert torch.equal(s.labeled, labeled_split(labels, 1.0, seed=5, num_labels=15).labeled)
    assert not torch.equal(s.labeled, labeled_split(labels, 1.0, seed=6, num_labels=15).labeled)
    assert len(s.unlabeled) == 85 and not set(s.labeled.tolist()) & set(s.unlabeled.tolist())
    # a fraction keeps the imbalance; a count does not
    assert torch.bincount(labels[labeled_split(labels, 0.3, seed=5).labeled]).tolist() == [15, 9, 6]
    with pytest.raises(ValueError, match="not a positive multiple of the 3 classes"):
        labeled_split(labels, 1.0, seed=0, num_labels=16)
    with pytest.raises(ValueError, match="needs 21 labels per class; the smallest class has 20"):
        labeled_split(labels, 1.0, seed=0, num_labels=63)


def test_same_subset_in_every_mode(trial_cfg) -> None:
    from mixsweep.engine import Engine

    splits = []
    for mode in ("erm", "sup", "unsup", "mt"):
        cfg = trial_cfg(
            seed=5, data={"labeled_fraction": 0.2}, mixup={"mode": mode, "k": 2, "alpha": 1.0}
        )
        splits.append(Engine(cfg, torch.device("cpu")).loader.split)
    for s in splits[1:]:
        assert torch.equal(s.labeled, splits[0].labeled) and torch.equal(
            s.unlabeled, splits[0].unlabeled
        )


# --------------------------------------------------------------------------- the memory loader


def tagged(n: int = 100, size: int = 8, pad: int = 1, flip: bool = True):
    """Image i is the constant i (so a batch tells which examples it holds); label i % 10."""
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, size, size).numpy()
    return _build("tagged", x, np.arange(n) % 10, x[:10], np.arange(10), 10, pad=pad, flip=flip)


def untag(data, x: torch.Tensor) -> torch.Tensor:
    """Back from normalised floats to the tag, read at the centre (never padding)."""
    c = x.shape[-1] // 2
    v = x[:, 0, c, c] * (data.std[0] * 255) + data.mean[0] * 255
    return v.round().long()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_steps_per_epoch_independent_of_fraction(fraction: float) -> None:
    data = tagged(100)
    split = labeled_split(data.train_y, fraction, seed=0)
    loader = make_loader(
        "memory", data, split, 16, torch.device("cpu"), augment=True, unlabeled=True, seed=0
    )
    assert loader.steps_per_epoch == math.ceil(100 / 16)
    batches = list(loader.epoch(1))
    assert len(batches) == 7
    labeled = set(split.labeled.tolist())
    pool = set(split.unlabeled.tolist())
    seen = []
    for b in batches:
        assert b.x.shape == (16, 1, 8, 8) and b.x.dtype == torch.float32
        idx = untag(data, b.x)
        assert set(idx.tolist()) <= labeled
        assert torch.equal(b.y, idx % 10)  # labels travel with their images
        assert set(untag(data, b.xu).tolist()) <= pool
        seen += idx.tolist()
    assert set(seen) == labeled  # the labeled stream cycles through all of the subset


def test_no_unlabeled_stream_without_consistency() -> None:
    data = tagged(40)
    split = labeled_split(data.train_y, 1.0, seed=0)
    loader = make_loader(
        "memory", data, split, 8, torch.device("cpu"), augment=False, unlabeled=False, seed=0
    )
    batches = list(loader.epoch(0))
    assert all(b.xu is None for b in batches)
    assert sorted(torch.cat([untag(data, b.x) for b in batches]).tolist()) == list(range(40))


def reference_crop_flip(x: torch.Tensor, pad: int, dy, dx, fl) -> torch.Tensor:
    padded = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    out = []
    for i in range(len(x)):
        img = padded[i, :, int(dy[i]) : int(dy[i]) + h, int(dx[i]) : int(dx[i]) + w]
        out.append(img.flip(-1) if fl[i] else img)
    return torch.stack(out)


@pytest.mark.parametrize(("pad", "flip"), [(4, True), (1, False), (2, True)])
def test_crop_flip_matches_reference(pad: int, flip: bool) -> None:
    g = torch.Generator().manual_seed(pad)
    x = torch.randint(0, 256, (64, 3, 12, 10), dtype=torch.uint8, generator=g)
    dy, dx, fl = crop_flip_params(64, pad, flip, g)
    assert int(dy.min()) >= 0 and int(dy.max()) <= 2 * pad and int(dx.max()) <= 2 * pad
    assert bool(fl.any()) == flip
    out = crop_flip(F.pad(x, (pad,) * 4), dy, dx, fl, (12, 10))
    assert out.dtype == torch.uint8
    assert torch.equal(out, reference_crop_flip(x, pad, dy, dx, fl))


def test_loader_augmentation_is_the_reference_law() -> None:
    """One batch of the loader equals reference crop+flip with the loader's own parameters."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 3, 8, 8), dtype=np.uint8)
    data = _build("rand", x, np.arange(32) % 10, x[:4], np.arange(4), 10, pad=2, flip=True)
    split = labeled_split(data.train_y, 1.0, seed=0)
    loader = make_loader(
        "memory", data, split, 32, torch.device("cpu"), augment=True, unlabeled=False, seed=7
    )
    (batch,) = list(loader.epoch(3))
    # replay the loader's randomness: index order from stream 0, crop/flip from stream 4
    order = torch.randperm(32, generator=epoch_generator(7, 3, 0))
    dy, dx, fl = crop_flip_params(32, 2, True, epoch_generator(7, 3, 4))
    ref = reference_crop_flip(data.train_x[order], 2, dy, dx, fl)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.std).view(1, 3, 1, 1) * 255
    torch.testing.assert_close(batch.x, (ref.float() - mean) / std)
    assert torch.equal(batch.y, data.train_y[order])


def test_same_seed_and_epoch_same_batches() -> None:
    data = tagged(60)
    split = labeled_split(data.train_y, 0.5, seed=1)

    def epoch(seed: int, e: int):
        loader = make_loader(
            "memory", data, split, 10, torch.device("cpu"), augment=True, unlabeled=True, seed=seed
        )
        return list(loader.epoch(e))

    a, b, c, d = epoch(0, 2), epoch(0, 2), epoch(0, 3), epoch(1, 2)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u.x, v.x) and torch.equal(u.y, v.y) and torch.equal(u.xu, v.xu)
    assert not all(torch.equal(u.x, v.x) for u, v in zip(a, c, strict=True))
    assert not all(torch.equal(u.x, v.x) for u, v in zip(a, d, strict=True))


def test_eval_batches_cover_the_test_set_in_order() -> None:
    data = tagged(30)
    got = list(eval_batches(data, torch.device("cpu"), 4))
    assert [len(y) for _, y in got] == [4, 4, 2]
    assert torch.cat([untag(data, x) for x, _ in got]).tolist() == list(range(10))


def test_unknown_loader_raises() -> None:
    data = tagged(10)
    with pytest.raises(ValueError, match="unknown loader 'bogus'"):
        make_loader(
            "bogus",
            data,
            Split(torch.arange(10), torch.arange(10)),
            4,
            torch.device("cpu"),
            augment=False,
            unlabeled=False,
            seed=0,
        )
