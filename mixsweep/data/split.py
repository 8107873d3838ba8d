"""Class-balanced labeled subset; the rest of the training set is the unlabeled pool."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Split:
    labeled: torch.Tensor  # int64 indices into the training set
    unlabeled: torch.Tensor  # the pool; the whole training set when fraction == 1


def labeled_split(labels: torch.Tensor, fraction: float, seed: int) -> Split:
    """Take ``round(fraction * n_c)`` (at least 1) examples of every class c.

    The choice depends only on (labels, fraction, seed): every mode of a sweep
    trains on the same labeled examples. Pool labels are never read.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        every = torch.arange(len(labels))
        return Split(labeled=every, unlabeled=every)
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        take = max(1, round(fraction * len(idx)))
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:take]])
    labeled = torch.cat(chosen).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[labeled] = False
    return Split(labeled=labeled, unlabeled=torch.nonzero(mask).flatten())
