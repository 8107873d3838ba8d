"""`mixsweep launch` on a local Ray: dry-run, bad files, a real sweep, SIGTERM + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from wandb_reader import logged_epochs

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}


def cli(*args: str, cwd: Path, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mixsweep.cli", *args],
        cwd=cwd,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_sweep(tmp: Path, **overrides) -> Path:
    spec = {
        "name": "tiny",
        "data": {"dataset": "digits"},
        "model": {"arch": "cnn", "width": 8},
        "train": {"epochs": 3, "batch_size": 256, "target_accuracy": 0.5, "device": "cpu",
                  "checkpoint_seconds": 0},  # every epoch: tests interrupt after a given one
        "mixup": {"mode": ["erm", "sup"], "k": 2},
        "linearity": {"probes": 64, "every": 2},
        "seeds": [0, 1],
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
    }
    for key, value in overrides.items():
        section, _, sub = key.partition("__")
        if sub:
            spec[section][sub] = value
        else:
            spec[section] = value
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_dry_run_k_points_lists_hundreds_without_ray(tmp_path):
    code = (
        "import sys; from typer.testing import CliRunner; from mixsweep.cli import app;"
        f"r = CliRunner().invoke(app, ['launch', {str(REPO / 'sweeps/k_points.yaml')!r}, '--dry-run']);"
        "print(r.output); assert r.exit_code == 0, r.output;"
        "assert 'ray' not in sys.modules, 'dry-run imported ray'"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "486 trials" in proc.stdout
    assert proc.stdout.count("cifar100") >= 162  # one row per trial
    assert not (tmp_path / "runs").exists()  # nothing written, nothing submitted
    assert elapsed < 60


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"mixup__kk": 3}, "mixup: unknown key 'kk' (did you mean 'k'?)"),
        ({"mixup__k": [1, 2]}, "mixup.k[0]: Input should be greater than or equal to 2"),
        ({"mixup__alpha": 0}, "mixup.alpha[0]: Input should be greater than 0"),
        (
            {"data__labeled_fraction": 1.5},
            "data.labeled_fraction[0]: Input should be less than or equal to 1",
        ),
        ({"data__dataset": "imagenet"}, "data.dataset[0]: Input should be 'cifar10'"),
        ({"model__arch": "vit"}, "model.arch[0]: Input should be 'cnn', 'resnet18' or 'wrn28_2'"),
        ({"seeds": []}, "seeds: must not be empty"),
        ({"mixup__mode": []}, "mixup.mode: must not be empty"),
    ],
)
def test_bad_sweep_files_exit_2_with_one_line(tmp_path, patch, expected):
    proc = cli("launch", str(write_sweep(tmp_path, **patch)), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert any(expected in line for line in lines), proc.stderr
    assert all(line.startswith("error: ") for line in lines)
    assert not (tmp_path / "runs").exists()


def test_missing_cifar_fails_before_anything_starts(tmp_path):
    path = write_sweep(tmp_path, data={"dataset": "cifar10", "root": str(tmp_path / "nodata")})
    proc = cli("launch", str(path), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "cifar10 not found in" in proc.stderr and "data.download" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_download_happens_once_in_launch_before_any_trial(tmp_path, monkeypatch):
    """data.download: the launching process fetches each missing dataset once, up front
    (trials then only read: no concurrent writes, no internet needed on compute nodes)."""
    import numpy as np
    from test_data import write_cifar10
    from typer.testing import CliRunner

    from mixsweep import tune
    from mixsweep.cli import app
    from mixsweep.data import datasets

    root = tmp_path / "data"
    fetched: list[str] = []

    def fake_download(name, where):
        fetched.append(name)
        write_cifar10(Path(where), np.random.default_rng(0))

    seen = {}

    def fake_run_sweep(spec, trials, **kw):
        seen["trials"] = len(trials)
        seen["on_disk"] = (root / "cifar-10-batches-py" / "test_batch").is_file()
        return tune.SweepOutcome(len(trials), len(trials), 0, 0, 0, 0.0)

    monkeypatch.setattr(datasets, "_download", fake_download)
    monkeypatch.setattr(tune, "run_sweep", fake_run_sweep)
    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path, data={"dataset": "cifar10", "root": str(root), "download": True})
    result = CliRunner().invoke(app, ["launch", str(path)])
    assert result.exit_code == 0, result.output
    assert fetched == ["cifar10"] and seen == {"trials": 4, "on_disk": True}
    assert "downloading cifar10 to" in result.output
    result = CliRunner().invoke(app, ["launch", str(path)])  # present now: not fetched again
    assert result.exit_code == 0 and fetched == ["cifar10"]


def test_failed_download_is_one_line_and_starts_nothing(tmp_path, monkeypatch):
    import urllib.error

    from typer.testing import CliRunner

    from mixsweep.cli import app
    from mixsweep.data import datasets

    def no_network(name, where):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(datasets, "_download", no_network)
    path = write_sweep(tmp_path, data={"dataset": "cifar10", "root": str(tmp_path / "d"), "download": True},
                       runs_dir=str(tmp_path / "runs"))
    result = CliRunner().invoke(app, ["launch", str(path)])
    assert result.exit_code == 2
    errors = [x for x in result.output.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "could not download cifar10 into" in errors[0]
    assert "Name or service not known" in errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def _trial_state(runs: Path) -> dict[str, dict]:
    out = {}
    for d in (runs / "tiny" / "trials").glob("*"):
        lines = (
            (d / "metrics.jsonl").read_text().splitlines() if (d / "metrics.jsonl").exists() else []
        )
        out[d.name] = {
            "epochs": [json.loads(x)["epoch"] for x in lines],
            "done": (d / "result.json").exists(),
        }
    return out


@pytest.mark.slow
def test_sigterm_mid_sweep_then_relaunch_completes_without_rerun(tmp_path):
    """Kill the driver with SIGTERM mid-sweep; the same command again finishes the sweep:
    finished trials are not re-run, interrupted ones continue from their last epoch."""
    path = write_sweep(tmp_path, train__epochs=12, seeds=[0, 1, 2])  # 6 trials, 2 at a time
    proc = subprocess.Popen(
        [sys.executable, "-m", "mixsweep.cli", "launch", str(path)],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    runs = tmp_path / "runs"
    deadline = time.time() + 400
    state = {}
    while time.time() < deadline and proc.poll() is None:
        state = _trial_state(runs) if (runs / "tiny" / "trials").exists() else {}
        finished = [t for t, s in state.items() if s["done"]]
        # midway, with epochs still to go: a trial caught at its last epochs may finish
        # before the stop reaches it, and then none would be left interrupted
        midway = [t for t, s in state.items()
                  if not s["done"] and 2 <= max(s["epochs"], default=0) <= 8]
        if finished and midway:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out[-3000:]
    assert "resume with: mixsweep launch" in out

    before = _trial_state(runs)
    done_before = {t for t, s in before.items() if s["done"]}
    partial = {t: max(s["epochs"]) for t, s in before.items() if not s["done"] and s["epochs"]}
    assert done_before and any(e >= 1 for e in partial.values())
    mtimes = {t: (runs / "tiny/trials" / t / "result.json").stat().st_mtime_ns for t in done_before}
    table = pd.read_csv(runs / "tiny/results.csv")
    assert len(table) == 6 and table["trial_id"].is_unique
    assert (table["status"] == "completed").sum() == len(done_before)

    again = cli("launch", str(path), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    table = pd.read_csv(runs / "tiny/results.csv")
    assert len(table) == 6 and table["trial_id"].is_unique
    assert set(table["status"]) == {"completed"}
    for t in done_before:  # not run again
        assert (runs / "tiny/trials" / t / "result.json").stat().st_mtime_ns == mtimes[t]
    for t, s in _trial_state(runs).items():  # every epoch exactly once
        assert s["epochs"] == list(range(13)), (t, s["epochs"])
    for t, epoch in partial.items():  # continued from its checkpoint, not from scratch
        result = json.loads((runs / "tiny/trials" / t / "result.json").read_text())
        # its checkpoint may hold one epoch more than it had reported (killed in between):
        # that epoch is reported on resume, not trained again
        assert result["resumed_from"] in ([epoch], [epoch + 1]), (t, result["resumed_from"])
    # one W&B run per trial: all offline sessions of a trial share its id ...
    run_ids = {p.name.rsplit("-", 1)[-1] for p in (runs / "tiny/wandb").glob("offline-run-*")}
    assert run_ids == set(table["trial_id"])
    # ... and no epoch is logged twice across them (resumed trials log only new epochs)
    for t in table["trial_id"]:
        epochs = logged_epochs(runs / "tiny", t)
        assert len(epochs) == len(set(epochs)), (t, epochs)
        assert set(epochs) <= set(range(13)) and 12 in epochs, (t, epochs)


@pytest.mark.slow
def test_quickstart_sized_launch_and_status(tmp_path):
    path = write_sweep(tmp_path)
    # the sweep file's W&B mode (offline) wins over a stray, even invalid, WANDB_MODE
    proc = cli("launch", str(path), cwd=tmp_path, env={**ENV, "WANDB_MODE": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "runs/tiny/results.csv")
    assert sorted(table["mixup.mode"]) == ["erm", "erm", "sup", "sup"]
    assert set(table["status"]) == {"completed"} and table["trial_id"].is_unique
    assert len(list((tmp_path / "runs/tiny/wandb").glob("offline-run-*"))) == 4
    status = cli("status", "tiny", cwd=tmp_path, timeout=60)
    assert status.returncode == 0 and "4 completed / 4 trials" in status.stdout
    # a relaunch of a finished sweep runs nothing and keeps the table
    again = cli("launch", str(path), cwd=tmp_path)
    assert again.returncode == 0 and "4 already done before this launch" in again.stdout


@pytest.mark.slow
def test_trial_crashing_in_ray_is_recorded_as_error_and_resumable(tmp_path):
    """A worker-side crash (here: an unreadable CIFAR batch) ends as status 'error' with the
    trial's own exception as the reason, and the launch exits 3 (resumable), not 0."""
    root = tmp_path / "data"
    (root / "cifar-10-batches-py").mkdir(parents=True)  # present, so the pre-flight passes
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not a pickle")
    path = write_sweep(tmp_path, data={"dataset": "cifar10", "root": str(root)},
                       mixup={"mode": "erm"}, seeds=[0],
                       resources={"cpus_per_trial": 1, "max_failures": 0})
    proc = cli("launch", str(path), cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "runs/tiny/results.csv")
    assert list(table["status"]) == ["error"]
    assert "DataError" in table["reason"][0] and "data_batch_1" in table["reason"][0]


# `mixsweep launch` with SIGTERM sent at a chosen moment: before Ray is imported (while the
# datasets are checked), inside ray.init (which installs its own TERM handler), or after
# ray.init but before Ray Tune has installed its own stop handler.
EARLY_TERM = r'''
import os, signal, sys
where, spec = sys.argv[1], sys.argv[2]

def term():
    os.kill(os.getpid(), signal.SIGTERM)

if where == "datasets":
    import mixsweep.data.datasets as d
    real_check = d.ensure_available
    def check(*a, **k):
        term()
        return real_check(*a, **k)
    d.ensure_available = check
elif where == "ray.init":
    import ray._private.worker as w
    real_connect = w.connect
    def connect(*a, **k):  # ray.init's own TERM handler (sys.exit) is in place by now
        term()
        return real_connect(*a, **k)
    w.connect = connect
elif where == "fit":
    from ray import tune
    real_fit = tune.Tuner.fit
    def fit(self):
        term()
        return real_fit(self)
    tune.Tuner.fit = fit
from mixsweep.cli import main
sys.argv = ["mixsweep", "launch", spec]
main()
'''


@pytest.mark.parametrize("where", ["datasets", pytest.param("ray.init", marks=pytest.mark.slow),
                                   pytest.param("fit", marks=pytest.mark.slow)])
def test_early_sigterm_stops_cleanly(tmp_path, where):
    """A TERM that reaches the driver before Ray Tune listens (SLURM sends it on requeue or
    preemption whenever it comes) stops the sweep cleanly: exit 3, resumable, no traceback."""
    path = write_sweep(tmp_path, train__epochs=2, seeds=[0])
    proc = subprocess.run([sys.executable, "-c", EARLY_TERM, where, str(path)], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert "resume with: mixsweep launch" in proc.stderr and "Traceback" not in out, out[-3000:]
    table = pd.read_csv(tmp_path / "runs/tiny/results.csv")
    assert len(table) == 2 and "completed" not in set(table["status"])
    assert (tmp_path / "runs/tiny/spec.yaml").is_file()


FAKE_SLURM = {  # a job of the sweep is RUNNING
    "squeue": "#!/bin/sh\nexit 0\n",
    "scontrol": "#!/bin/sh\necho 'JobId=41 JobName=mixsweep-tiny JobState=RUNNING Reason=None "
                "Restarts=0 NodeList=node1'\n",
    "sbatch": "#!/bin/sh\necho 'sbatch must not be called' >&2; exit 1\n",
}


@pytest.mark.parametrize("local", [False, True])
def test_launch_leaves_spec_of_active_job_alone(tmp_path, local):
    """With a job of the sweep still queued or running, `launch` of an edited file refuses
    (one line, exit 2) before it rewrites runs/<sweep>/spec.yaml: the job's next requeue
    re-reads that file. --local is refused too (two drivers would run the same trials)."""
    path = write_sweep(tmp_path, slurm={"time": "10"})
    sweep = tmp_path / "runs" / "tiny"
    (sweep / "slurm").mkdir(parents=True)
    (sweep / "slurm" / "job_id").write_text("41\n")
    (sweep / "spec.yaml").write_text("name: tiny  # what the running job uses\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKE_SLURM.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}"}
    env.pop("SLURM_JOB_ID", None)
    proc = cli("launch", str(path), *(["--local"] if local else []), cwd=tmp_path, env=env,
               timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: sweep 'tiny' already has SLURM job 41 (RUNNING)")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert (sweep / "spec.yaml").read_text() == "name: tiny  # what the running job uses\n"
    # the job's own driver (it runs `launch --local` inside job 41) may go on
    code = ("import sys; from pathlib import Path; from mixsweep.slurm import require_no_active_job;"
            "require_no_active_job('tiny', Path(sys.argv[1]), own_job='41')")
    inside = subprocess.run([sys.executable, "-c", code, str(sweep)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert inside.returncode == 0, inside.stderr


def test_launch_function_dry_run_expands_once_and_writes_nothing(tmp_path, monkeypatch):
    """The Python API: launch(...) is the CLI's function. A dry run returns the expanded
    trials and writes nothing; the grid is expanded exactly once (parse_spec checks its
    rules on the grid's points)."""
    from mixsweep import expand as expand_mod
    from mixsweep import launch as launch_mod

    monkeypatch.chdir(tmp_path)
    calls = []
    real = expand_mod.expand
    monkeypatch.setattr(launch_mod, "expand", lambda spec: calls.append(1) or real(spec))
    res = launch_mod.launch(write_sweep(tmp_path), dry_run=True)
    assert calls == [1]
    assert len(res.trials) == 4 and res.dry_run and res.outcome is None and res.done
    assert res.sweep_dir is None and not (tmp_path / "runs").exists()
    assert {t.mixup.mode for t in res.trials} == {"erm", "sup"}


def test_launch_function_refuses_a_big_grid_without_yes(tmp_path):
    from mixsweep.launch import LaunchError, launch
    from mixsweep.spec_errors import SpecError

    path = write_sweep(tmp_path, seeds=list(range(501)))  # 2 modes x 501 seeds
    with pytest.raises(LaunchError, match="1002 trials is more than 1000") as err:
        launch(path)
    assert isinstance(err.value, SpecError)  # the CLI's user errors: one line, exit 2
    assert launch(path, dry_run=True).trials[-1].seed == 500
    with pytest.raises(LaunchError, match="--wandb must be offline, online or disabled"):
        launch(path, wandb="sometimes", dry_run=True)
