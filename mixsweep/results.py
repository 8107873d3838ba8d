"""A sweep's results as three pandas frames, for notebooks (groupby, seaborn) and the report.

    >>> from mixsweep.results import load_results
    >>> r = load_results("runs/quickstart")
    >>> r.trials.groupby("mixup.mode")["final_acc"].mean()
    >>> r.layers[r.layers["layer"] == "block2"].groupby(["mixup.mode", "epoch"])["nl"].mean()

Reads only the local store (spec.yaml, the trial folders; results.csv when
spec.yaml cannot be read), never a web API.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from mixsweep.store import SweepPaths, read_sweep
from mixsweep.store_curves import CurveCache

EPOCH_KEYS = ("trial_id", "epoch")
LAYER_COLUMNS = ("trial_id", "epoch", "layer", "nl", "cos")


class Results(NamedTuple):
    """One sweep's results; every frame is keyed by ``trial_id`` (a string)."""

    name: str
    trials: pd.DataFrame
    """One row per trial: ``trial_id``, ``status`` (completed, failed, error, running,
    pending, unreadable), config columns (``data.dataset``, ``mixup.mode``, ``mixup.k``,
    ``seed``, ...), results (``final_acc``, ``reached_target``, ``epochs_to_target``, ...)
    and the final NL / cosine per layer (``nl.<layer>``, ``cos.<layer>``)."""
    epochs: pd.DataFrame
    """One row per trial and recorded epoch (epoch 0 = at init): ``trial_id``, ``epoch``,
    ``step``, ``test_acc``, ``train_seconds``, and the losses and ``lr`` the trial logged."""
    layers: pd.DataFrame
    """One row per trial, measured epoch and probe layer: ``trial_id``, ``epoch``,
    ``layer``, ``nl`` (nonlinearity, 0 = affine), ``cos``."""
    notes: list[str]
    """What could not be read, one line each (those trials' rows or curves are short)."""


def _long(recs: list[dict[str, Any]], key: str, index: pd.MultiIndex) -> pd.Series:
    """``rec[key]`` (layer -> value maps) of every record as one long Series."""
    wide = pd.DataFrame.from_records([r.get(key) or {} for r in recs], index=index)
    wide.columns.name = "layer"
    return wide.stack(future_stack=True).astype(float)


def frames(histories: dict[str, list[dict[str, Any]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(epochs, layers) frames from each trial's epoch records (built column-wise)."""
    tids = [t for t, recs in histories.items() for _ in recs]
    recs = [r for rs in histories.values() for r in rs]
    if not recs:
        return (pd.DataFrame(columns=[*EPOCH_KEYS, "test_acc"]),
                pd.DataFrame(columns=list(LAYER_COLUMNS)))
    epochs = pd.DataFrame.from_records([{k: v for k, v in r.items() if not isinstance(v, dict)
                                         and k not in ("nl", "cos")} for r in recs])
    epochs.insert(0, "trial_id", tids)
    index = pd.MultiIndex.from_arrays([tids, epochs["epoch"].to_numpy()], names=list(EPOCH_KEYS))
    layers = pd.concat({"nl": _long(recs, "nl", index), "cos": _long(recs, "cos", index)}, axis=1)
    layers = layers.dropna(how="all").reset_index()
    return epochs, layers[[c for c in LAYER_COLUMNS if c in layers.columns]]


def _cut_notes(why_by_trial: dict[str, str]) -> list[str]:
    """One line per reason a metrics.jsonl was read only in part, naming its trials."""
    cut: dict[str, list[str]] = {}
    for tid, why in why_by_trial.items():
        cut.setdefault(re.sub(r" line \d+", "", why), []).append(tid)
    notes = []
    for why, ids in cut.items():
        which = f"{len(ids)} trial{'s' if len(ids) > 1 else ''} ({', '.join(ids[:5])}" \
                f"{' and more' if len(ids) > 5 else ''})"
        notes.append(f"{why}, from that line on, in {which}: their curves end before it"
                     if why.startswith("metrics.jsonl:") else f"{why} in {which}: no curves for them")
    return notes


def load_results(run_dir: str | Path) -> Results:
    """Read one sweep folder (``runs/<sweep>``) into three frames (see :class:`Results`).

    Sweeps of 500 trials or more keep their rows and parsed curves in the user's cache
    folder (``store_index``, ``store_curves``): a repeated read parses only what changed.
    Raises ``store.StoreError`` when neither spec.yaml nor results.csv can be read.
    """
    sp = SweepPaths(Path(run_dir))
    curves = CurveCache(sp.root)
    # the rows as the row index keeps them; the finished ones' epochs_done from metrics.jsonl
    name, trials, notes = read_sweep(sp, curves=False, epochs_done=curves.last_epoch)
    order = [str(t) for t in trials["trial_id"]]
    epochs, layers = curves.frames(order, frames)
    cut = {}
    for tid, status in zip(order, trials["status"], strict=True):
        why = curves.read(tid)[1]
        if why and status != "unreadable":  # an unreadable trial has its note already
            cut[tid] = why
    return Results(name, trials, epochs, layers, notes + _cut_notes(cut))
