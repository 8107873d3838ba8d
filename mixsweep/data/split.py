"""Class-balanced labeled subset; the rest of the training set is the unlabeled pool."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Split:
    labeled: torch.Tensor  # int64 indices into the training set
    unlabeled: torch.Tensor  # the pool; the whole training set when fraction == 1


def labeled_split(labels: torch.Tensor, fraction: float, seed: int,
                  num_labels: int | None = None) -> Split:
    """Take ``round(fraction * n_c)`` (at least 1) examples of every class c, or, with
    ``num_labels``, ``num_labels / classes`` of every class (the semi-supervised
    literature's "250 labels" = 25 per CIFAR-10 class).

    The choice depends only on (labels, fraction or count, seed): every mode of a
    sweep trains on the same labeled examples. Pool labels are never read.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {fraction}")
    classes = torch.unique(labels).tolist()
    if num_labels is not None:
        per_class, rest = divmod(num_labels, len(classes))
        if rest or per_class < 1:
            raise ValueError(f"num_labels {num_labels} is not a positive multiple of the "
                             f"{len(classes)} classes")
        smallest = min(int((labels == c).sum()) for c in classes)
        if per_class > smallest:
            raise ValueError(f"num_labels {num_labels} needs {per_class} labels per class; "
                             f"the smallest class has {smallest}")
    elif fraction == 1:
        every = torch.arange(len(labels))
        return Split(labeled=every, unlabeled=every)
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        take = per_class if num_labels is not None else max(1, round(fraction * len(idx)))
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:take]])
    labeled = torch.cat(chosen).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[labeled] = False
    return Split(labeled=labeled, unlabeled=torch.nonzero(mask).flatten())
