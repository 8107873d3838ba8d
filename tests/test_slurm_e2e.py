"""A real sweep through SLURM: `mixsweep launch FILE` -> sbatch -> Ray cluster -> results.

Runs on the single-node SLURM of slurm/local-cluster.sh (started by the fixture; only with
MIXSWEEP_SLURM_TESTS=1, skipped with the reason when it cannot run: not root, no apt-get).
Each test submits a small digits sweep on CPU and waits for the job. Requeue, node loss and
multi-node runs of the real driver: test_slurm_multinode.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from slurm_env import finished_state, job_log, local_slurm, ray_left, wait_for  # noqa: F401

from mixsweep.store import SweepPaths, read_jsonl, read_results

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
           "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "mixsweep.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture
def launch(tmp_path, local_slurm):  # noqa: F811
    """Write a sweep file, `mixsweep launch` it; returns (SweepPaths, job id, n trials)."""
    jobs: list[str] = []

    def go(name: str, seeds: list[int], epochs: int, max_concurrent: int):
        sweep = {
            "name": name, "runs_dir": str(tmp_path / "runs"),
            "data": {"dataset": "digits", "labeled_fraction": 1.0},
            "model": {"arch": "cnn", "width": 8},
            "train": {"epochs": epochs, "batch_size": 128, "lr": 0.05, "device": "cpu"},
            "mixup": {"mode": ["erm", "sup"], "k": 2, "alpha": 1.0},
            "linearity": {"probes": 64, "every": epochs},
            "seeds": seeds,
            "resources": {"cpus_per_trial": 1, "max_concurrent": max_concurrent, "max_failures": 0},
            "slurm": {"nodes": 1, "cpus_per_node": int(local_slurm["SLURM_CI_CPUS"]),
                      "time": "15", "grace_seconds": 60},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(sweep))
        proc = _cli("launch", str(path), cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        paths = SweepPaths(tmp_path / "runs" / name)
        job = (paths.slurm / "job_id").read_text().strip()
        assert f"submitted SLURM job {job}" in proc.stdout
        jobs.append(job)
        return paths, job, 2 * len(seeds)

    yield go
    for job in jobs:
        subprocess.run(["scancel", job], capture_output=True)


def _no_duplicate_epochs(paths: SweepPaths) -> None:
    for metrics in paths.trials.glob("*/metrics.jsonl"):
        epochs = [r["epoch"] for r in read_jsonl(metrics)]
        assert epochs == sorted(set(epochs)), f"{metrics}: epochs {epochs}"


def test_sweep_completes_in_sbatch_job(launch):
    paths, job, n = launch("e2e_ok", seeds=[0, 1], epochs=2, max_concurrent=2)
    state = wait_for(lambda: finished_state(job), 300, f"job {job}", every=2)
    log = job_log(paths.root, job)
    assert state == "COMPLETED", log[-3000:]
    rows = read_results(paths)
    assert len(rows) == n and rows["trial_id"].is_unique and set(rows["status"]) == {"completed"}
    assert log.count("==== start: job") == 1  # one run, no requeue
    assert "ray head on" in log and "==== end: exit code 0" in log
    _no_duplicate_epochs(paths)
    assert not ray_left(job), "a Ray process outlived the job"


def test_cancel_stops_job(launch, tmp_path):
    paths, job, n = launch("e2e_cancel", seeds=[0, 1], epochs=30, max_concurrent=2)
    wait_for(lambda: any(len(read_jsonl(p)) >= 2 for p in paths.trials.glob("*/metrics.jsonl")),
             300, "a trial to finish an epoch", every=0.5)
    proc = _cli("cancel", "e2e_cancel", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 0 and f"cancelled SLURM job {job}" in proc.stdout, proc.stderr
    assert wait_for(lambda: finished_state(job), 120, f"job {job} to stop", every=1) == "CANCELLED"
    assert not ray_left(job), "a Ray process outlived the job"
    status = _cli("status", "e2e_cancel", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert status.returncode == 0 and f"SLURM job {job}: CANCELLED" in status.stdout, status.stderr
    assert yaml.safe_load(paths.spec.read_text())["name"] == "e2e_cancel"
    rows = read_results(paths)  # the driver wrote the table when it stopped
    assert len(rows) == n and not set(rows["status"]) & {"completed"}
