"""The Python API: the functions the ``mixsweep`` command calls, for notebooks and scripts.

    from mixsweep.api import expand, launch, load_results, load_spec, run_trial

    spec = load_spec("sweeps/quickstart.yaml")   # a validated, frozen SweepSpec
    trials = expand(spec)                        # the trial table: list[TrialConfig]
    launch(spec)                                 # run on Ray Tune (or submit to SLURM); resumes
    run_trial(trials[0], data=my_arrays)         # one trial in this process, on your own data
    r = load_results("runs/quickstart")          # pandas frames: r.trials, r.epochs, r.layers

Errors are the CLI's: ``SpecError`` (a bad sweep file or value; ``LaunchError`` and
``PlacementError`` are kinds of it), ``DataError``, ``SlurmError``, ``StoreError``,
``SweepLocked``; each message names what to fix.
"""

from __future__ import annotations

import pandas as pd

from mixsweep.data.datasets import ArrayDataset
from mixsweep.data.errors import DataError
from mixsweep.expand import axes, expand
from mixsweep.launch import LaunchError, LaunchResult, launch
from mixsweep.results import Results, load_results
from mixsweep.slurm import SlurmError
from mixsweep.spec import SweepSpec, TrialConfig, parse_spec
from mixsweep.spec_errors import SpecError
from mixsweep.spec_yaml import load_spec
from mixsweep.store import StoreError, SweepLocked
from mixsweep.trial import run_trial

__all__ = [
    "ArrayDataset", "DataError", "LaunchError", "LaunchResult", "Results", "SlurmError",
    "SpecError", "StoreError", "SweepLocked", "SweepSpec", "TrialConfig", "axes", "expand",
    "launch", "load_results", "load_spec", "parse_spec", "run_trial", "with_config",
]


def with_config(frame: pd.DataFrame, results: Results, *columns: str) -> pd.DataFrame:
    """``frame`` (``results.epochs`` or ``results.layers``) with the trials' config columns
    joined on ``trial_id`` (all varying config axes when none are named), for groupby/seaborn.

    Args:
        frame: a frame with a ``trial_id`` column.
        results: what ``load_results`` returned.
        columns: config columns of ``results.trials`` to add, e.g. ``"mixup.mode"``.
    """
    trials = results.trials
    if not columns:
        config = [c for c in trials.columns if "." in c and not c.startswith(("nl.", "cos."))
                  or c == "seed"]
        columns = tuple(c for c in config if trials[c].astype(str).nunique(dropna=False) > 1)
    return frame.merge(trials[["trial_id", *columns]], on="trial_id", how="left")
