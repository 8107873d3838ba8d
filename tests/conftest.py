"""Shared fixtures: offline tracking, no Ray telemetry, few CPU threads, small trial configs."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

# test helpers (wandb_reader) import by name
sys.path.insert(0, str(Path(__file__).parent))
# set before anything imports wandb or ray; tests must never reach a network
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """SLURM tests (marker ``slurm``) change the system: they run only with MIXSWEEP_SLURM_TESTS=1."""
    if os.environ.get("MIXSWEEP_SLURM_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="SLURM tests install and start a local SLURM as root: "
                                   "set MIXSWEEP_SLURM_TESTS=1 to run them")
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave the machine as the session found it (a SLURM the tests started goes down)."""
    slurm_env = sys.modules.get("slurm_env")
    if slurm_env is not None:
        slurm_env.stop_local_slurm()


@pytest.fixture
def repo() -> Path:
    """The repository root (sweep files live in ``sweeps/``)."""
    return REPO


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def trial_cfg() -> Callable[..., Any]:
    """Build a small digits TrialConfig; keyword args override sections, e.g. ``mixup={...}``."""
    from mixsweep.spec import TrialConfig

    base: dict[str, dict[str, Any]] = {
        "data": {"dataset": "digits", "labeled_fraction": 1.0},
        "model": {"arch": "cnn", "width": 8},
        "train": {
            "epochs": 3,
            "batch_size": 128,
            "lr": 0.05,
            "target_accuracy": 0.9,
            "device": "cpu",
            "checkpoint_seconds": 0,  # every epoch (tests kill after a given epoch)
        },
        "mixup": {"mode": "erm"},
        "linearity": {"probes": 64, "every": 1},
    }

    def make(seed: int = 0, **sections: dict[str, Any]) -> TrialConfig:
        merged = {
            name: {**base.get(name, {}), **sections.get(name, {})} for name in base | sections
        }
        return TrialConfig(seed=seed, **merged)

    return make
