"""The Python API (mixsweep.api): the README's example, end to end on a tiny real sweep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mixsweep import api

ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(runs: Path) -> api.SweepSpec:
    return api.parse_spec({
        "name": "api_tiny", "runs_dir": str(runs),
        "data": {"dataset": "digits"},
        "model": {"arch": "cnn", "width": 4},
        "train": {"epochs": 2, "batch_size": 256, "target_accuracy": 0.3, "device": "cpu"},
        "mixup": {"mode": ["erm", "sup"], "k": 2},
        "linearity": {"probes": 32, "every": 1},
        "seeds": [0],
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "tracking": {"wandb": {"mode": "disabled"}},
    })


def test_the_api_names_are_the_clis_functions() -> None:
    from mixsweep import expand, launch, results, spec_yaml, trial

    assert api.launch is launch.launch and api.expand is expand.expand
    assert api.run_trial is trial.run_trial and api.load_results is results.load_results
    assert api.load_spec is spec_yaml.load_spec
    for name in api.__all__:
        assert getattr(api, name).__doc__, f"mixsweep.api.{name} has no docstring"


def test_load_spec_and_expand_give_the_trial_table() -> None:
    spec = api.load_spec(ROOT / "sweeps" / "quickstart.yaml")
    trials = api.expand(spec)
    assert len(trials) == 24 and len({t.trial_id for t in trials}) == 24
    assert api.axes(spec)["mixup.mode"] == ["erm", "sup", "unsup", "mt"]
    dry = api.launch(spec, dry_run=True)
    assert [t.trial_id for t in dry.trials] == [t.trial_id for t in trials]
    with pytest.raises(api.SpecError, match="mixup.mode"):
        api.parse_spec({"mixup": {"mode": "cutmix"}})


def test_import_of_the_package_stays_light() -> None:
    code = "import sys, mixsweep; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_launch_then_load_results_gives_three_frames_ready_for_groupby(tmp_path: Path) -> None:
    """A real two-trial sweep on Ray through api.launch, read back with load_results."""
    import os

    spec = tiny_spec(tmp_path / "runs")
    keys = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")
    before = {k: os.environ.get(k) for k in keys}
    done = api.launch(spec)
    # the local Ray's single-machine mode and throw-away token do not outlive it (a SLURM
    # launch from this process next must not pass them to its job)
    assert {k: os.environ.get(k) for k in keys} == before
    assert done.outcome is not None and done.outcome.completed == 2 and done.outcome.done
    r = api.load_results(done.sweep_dir)
    assert r.name == "api_tiny" and len(r.trials) == 2 and set(r.trials["status"]) == {"completed"}
    assert {"trial_id", "mixup.mode", "seed", "final_acc", "reached_target"} <= set(r.trials)
    assert sorted(r.epochs.groupby("trial_id")["epoch"].max()) == [2, 2]
    assert {"trial_id", "epoch", "test_acc"} <= set(r.epochs)
    layers = api.with_config(r.layers, r, "mixup.mode")
    nl = layers.groupby(["mixup.mode", "epoch", "layer"])["nl"].mean()
    assert set(nl.index.get_level_values("mixup.mode")) == {"erm", "sup"}
    assert set(nl.index.get_level_values("epoch")) == {0, 1, 2} and (nl >= 0).all()
    # the frames agree with the trial files they were read from
    one = r.trials.iloc[0]
    last = r.epochs[(r.epochs["trial_id"] == one["trial_id"]) & (r.epochs["epoch"] == 2)]
    assert float(last["test_acc"].iloc[0]) == pytest.approx(float(one["final_acc"]))
    # every varying config column by default
    assert "mixup.mode" in api.with_config(r.epochs, r).columns


def test_run_trial_on_your_own_data(tmp_path: Path) -> None:
    from mixsweep.data.datasets import synthetic

    cfg = api.expand(tiny_spec(tmp_path / "runs"))[1]
    data = synthetic(n_train=64, n_test=32, classes=3, size=8, seed=2)
    res = api.run_trial(cfg, data=data)  # no folder: keep nothing
    assert res["status"] == "completed" and res["steps_per_epoch"] == 1
    assert not (tmp_path / "runs").exists()
