"""The sbatch script on a real single-node SLURM (slurm/local-cluster.sh), with a stand-in driver.

Runs only with MIXSWEEP_SLURM_TESTS=1 (it installs and starts SLURM as root).

The real Ray cluster starts and stops inside the job; the driver is tests/fake_driver.py
(connects to that cluster, runs one task, logs each start). The real sweep driver is
exercised by test_slurm_e2e.py. Skipped when SLURM cannot be started (not root / no apt).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_env import (  # noqa: F401
    SCRIPT,
    finished_state,
    job_log,
    local_slurm,
    queued_jobs,
    ray_left,
    squeue_state,
    wait_for,
)

from mixsweep import slurm
from mixsweep.spec import parse_spec

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
FAKE = Path(__file__).with_name("fake_driver.py")


@pytest.fixture
def sweep(tmp_path, monkeypatch, local_slurm):  # noqa: F811
    """A sweep with a slurm: section whose job runs the fake driver; cancelled afterwards."""
    monkeypatch.chdir(tmp_path)
    cpus = int(local_slurm["SLURM_CI_CPUS"])
    spec = parse_spec({"name": "fake", "runs_dir": str(tmp_path / "runs"),
                       "slurm": {"cpus_per_node": cpus, "time": "10", "grace_seconds": 60}}, "fake.yaml")
    py = tmp_path / "py"
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    py.chmod(0o755)
    root = tmp_path / "runs" / "fake"
    jobs: list[str] = []

    def submit(seconds: float) -> str:
        monkeypatch.setenv("FAKE_DRIVER_SECONDS", str(seconds))
        job = slurm.submit(spec, Path("fake.yaml"), python=str(py))
        jobs.append(job)
        return job

    yield root, submit
    for job in jobs:
        subprocess.run(["scancel", job], capture_output=True)


def _driver_log(root: Path) -> list[str]:
    path = root / "driver.log"
    return path.read_text().splitlines() if path.is_file() else []


def test_job_runs_ray_cluster_and_completes(sweep):
    root, submit = sweep
    job = submit(seconds=1)
    assert (root / "slurm" / "job_id").read_text().strip() == job
    assert (root / "slurm" / "job.sbatch").is_file() and (root / "spec.yaml").is_file()
    assert wait_for(lambda: finished_state(job), 120, f"job {job} to finish") == "COMPLETED"
    lines = _driver_log(root)
    assert lines[0].startswith("start restart=0 nodes=1") and "answer=42" in lines[0]
    assert lines[-1] == "done restart=0"
    info = slurm.job_state(root)
    assert info["state"] == "COMPLETED" and info["job_id"] == job and info["restarts"] == 0
    log = Path(info["log"]).read_text()
    assert log.count("==== start: job") == 1 and "==== end: exit code 0" in log
    assert not ray_left(job), "a Ray process outlived the job"


def test_usr1_stops_and_requeues(sweep):
    """The time-limit warning (USR1 to the batch shell) -> driver stops, job requeues, resumes."""
    root, submit = sweep
    job = submit(seconds=600)
    wait_for(lambda: _driver_log(root), 90, "the driver to start")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    wait_for(lambda: any(x.startswith("start restart=1") for x in _driver_log(root)), 120,
             "the requeued run's driver")
    lines = _driver_log(root)
    assert [x.split()[0] for x in lines] == ["start", "stopped", "start"], lines
    assert slurm.job_state(root)["restarts"] == 1
    log = job_log(root, job)
    assert "restart 0" in log and "restart 1" in log and "==== requeueing job" in log
    assert slurm.cancel(root) == job
    assert wait_for(lambda: finished_state(job), 90, "the cancel") == "CANCELLED"
    assert not ray_left(job), "a Ray process outlived the job"


def test_scontrol_requeue_resumes(sweep):
    root, submit = sweep
    job = submit(seconds=15)
    wait_for(lambda: _driver_log(root), 90, "the driver to start")
    subprocess.run(["scontrol", "requeue", job], check=True)
    assert wait_for(lambda: finished_state(job), 150, "the requeued job to complete") == "COMPLETED"
    lines = _driver_log(root)
    assert [x.split()[0] for x in lines] == ["start", "stopped", "start", "done"], lines
    assert lines[2].startswith("start restart=1")
    assert slurm.job_state(root)["restarts"] == 1


def test_cancel_stops_job(sweep):
    root, submit = sweep
    job = submit(seconds=600)
    wait_for(lambda: _driver_log(root), 90, "the driver to start")
    assert slurm.cancel(root) == job
    assert wait_for(lambda: finished_state(job), 90, "the cancel") == "CANCELLED"
    assert _driver_log(root)[-1] == "stopped restart=0"  # the driver got TERM and stopped
    assert (root / "spec.yaml").is_file()
    assert not ray_left(job), "a Ray process outlived the job"


def _kill9(pidfile: Path) -> None:
    os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


def test_restart_after_killed_daemons_clears_stale_jobs(local_slurm, tmp_path):  # noqa: F811
    """Daemons killed without `down` (machine reset) leave a RUNNING job in the saved state;
    the next `up` must not let it hold the node until its time limit."""
    if not local_slurm["started_here"]:
        pytest.skip("kills the SLURM daemons: only on a cluster this test session started")
    # jobs write their output in tmp_path (sbatch's default: slurm-<id>.out in the cwd)
    out = subprocess.run(["sbatch", "--parsable", "-t", "30", "-o", "/dev/null", "--wrap",
                          "exec sleep 3001"], capture_output=True, text=True, check=True, cwd=tmp_path)
    job = out.stdout.strip().split(";")[0]
    assert wait_for(lambda: squeue_state(job) == "RUNNING", 60, f"job {job} to run")
    run = Path(local_slurm["SLURM_CI_STATE_DIR"]) / "run"
    _kill9(run / "slurmctld.pid")
    _kill9(run / "slurmd.pid")
    subprocess.run(["pkill", "-9", "-f", f"slurmstepd: \\[{job}\\."], capture_output=True)
    subprocess.run(["pkill", "-9", "-f", "sleep 3001"], capture_output=True)
    time.sleep(1)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CI_KEEP_JOBS"}
    up = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300,
                        stdin=subprocess.DEVNULL, env=env)
    assert up.returncode == 0, up.stderr
    assert "dropping any jobs saved by an earlier run" in up.stderr
    assert squeue_state(job) is None and queued_jobs() == []
    out = subprocess.run(["sbatch", "--parsable", "-t", "1", "-o", "/dev/null", "--wrap", "true"],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    fresh = out.stdout.strip().split(";")[0]
    assert wait_for(lambda: finished_state(fresh), 30, f"job {fresh} to run on the freed node") == "COMPLETED"
