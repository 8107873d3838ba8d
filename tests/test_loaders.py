"""The three loaders give the same labeled subset, order and augmentation law."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mixsweep.data.datasets import ArrayDataset, synthetic
from mixsweep.data.loaders import epoch_streams, make_loader
from mixsweep.data.split import labeled_split

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data() -> ArrayDataset:
    return synthetic(n_train=200, n_test=20, size=8)


def _batches(kind, data, split, augment, unlabeled=True, workers=0, seed=1, epoch=2):
    ld = make_loader(kind, data, split, 32, CPU, augment=augment, unlabeled=unlabeled,
                     seed=seed, num_workers=workers)
    return list(ld.epoch(epoch))


def test_streams_walk_only_the_labeled_subset(data):
    split = labeled_split(data.train_y, 0.2, seed=0)
    lab, unl = epoch_streams(split, 224, seed=1, epoch=0, unlabeled=True)
    assert set(lab.tolist()) == set(split.labeled.tolist())  # every labeled example, nothing else
    assert set(unl.tolist()) <= set(split.unlabeled.tolist())
    assert not torch.equal(lab, epoch_streams(split, 224, seed=1, epoch=1, unlabeled=False)[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_matches_memory_exactly_without_augmentation(data, workers):
    split = labeled_split(data.train_y, 0.2, seed=0)
    mem = _batches("memory", data, split, augment=False)
    tor = _batches("torch", data, split, augment=False, workers=workers)
    assert len(mem) == len(tor) == 7
    for a, b in zip(mem, tor, strict=True):
        assert torch.equal(a.y, b.y)
        assert torch.equal(a.x, b.x)
        assert torch.equal(a.xu, b.xu)


def test_same_labels_with_augmentation_and_reproducible_images(data):
    split = labeled_split(data.train_y, 0.2, seed=0)
    mem = _batches("memory", data, split, augment=True)
    t0 = _batches("torch", data, split, augment=True, workers=0)
    t2 = _batches("torch", data, split, augment=True, workers=2)
    for a, b, c in zip(mem, t0, t2, strict=True):
        assert torch.equal(a.y, b.y)
        assert torch.equal(b.x, c.x)  # images do not depend on the number of workers
        assert not torch.equal(a.x, b.x)  # different draws, same law (next test)
    again = _batches("memory", data, split, augment=True)
    assert all(torch.equal(a.x, b.x) for a, b in zip(mem, again, strict=True))


def _tagged(n: int, size: int = 8, pad: int = 2) -> ArrayDataset:
    """Every image black but A=250 at (3, 2) and B=120 at (3, 3): crop and flip are readable."""
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    x[:, 0, 3, 2], x[:, 0, 3, 3] = 250, 120
    y = torch.arange(n) % 2
    return ArrayDataset("tagged", x, y, x[:4], y[:4], 2, (0.0,), (1.0,), pad=pad, flip=True)


def _draws(kind: str, data: ArrayDataset, epochs: int) -> torch.Tensor:
    """(dy, dx, flip) of every augmented image, read back from the tag's position."""
    split = labeled_split(data.train_y, 1.0, 0)
    ld = make_loader(kind, data, split, 100, CPU, augment=True, unlabeled=False, seed=5,
                     num_workers=0)
    rows = []
    p, w = data.pad, data.shape[2]
    for e in range(epochs):
        for b in ld.epoch(e):
            img = b.x[:, 0] * 255  # std 1/255 units -> pixels
            flat_a = (img - 250).abs().flatten(1).argmin(1)
            flat_b = (img - 120).abs().flatten(1).argmin(1)
            ra, ca, cb = flat_a // w, flat_a % w, flat_b % w
            flip = cb < ca
            col = torch.where(flip, w - 1 - ca, ca)
            rows.append(torch.stack([3 + p - ra, 2 + p - col, flip.long()], 1))
    return torch.cat(rows)


def test_same_augmentation_distribution_memory_vs_torch():
    from scipy.stats import chi2_contingency, chisquare

    data = _tagged(200)
    mem, tor = _draws("memory", data, 10), _draws("torch", data, 10)
    assert len(mem) == len(tor) == 2000
    for col, k in ((0, 5), (1, 5), (2, 2)):  # dy, dx in [0, 2*pad]; flip in {0, 1}
        hm = torch.bincount(mem[:, col], minlength=k)
        ht = torch.bincount(tor[:, col], minlength=k)
        assert len(hm) == len(ht) == k  # no offset outside [0, 2*pad]
        assert chisquare(hm.numpy()).pvalue > 0.001  # uniform
        assert chisquare(ht.numpy()).pvalue > 0.001
        assert chi2_contingency(torch.stack([hm, ht]).numpy()).pvalue > 0.001  # same law


def test_unknown_loader_is_rejected(data):
    split = labeled_split(data.train_y, 1.0, 0)
    with pytest.raises(ValueError, match="allowed: memory, torch, ffcv"):
        make_loader("dali", data, split, 32, CPU, augment=True, unlabeled=False, seed=0)


def test_ffcv_loader_needs_a_folder(data):
    split = labeled_split(data.train_y, 1.0, 0)
    with pytest.raises(ValueError, match="ffcv_dir"):
        make_loader("ffcv", dataclasses.replace(data), split, 32, CPU, augment=True,
                    unlabeled=False, seed=0)
