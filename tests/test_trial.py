"""The trial loop on digits (CPU): it learns, censors epochs-to-target honestly, resumes
exactly, never re-runs a completed trial, and fails cleanly on a non-finite loss."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from mixsweep import engine as engine_mod
from mixsweep import trial as trial_mod
from mixsweep.store import TrialPaths, read_jsonl
from mixsweep.trial import run_trial

# ephemeral keys: they depend on the machine's speed, not on the computation
_TIMING = {"train_seconds", "wall_seconds", "seconds_to_target", "provenance"}


class Killed(RuntimeError):
    """Stands in for a kill right after an epoch was checkpointed, before it was reported."""


def kill_after(epoch: int):
    def report(rec: dict[str, Any]) -> None:
        if rec["epoch"] == epoch:
            raise Killed(f"killed after epoch {epoch}")

    return report


def computed(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in history]


def test_digits_trial_learns(trial_cfg, tmp_path: Path) -> None:
    cfg = trial_cfg(model={"width": 8}, train={"epochs": 4, "target_accuracy": 0.8})
    seen: list[dict[str, Any]] = []
    res = run_trial(cfg, tmp_path / "t", seen.append)
    assert res["status"] == "completed" and res["reason"] is None
    assert res["final_acc"] > 0.8  # chance is 0.1
    assert [r["epoch"] for r in seen] == [0, 1, 2, 3, 4]
    assert seen[0]["test_acc"] < 0.3  # at init: the learning is real
    assert res["epochs_done"] == 4 and res["steps"] == 4 * res["steps_per_epoch"] == 4 * 12
    # one NL value per probed layer, at init and at the end
    from mixsweep.models import build_model

    layers = set(build_model("cnn", 1, 10, 8, 8).probe_layers)
    assert set(res["nonlinearity"]) == layers and set(res["nl_at_init"]) == layers
    assert set(res["cosine"]) == layers
    assert all(math.isfinite(v) for v in res["nonlinearity"].values())
    assert res["nonlinearity"]["stem_pre"] < 1e-6 and res["nonlinearity"]["block1"] > 0.01
    # epochs-to-target: the first epoch (1-based) whose accuracy reaches the target
    first = next(r["epoch"] for r in seen if r["epoch"] >= 1 and r["test_acc"] >= 0.8)
    assert res["reached_target"] is True and res["epochs_to_target"] == first
    assert isinstance(res["epochs_to_target"], int)
    assert res["steps_to_target"] == first * 12
    assert set(res["nl_at_target"]) == layers
    # the files of the trial folder
    paths = TrialPaths(tmp_path / "t")
    assert json.loads(paths.result.read_text())["trial_id"] == cfg.trial_id
    assert json.loads(paths.config.read_text())["trial_id"] == cfg.trial_id
    assert [r["epoch"] for r in read_jsonl(paths.metrics)] == [0, 1, 2, 3, 4]


def test_censored_target_is_null_not_a_number(trial_cfg) -> None:
    cfg = trial_cfg(model={"width": 4}, train={"epochs": 1, "target_accuracy": 0.999})
    res = run_trial(cfg)
    assert res["status"] == "completed"
    assert res["reached_target"] is False
    assert res["epochs_to_target"] is None and res["steps_to_target"] is None
    assert res["nl_at_target"] is None


@pytest.mark.parametrize(
    "mixup",
    [
        pytest.param({"mode": "erm"}, id="erm"),
        pytest.param({"mode": "sup", "k": 3, "alpha": 0.5}, id="sup"),
        pytest.param({"mode": "unsup", "k": 2, "alpha": 1.0, "rampup": 0.5}, id="unsup"),
    ],
)
def test_resume_equals_uninterrupted(trial_cfg, tmp_path: Path, mixup: dict[str, Any]) -> None:
    cfg = trial_cfg(
        seed=3,
        data={"labeled_fraction": 0.3 if mixup["mode"] == "unsup" else 1.0},
        model={"width": 4},
        train={"epochs": 4, "batch_size": 256},
        mixup=mixup,
        linearity={"probes": 32, "every": 1},
    )
    full = run_trial(cfg, tmp_path / "a")
    with pytest.raises(Killed):
        run_trial(cfg, tmp_path / "b", kill_after(2))
    b = TrialPaths(tmp_path / "b")
    assert not b.result.exists()
    assert [r["epoch"] for r in read_jsonl(b.metrics)] == [0, 1]  # the epochs reported
    resumed: list[dict[str, Any]] = []
    res = run_trial(cfg, tmp_path / "b", resumed.append)
    # epoch 2 was checkpointed but never reported: reported now (not trained again), then 3, 4
    assert [r["epoch"] for r in resumed] == [2, 3, 4]
    assert res["status"] == "completed"
    a_hist = computed(read_jsonl(TrialPaths(tmp_path / "a").metrics))
    b_hist = computed(read_jsonl(b.metrics))
    assert [r["epoch"] for r in b_hist] == [0, 1, 2, 3, 4]  # one line per epoch, no duplicates
    assert b_hist == a_hist  # accuracy, losses, lr, NL and cosine of every epoch, exactly
    assert full["resumed_from"] == [] and res["resumed_from"] == [2]
    drop = {"resumed_from"}
    assert computed([{k: v for k, v in res.items() if k not in drop}]) == computed(
        [{k: v for k, v in full.items() if k not in drop}]
    )
    # the final weights (and the EMA teacher of unsup) are bit-identical
    ca = torch.load(TrialPaths(tmp_path / "a").checkpoint, weights_only=True)
    cb = torch.load(b.checkpoint, weights_only=True)
    for part in ("model", "teacher"):
        if ca[part] is None:
            assert cb[part] is None and mixup["mode"] != "unsup"
            continue
        for key, value in ca[part].items():
            assert torch.equal(value, cb[part][key]), (part, key)
    assert ca["step"] == cb["step"] == 4 * 6


def test_completed_result_is_returned_without_rerunning(
    trial_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = {"model": {"width": 4}, "linearity": {"probes": 16}}
    cfg = trial_cfg(train={"epochs": 1}, **small)
    first = run_trial(cfg, tmp_path / "t")

    def boom(*_a, **_k):
        raise AssertionError("a completed trial was run again")

    monkeypatch.setattr(trial_mod, "Engine", boom)
    again = run_trial(cfg, tmp_path / "t")
    assert again == json.loads(json.dumps(first))
    # another trial in that folder is not mistaken for the completed one
    with pytest.raises(AssertionError, match="run again"):
        run_trial(trial_cfg(seed=1, train={"epochs": 1}, **small), tmp_path / "t")


def test_kill_between_finishing_w_and_b_and_result_json_finishes_again(
    trial_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """on_result (the W&B finish) comes before result.json: a kill in between leaves the
    trial unfinished; the rerun trains nothing, reports no epoch twice, and calls it again."""
    small = {"model": {"width": 4}, "linearity": {"probes": 16}}
    cfg = trial_cfg(train={"epochs": 2}, **small)
    seen: list[int] = []

    def killed(_result: dict[str, Any]) -> None:
        raise Killed("killed after the W&B run was finished")

    with pytest.raises(Killed):
        run_trial(cfg, tmp_path / "t", lambda r: seen.append(r["epoch"]), on_result=killed)
    paths = TrialPaths(tmp_path / "t")
    assert not paths.result.exists() and seen == [0, 1, 2]
    metrics = paths.metrics.read_bytes()

    def no_training(*_a, **_k):
        raise AssertionError("an epoch was trained again")

    monkeypatch.setattr(trial_mod.Engine, "train_epoch", no_training)
    finished: list[dict[str, Any]] = []
    res = run_trial(cfg, tmp_path / "t", lambda r: seen.append(r["epoch"]),
                    on_result=finished.append)
    assert seen == [0, 1, 2]  # nothing reported twice
    assert len(finished) == 1 and finished[0]["status"] == "completed"
    assert json.loads(paths.result.read_text()) == json.loads(json.dumps(res))
    assert res["epochs_done"] == 2 and paths.metrics.read_bytes() == metrics


def test_checkpoint_of_another_trial_is_not_resumed(trial_cfg, tmp_path: Path) -> None:
    small = {"model": {"width": 4}, "linearity": {"probes": 16, "every": 1}}
    cfg_a = trial_cfg(seed=0, train={"epochs": 2}, **small)
    cfg_b = trial_cfg(seed=1, train={"epochs": 1}, **small)
    with pytest.raises(Killed):
        run_trial(cfg_a, tmp_path / "t", kill_after(1))
    res = run_trial(cfg_b, tmp_path / "t")
    fresh = run_trial(cfg_b, tmp_path / "fresh")
    assert res["trial_id"] == cfg_b.trial_id and res["epochs_done"] == 1
    assert computed(read_jsonl(TrialPaths(tmp_path / "t").metrics)) == computed(
        read_jsonl(TrialPaths(tmp_path / "fresh").metrics)
    )
    assert res["final_acc"] == fresh["final_acc"]


def test_exploding_lr_fails_the_trial(trial_cfg, tmp_path: Path) -> None:
    cfg = trial_cfg(model={"width": 4}, train={"epochs": 2, "lr": 1e30, "optimizer": "sgd"})
    res = run_trial(cfg, tmp_path / "t")
    assert res["status"] == "failed"
    assert "non-finite loss" in res["reason"] and "epoch 1 step" in res["reason"]
    assert json.loads(TrialPaths(tmp_path / "t").result.read_text())["status"] == "failed"


def test_non_finite_loss_names_epoch_and_step(
    trial_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine_mod.mixup_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 12 + 3:  # epoch 2, step 3 (12 steps per epoch)
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    monkeypatch.setattr(engine_mod, "mixup_losses", poisoned)
    cfg = trial_cfg(model={"width": 4}, train={"epochs": 3}, linearity={"probes": 16, "every": 1})
    res = run_trial(cfg, tmp_path / "t")
    assert res["status"] == "failed"
    assert "epoch 2 step 3 " in res["reason"] and "global step 15" in res["reason"]
    # epoch 1 finished and stays recorded; the failed epoch is not
    assert res["epochs_done"] == 1
    assert [r["epoch"] for r in read_jsonl(TrialPaths(tmp_path / "t").metrics)] == [0, 1]


def test_run_trial_trains_on_the_data_it_is_given(trial_cfg, tmp_path: Path) -> None:
    """``data=``: the trial trains and evaluates on your dataset, not the config's."""
    from mixsweep.data.datasets import synthetic

    data = synthetic(n_train=96, n_test=40, classes=3, size=8, seed=1)  # digits: 1437 train
    cfg = trial_cfg(model={"width": 4}, train={"epochs": 1, "batch_size": 32},
                    linearity={"probes": 16})
    res = run_trial(cfg, tmp_path / "t", data=data)
    assert res["status"] == "completed"
    assert res["steps_per_epoch"] == 3 and res["steps"] == 3  # ceil(96 / 32), not digits' 45
    eng = trial_mod.Engine(cfg, "cpu", data=data)
    assert eng.data is data and eng.model(eng.probes[:2]).shape == (2, 3)


def test_engine_is_the_public_door_for_a_few_timed_steps(trial_cfg) -> None:
    """``Engine.train_epoch(limit=)`` runs that many steps and adds their seconds."""
    eng = trial_mod.Engine(trial_cfg(model={"width": 4}, linearity={"probes": 16}))
    assert eng.device == torch.device("cpu") and eng.step == 0 and eng.train_seconds == 0
    losses = eng.train_epoch(1, limit=2)
    assert eng.step == 2 and eng.train_seconds > 0
    assert set(losses) == {"train_loss", "train_sup", "train_unsup"}
    assert math.isfinite(losses["train_loss"])


def test_provenance_names_the_software_that_made_the_number() -> None:
    from importlib.metadata import PackageNotFoundError, version

    prov = trial_mod.provenance(torch.device("cpu"))
    for pkg in ("torchvision", "ray", "wandb", "numpy", "ffcv"):
        try:
            want = version(pkg)
        except PackageNotFoundError:
            want = None
        assert prov[pkg] == want, pkg
    assert prov["torch"] == torch.__version__
    assert prov["cuda"] == torch.version.cuda
    assert prov["cudnn"] == (torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                             else None)
    assert prov["nvidia_driver"] is None and prov["device"] == "cpu"  # no driver asked off CUDA
    assert {"mixsweep", "python", "git_commit", "host"} <= set(prov)
    assert trial_mod.package_version("no-such-distribution-mixsweep") is None
