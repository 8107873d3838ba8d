"""The one definition of each list of names: datasets, architectures, mixup modes,
loaders, W&B modes, and the facts per dataset known before any data is read.

Each ``Literal`` alias is the sweep file's type; its tuple (``typing.get_args``) is what
code iterates and what error messages list. Imports nothing from mixsweep.
"""

from __future__ import annotations

from typing import Literal, get_args

Dataset = Literal["cifar10", "cifar100", "svhn", "digits", "synthetic"]
Arch = Literal["cnn", "resnet18", "wrn28_2"]
Mode = Literal["erm", "sup", "unsup", "both", "mt"]
Loader = Literal["memory", "torch", "ffcv"]
WandbMode = Literal["offline", "online", "disabled"]

DATASETS: tuple[str, ...] = get_args(Dataset)
ARCHS: tuple[str, ...] = get_args(Arch)
MODES: tuple[str, ...] = get_args(Mode)
LOADERS: tuple[str, ...] = get_args(Loader)
WANDB_MODES: tuple[str, ...] = get_args(WandbMode)

MIXING_MODES = frozenset({"sup", "unsup", "both"})  # modes that use k and alpha
SUPERVISED_MIXING_MODES = frozenset({"sup", "both"})  # modes that mix the labeled batch
CONSISTENCY_MODES = frozenset({"unsup", "both", "mt"})  # modes with an EMA teacher

NUM_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "svhn": 10, "digits": 10,
                               "synthetic": 10}

# (training examples, examples of the smallest class) of each dataset's TRAIN split, known
# before any data is read, so a label count or batch the data cannot give fails validation:
#   cifar10    50000 train, 5000 per class (the official train batches)
#   cifar100   50000 train, 500 per class
#   svhn       73257 train (train_32x32.mat, without "extra"); per digit 0-9: 4948 13861
#              10585 8497 7458 6882 5727 5595 5045 4659 -> digit 9 is the smallest, 4659
#   digits     1437 train: sklearn's 1797 images split 80/20 stratified (data/datasets.py
#              _digits); train per digit 142 146 142 146 145 145 145 143 139 144 -> 139
#   synthetic  datasets.synthetic() defaults: n_train=2000, y = arange(n) % 10 -> 200 each
TRAIN_SIZES: dict[str, tuple[int, int]] = {
    "cifar10": (50_000, 5_000),
    "cifar100": (50_000, 500),
    "svhn": (73_257, 4_659),
    "digits": (1_437, 139),
    "synthetic": (2_000, 200),
}

# train.target_accuracy when the sweep file sets none
DEFAULT_TARGETS: dict[str, float] = {
    "cifar10": 0.85,
    "cifar100": 0.55,
    "svhn": 0.93,
    "digits": 0.95,
    "synthetic": 0.9,
}
