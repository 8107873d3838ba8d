"""Rules across keys of a sweep file, checked on its grid points before any trial is built.

A label count must suit the dataset, a batch must fit its training set, a per-dataset or
per-mode map must name every dataset or mode of the sweep, and a mixing mode needs its
settings. ``check_grid`` applies them in the order ``expand`` meets the points, so the
first problem is the one expansion would raise, without building the trials.
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import BaseModel

from mixsweep.names import (
    CONSISTENCY_MODES,
    DEFAULT_TARGETS,
    MIXING_MODES,
    NUM_CLASSES,
    TRAIN_SIZES,
)
from mixsweep.spec_errors import SpecError


def label_problem(dataset: str, fraction: float, num_labels: int | None) -> str | None:
    """Why a trial's labels are not well defined (a fraction and a count, or a count that is
    not equal per class), or None: the one rule of the sweep file and of TrialConfig."""
    if num_labels is None:
        return None
    if fraction != 1.0:
        return (f"data: a trial uses labeled_fraction or num_labels, not both (got "
                f"labeled_fraction {fraction} with num_labels {num_labels}); put them in "
                "separate sweeps")
    classes = NUM_CLASSES[dataset]
    if num_labels % classes:
        return (f"data.num_labels: {num_labels} is not a multiple of the {classes} classes of "
                f"{dataset} (an equal number of labels per class)")
    smallest = TRAIN_SIZES[dataset][1]
    if num_labels // classes > smallest:
        return (f"data.num_labels: {num_labels} needs {num_labels // classes} labels per class; "
                f"the smallest class of {dataset} has {smallest} training examples (at most "
                f"{smallest * classes} labels)")
    return None


def batch_problem(dataset: str, batch_size: int) -> str | None:
    """A batch larger than the training set: an epoch (ceil(train / batch) steps) would be
    one step that repeats examples, not a pass over the data."""
    n = TRAIN_SIZES[dataset][0]
    if batch_size > n:
        return (f"train.batch_size: {batch_size} is larger than the {n} training examples of "
                f"{dataset} (at most {n})")
    return None


def points(section: BaseModel) -> list[dict[str, Any]]:
    """A sweep section's grid: one dict per combination of its axes (lists), in order."""
    values = section.model_dump()
    axes = {k: v for k, v in values.items() if isinstance(v, list)}
    fixed = {k: v for k, v in values.items() if not isinstance(v, list)}
    return [
        {**fixed, **dict(zip(axes, combo, strict=True))}
        for combo in itertools.product(*axes.values())
    ]


def data_points(data: BaseModel) -> list[dict[str, Any]]:
    """The data grid, with a per-dataset ``num_labels`` map fanned out per dataset."""
    out = []
    for d in points(data):
        labels = d["num_labels"]
        if not isinstance(labels, dict):
            out.append(d)
            continue
        counts = map_entry(labels, d["dataset"], "data.num_labels", "dataset",
                           "name every dataset of the sweep; [null] = use labeled_fraction")
        out += [{**d, "num_labels": n} for n in counts]
    return out


def map_entry(value: dict[str, Any], key: str, where: str, kind: str, advice: str) -> Any:
    """``value[key]`` of a per-dataset / per-mode map, or the one-line error naming the gap."""
    if key not in value:
        raise SpecError([f"{where}: the map has no entry for {kind} {key!r} ({advice})"])
    return value[key]


def resolve_target(train: dict[str, Any], dataset: str) -> float | None:
    target = train["target_accuracy"]
    if isinstance(target, dict):
        return map_entry(target, dataset, "train.target_accuracy", "dataset",
                          f"name every dataset of the sweep, e.g. {dataset}: "
                          f"{DEFAULT_TARGETS[dataset]}")
    return DEFAULT_TARGETS[dataset] if target is None else target


def resolve_hint(train: dict[str, Any], mode: str) -> float | None:
    hint = train["epoch_seconds_hint"]
    if isinstance(hint, dict):
        return map_entry(hint, mode, "train.epoch_seconds_hint", "mode",
                          "name every mode of the sweep")
    return hint


def check_data(d: dict[str, Any], t: dict[str, Any]) -> None:
    problem = (label_problem(d["dataset"], d["labeled_fraction"], d["num_labels"])
               or batch_problem(d["dataset"], t["batch_size"]))
    if problem is not None:
        raise SpecError([problem])


def mixup_problem(m: dict[str, Any]) -> str | None:
    """A mode with a null setting it needs (k and alpha to mix; the teacher's settings)."""
    if m["mode"] in MIXING_MODES and (m["k"] is None or m["alpha"] is None):
        return f"mixup: mode {m['mode']!r} needs k and alpha (got null)"
    if m["mode"] in CONSISTENCY_MODES:
        null = [k for k in ("unsup_weight", "ema_max_decay", "rampup") if m[k] is None]
        if null:
            return (f"mixup: mode {m['mode']!r} needs unsup_weight, ema_max_decay and "
                    f"rampup (got null: {', '.join(null)})")
    return None


def check_grid(data: BaseModel, train: BaseModel, mixup: BaseModel) -> None:
    """Raise SpecError with the first problem ``expand`` would meet, in its order (data,
    then train, then mixup points; model, linearity and seeds take no part), visiting each
    (data, train) and (train, mixup) pair once rather than every trial."""
    trains, mixups = points(train), points(mixup)
    checked: set[int] = set()  # train points whose mixup pairs passed
    for d in data_points(data):
        for i, t in enumerate(trains):
            check_data(d, t)
            resolve_target(t, d["dataset"])
            if i in checked:
                continue
            for m in mixups:
                resolve_hint(t, m["mode"])
                problem = mixup_problem(m)
                if problem is not None:
                    raise SpecError([problem])
            checked.add(i)
