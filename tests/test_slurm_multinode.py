"""One Ray cluster across the nodes of a real 3-node SLURM (slurm/local-cluster.sh --nodes 3).

Each node is a slurmd in its own network, hostname and mount namespace (node1..node3, a
node-local /tmp) on one machine; the rest of the filesystem is shared, as NFS would be.
The sweeps go through `mixsweep launch` and the real driver: a sweep spreads over the 3
nodes, survives the loss of a node, resumes after a requeue or a time-limit warning, and
two sweeps run side by side without sharing a port. Runs only with MIXSWEEP_SLURM_TESTS=1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from slurm_env import (  # noqa: F401
    SCRIPT,
    finished_state,
    job_log,
    local_slurm3,
    ray_left,
    trial_results,
    wait_for,
)
from wandb_reader import logged_epochs

import mixsweep
from mixsweep import slurm
from mixsweep.spec import parse_spec
from mixsweep.store import SweepPaths, read_jsonl, read_results

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
NODES = ("node1", "node2", "node3")
JOINED3 = re.compile(r"^ray cluster: 3 of 3 nodes joined \(node1, node2, node3; 6 CPUs\)$", re.M)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
           "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "mixsweep.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def _sweep(tmp_path: Path, name: str, *, seeds: list[int], epochs: int, cpus: int = 2,
           max_failures: int = 0, modes: tuple[str, ...] = ("erm", "sup")) -> dict:
    """A digits sweep (modes x seeds) on 3 nodes with `cpus` CPUs each."""
    return {
        "name": name, "runs_dir": str(tmp_path / "runs"),
        "data": {"dataset": "digits", "labeled_fraction": 1.0},
        "model": {"arch": "cnn", "width": 8},
        # checkpoint every epoch: the tests kill or requeue after a given epoch
        "train": {"epochs": epochs, "batch_size": 128, "lr": 0.05, "device": "cpu",
                  "checkpoint_seconds": 0},
        "mixup": {"mode": list(modes), "k": 2, "alpha": 1.0},
        "linearity": {"probes": 64, "every": epochs},
        "seeds": seeds,
        # a trial takes all CPUs of a node: 3 run at once, one on each node
        "resources": {"cpus_per_trial": cpus, "max_concurrent": 3, "max_failures": max_failures},
        "slurm": {"nodes": 3, "cpus_per_node": cpus, "time": "15", "grace_seconds": 60},
    }


@pytest.fixture
def launch(tmp_path, local_slurm3):  # noqa: F811
    """`mixsweep launch` a sweep dict; returns (SweepPaths, job id). Jobs are cancelled after."""
    jobs: list[str] = []

    def go(sweep: dict) -> tuple[SweepPaths, str]:
        path = tmp_path / f"{sweep['name']}.yaml"
        path.write_text(yaml.safe_dump(sweep))
        proc = _cli("launch", str(path), cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        paths = SweepPaths(tmp_path / "runs" / sweep["name"])
        job = (paths.slurm / "job_id").read_text().strip()
        jobs.append(job)
        return paths, job

    go.jobs = jobs
    yield go
    for job in jobs:
        subprocess.run(["scancel", job], capture_output=True)


def _epochs(paths: SweepPaths, trial: str) -> list[int]:
    return [r["epoch"] for r in read_jsonl(paths.trial(trial).root / "metrics.jsonl")]


def _all_trials_once(paths: SweepPaths, n: int, epochs: int) -> dict[str, dict]:
    """Every trial completed exactly once, each epoch in metrics.jsonl and in W&B exactly once."""
    results = trial_results(paths.trials)
    rows = read_results(paths)
    assert len(rows) == n and rows["trial_id"].is_unique and set(rows["status"]) == {"completed"}
    assert len(results) == n and {r["status"] for r in results.values()} == {"completed"}
    for t in results:
        assert _epochs(paths, t) == list(range(epochs + 1)), (t, _epochs(paths, t))
        logged = logged_epochs(paths.root, t)
        assert sorted(logged) == list(range(epochs + 1)), (t, logged)  # each once, none missing
    return results


def _ns_pids(node: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", f"mxsw-{node}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _trials_open_on(node: str, paths: SweepPaths) -> set[str]:
    """Trial ids whose files (W&B run, metrics) a process on `node` has open."""
    ids = set()
    # W&B run folders: offline-run-<time>-<sweep_id>-<trial_id> (sweep_id: 8 hex)
    pattern = re.compile(rf"{re.escape(str(paths.root))}/(?:trials/|wandb/offline-run-[\d_]+-(?:[0-9a-f]{{8}}-)?)([0-9a-f]{{12}})")
    for pid in _ns_pids(node):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if m := pattern.match(target):
                ids.add(m.group(1))
    return ids


def _show(capsys, text: str) -> None:
    """Print into the test log (CI) even when pytest captures output."""
    with capsys.disabled():
        print(f"\n[3-node SLURM] {text}", flush=True)


def test_sweep_spreads_over_three_nodes(launch, tmp_path, capsys):
    """`launch` with slurm: {nodes: 3}: head and 2 workers join, trials run on all 3 nodes,
    each once; status and report read the results. An edited sweep file launched while
    the job runs is refused before it can replace the job's spec.yaml."""
    # 3 trials of 2 CPUs on 3 nodes of 2 CPUs: one trial on each node
    sweep = _sweep(tmp_path, "three", seeds=[0], epochs=2, modes=("erm", "sup", "mt"))
    paths, job = launch(sweep)
    spec_before = paths.spec.read_bytes()
    edited = tmp_path / "three-edited.yaml"
    edited.write_text(yaml.safe_dump({**sweep, "seeds": [0, 1]}))
    again = _cli("launch", str(edited), cwd=tmp_path)
    assert again.returncode == 2 and f"already has SLURM job {job}" in again.stderr, again.stderr
    assert paths.spec.read_bytes() == spec_before

    state = wait_for(lambda: finished_state(job), 400, f"job {job}", every=2)
    log = job_log(paths.root, job)
    assert state == "COMPLETED", log[-4000:]
    joined = JOINED3.search(log)
    assert joined, log[-4000:]
    assert log.count("ray worker on node") == 2 and "failed (exit" not in log
    results = _all_trials_once(paths, 3, 2)
    hosts = Counter(r["provenance"]["host"] for r in results.values())
    assert set(hosts) == set(NODES), hosts
    _show(capsys, f"job {job}: {joined.group(0)}; trials per host (result provenance): "
                  f"{dict(sorted(hosts.items()))}")

    status = _cli("status", "three", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "3 completed / 3 trials" in status.stdout and f"SLURM job {job}: COMPLETED" in status.stdout
    report = _cli("report", str(paths.root), "--out", str(tmp_path / "r.html"), "--figures",
                  "acc_epochs", cwd=tmp_path)
    assert report.returncode == 0 and (tmp_path / "r.html").stat().st_size > 0, report.stderr
    assert not ray_left(job), "a Ray process outlived the job"


def test_node_loss_mid_sweep(launch, tmp_path, capsys):
    """Every process of node3 is killed (slurmd, raylet, trials: the node is gone) while it
    runs a trial. The sweep completes on node1 and node2: the trial continues from its last
    checkpoint elsewhere, none is lost or run twice, epochs stay continuous."""
    epochs = 4
    paths, job = launch(_sweep(tmp_path, "loss", seeds=[0, 1], epochs=epochs, max_failures=2))
    try:
        def trial_with_a_checkpoint_on_node3():
            on3 = _trials_open_on("node3", paths)
            return {t for t in on3 if max(_epochs(paths, t), default=0) >= 1}

        lost = wait_for(trial_with_a_checkpoint_on_node3, 400,
                        "a trial on node3 with a finished epoch", every=0.5)
        lost_at = {t: max(_epochs(paths, t)) for t in lost}
        pids = _ns_pids("node3")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        state = wait_for(lambda: finished_state(job), 500, f"job {job} after losing node3", every=2)
        log = job_log(paths.root, job)
        assert state == "COMPLETED", log[-4000:]
    finally:  # bring node3 back for the next tests
        up = subprocess.run(["bash", str(SCRIPT), "up", "--nodes", "3"], capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=300)
        assert up.returncode == 0, up.stderr
    assert JOINED3.search(log)
    results = _all_trials_once(paths, 4, epochs)
    resumed = {t: r["resumed_from"] for t, r in results.items() if r["resumed_from"]}
    for t in lost:  # continued from its checkpoint (not from scratch), on another node
        assert resumed.get(t) and 1 <= resumed[t][0] <= lost_at[t], (t, resumed.get(t), lost_at[t])
        assert results[t]["provenance"]["host"] in ("node1", "node2")
    assert set(resumed) == lost, resumed  # only the trials of the lost node started over
    _show(capsys, f"node loss, job {job}: killed {len(pids)} processes of node3 while it ran "
                  f"{sorted(lost)} (epochs done: {lost_at}); after: {len(results)} trials, "
                  f"{len(set(results))} unique ids, {len(resumed)} resumed from checkpoints "
                  f"{resumed}, hosts {dict(Counter(r['provenance']['host'] for r in results.values()))}")


@pytest.mark.parametrize("how", ["scontrol requeue", "USR1 (time limit)"])
def test_requeue_mid_sweep_resumes(launch, tmp_path, how, capsys):
    """The 3-node job, mid-sweep, is requeued (scontrol requeue: TERM to every process) or
    gets the time-limit warning (--signal=B:USR1: the script stops the driver and requeues
    itself). The requeued run joins 3 nodes again, resumes, finishes: restart count 1,
    trials finished before are not re-run, the others continue from their checkpoints."""
    epochs = 2
    paths, job = launch(_sweep(tmp_path, "requeue", seeds=[0, 1], epochs=epochs))

    def some_done_some_running():
        done = {t for t, r in trial_results(paths.trials).items() if r["status"] == "completed"}
        running = [t for t in (p.parent.name for p in paths.trials.glob("*/metrics.jsonl"))
                   if t not in done and max(_epochs(paths, t), default=0) >= 1]
        return done if done and running else None

    done = wait_for(some_done_some_running, 400, "a completed and a running trial", every=0.5)
    mtimes = {t: paths.trial(t).result.stat().st_mtime_ns for t in done}
    if how == "scontrol requeue":
        subprocess.run(["scontrol", "requeue", job], check=True)
    else:
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    state = wait_for(lambda: finished_state(job), 500, f"requeued job {job}", every=2)
    log = job_log(paths.root, job)
    assert state == "COMPLETED", log[-4000:]
    assert "restart 0" in log and "restart 1" in log and len(JOINED3.findall(log)) == 2
    if how.startswith("USR1"):
        assert "USR1: time limit or preemption" in log and "==== requeueing job" in log
        assert "driver exited with code 3" in log  # stopped cleanly, resumable
    assert slurm.job_state(paths.root)["restarts"] == 1
    # every epoch in W&B too: a trial's W&B run is finished before its result.json, so a
    # stop between the two reruns the trial from its last checkpoint, finishing the run
    results = _all_trials_once(paths, 4, epochs)
    for t, mtime in mtimes.items():  # finished before the requeue: not run again
        assert paths.trial(t).result.stat().st_mtime_ns == mtime, t
    resumed = {t: r["resumed_from"] for t, r in results.items() if r["resumed_from"]}
    assert resumed and not set(resumed) & set(done), resumed
    _show(capsys, f"{how}, job {job}: {len(done)} trials done before, {len(resumed)} resumed "
                  f"from checkpoints {resumed}, restarts 1")
    assert not ray_left(job), "a Ray process outlived the job"


def _listening_ports(jobs: set[str]) -> dict[str, set[tuple[str, int]]]:
    """{job id: {(node, port)}} of the TCP ports that the jobs' processes listen on, other
    than SLURM's own (srun, slurmstepd), found by each process's SLURM_JOB_ID."""
    found: dict[str, set[tuple[str, int]]] = {j: set() for j in jobs}
    for node in NODES:
        out = subprocess.run(["nsenter", f"--net=/var/run/netns/mxsw-{node}", "ss", "-Htlnp"],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            port = int(line.split()[3].rsplit(":", 1)[1])
            for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
                if name in ("srun", "slurmstepd", "slurmd"):
                    continue
                try:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                job = next((e[13:].decode() for e in env if e.startswith(b"SLURM_JOB_ID=")), None)
                if job in found:
                    found[job].add((node, port))
    return found


def test_two_sweeps_side_by_side_no_port_collision(launch, tmp_path, monkeypatch, capsys):
    """Two 3-node sweeps at once on the same nodes, with job ids equal mod 110 (both prefer
    the same port block): every Ray port of both lies below the ephemeral range (32768+),
    no port is used by both on a node. The second sweep's node3 cannot start Ray: one line
    says so, the driver says 2 of 3 nodes joined, and that sweep completes on the others."""
    a_paths, a = launch(_sweep(tmp_path, "side_a", seeds=[0, 1], epochs=4, cpus=1))
    # hold-and-cancel filler jobs until the next job id equals a's mod 110
    fillers = []
    while True:
        out = subprocess.run(["sbatch", "--parsable", "--hold", "-o", "/dev/null", "--wrap", "true"],
                             capture_output=True, text=True, check=True, cwd=tmp_path)
        fillers.append(out.stdout.strip().split(";")[0])
        if (int(fillers[-1]) + 1) % 110 == int(a) % 110:
            break
        assert len(fillers) < 120
    subprocess.run(["scancel", *fillers], check=True)
    # sweep b: its Python fails to start Ray on node3; the driver waits 10 s for it
    wrapper = tmp_path / "py"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$(hostname)" = node3 ] && [ "$3" = start ] && [ "${4#--address=}" != "$4" ]; then\n'
        '  echo "RuntimeError: no Ray on node3 (test)" >&2; exit 1\nfi\n'
        f'exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIXSWEEP_JOIN_TIMEOUT", "10")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    spec_b = parse_spec(_sweep(tmp_path, "side_b", seeds=[0], epochs=2, cpus=1), "side_b.yaml")
    b_paths = SweepPaths.of(tmp_path / "runs", "side_b")
    b_paths.write_spec(spec_b)
    b = slurm.submit(spec_b, b_paths.spec, python=str(wrapper))
    launch.jobs.append(b)
    assert int(b) % 110 == int(a) % 110, (a, b)

    ports: dict[str, set[tuple[str, int]]] = {a: set(), b: set()}
    both_up = False
    end = time.monotonic() + 500
    while not (finished_state(a) and finished_state(b)) and time.monotonic() < end:
        seen = _listening_ports({a, b})  # sampled while the jobs run
        both_up |= all(any(n == "node1" for n, _ in seen[j]) for j in (a, b))
        for j in (a, b):
            ports[j] |= seen[j]
        time.sleep(1)
    assert finished_state(a) == "COMPLETED", job_log(a_paths.root, a)[-4000:]
    assert finished_state(b) == "COMPLETED", job_log(b_paths.root, b)[-4000:]
    assert both_up, "the two Ray clusters never ran at the same time"
    for j in (a, b):
        assert ports[j] and all(10000 <= p < 32000 for _, p in ports[j]), (j, sorted(ports[j]))
    assert not ports[a] & ports[b], sorted(ports[a] & ports[b])
    log_a, log_b = job_log(a_paths.root, a), job_log(b_paths.root, b)
    head_a = re.search(r"ray head on node1 at \S+:(\d+)", log_a).group(1)
    head_b = re.search(r"ray head on node1 at \S+:(\d+)", log_b).group(1)
    assert head_a != head_b
    assert "ray cluster: 3 of 3 nodes joined (node1, node2, node3; 3 CPUs)" in log_a
    failed = [x for x in log_b.splitlines() if "ray worker on node3 failed" in x]
    assert len(failed) == 1 and "RuntimeError: no Ray on node3 (test)" in failed[0], log_b[-3000:]
    joined_b = re.search(r"^ray cluster: 2 of 3 nodes joined \(node1, node2; 2 CPUs\); 1 did not "
                         r"join within 10 s, the sweep goes on with 2$", log_b, re.M)
    assert joined_b, log_b[-3000:]
    assert "Traceback" not in log_b
    results_b = _all_trials_once(b_paths, 2, 2)
    assert {r["provenance"]["host"] for r in results_b.values()} <= {"node1", "node2"}
    _all_trials_once(a_paths, 4, 4)
    _show(capsys, f"side by side: jobs {a} and {b} (equal mod 110), head ports {head_a} and "
                  f"{head_b}, {len(ports[a])} + {len(ports[b])} listening (node, port) pairs, "
                  f"all in [10000, 32000), none shared; {joined_b.group(0)}; {failed[0].strip()}")


def _submit_with(python: Path, sweep: dict, tmp_path: Path, monkeypatch, launch) -> tuple[SweepPaths, str]:
    """Submit ``sweep`` with ``python`` as the job's interpreter (a per-node wrapper)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    spec = parse_spec(sweep, f"{sweep['name']}.yaml")
    paths = SweepPaths.of(tmp_path / "runs", sweep["name"])
    paths.write_spec(spec)
    job = slurm.submit(spec, paths.spec, python=str(python))
    launch.jobs.append(job)
    return paths, job


def test_preflight_leaves_out_a_node_with_another_mixsweep(launch, tmp_path, monkeypatch, capsys):
    """node3 imports another mixsweep (a copy of the package with another version, first on
    its PYTHONPATH): its preflight reports that version, the head leaves node3 out in one
    line, Ray starts on node1 and node2 only, and the sweep completes there, every trial
    and epoch once."""
    shadow = tmp_path / "shadow"
    shutil.copytree(ROOT / "mixsweep", shadow / "mixsweep",
                    ignore=shutil.ignore_patterns("__pycache__"))
    init = shadow / "mixsweep" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]*"', '__version__ = "0.0.0+other"', init.read_text()))
    wrapper = tmp_path / "py"
    wrapper.write_text("#!/bin/sh\n"
                       f'[ "$(hostname)" = node3 ] && export PYTHONPATH="{shadow}"\n'
                       f'exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    paths, job = _submit_with(wrapper, _sweep(tmp_path, "preflight", seeds=[0, 1], epochs=2),
                              tmp_path, monkeypatch, launch)
    state = wait_for(lambda: finished_state(job), 500, f"job {job}", every=2)
    log = job_log(paths.root, job)
    assert state == "COMPLETED", log[-4000:]
    left_out = [x for x in log.splitlines() if "preflight: node node3 left out" in x]
    assert len(left_out) == 1 and "mixsweep=0.0.0+other" in left_out[0], log[-4000:]
    assert "on the head" in left_out[0] and f"mixsweep={mixsweep.__version__}" in left_out[0]
    assert re.search(r"preflight: 2 of 3 nodes passed \(node1 node2; ", log), log[-4000:]
    assert "ray worker on node3" not in log and "did not join" not in log
    assert re.search(r"^ray cluster: 2 of 2 nodes joined \(node1, node2; 4 CPUs\)$", log, re.M)
    results = _all_trials_once(paths, 4, 2)
    hosts = Counter(r["provenance"]["host"] for r in results.values())
    assert set(hosts) <= {"node1", "node2"}, hosts
    assert not ray_left(job), "a Ray process outlived the job"
    _show(capsys, f"preflight, job {job}: {left_out[0].split('] ', 1)[-1]}; trials per host "
                  f"(result provenance): {dict(sorted(hosts.items()))}")


def test_preflight_head_failure_ends_the_job_at_once(launch, tmp_path, capsys):
    """The sweep's CIFAR-10 is in a folder the login node sees and no compute node does (a
    node-local /tmp): launch accepts it, every node's preflight fails on the data, and the
    job ends at once with one line naming the head and the reason: no Ray, no trial, no
    idle allocation."""
    from test_data import write_cifar10

    data = Path(tempfile.mkdtemp(prefix="mxsw-data-", dir="/tmp"))  # not shared with the nodes
    try:
        write_cifar10(data, np.random.default_rng(0))
        sweep = _sweep(tmp_path, "nodata", seeds=[0], epochs=1, modes=("erm",))
        sweep["data"] = {"dataset": "cifar10", "root": str(data)}
        t0 = time.monotonic()
        paths, job = launch(sweep)
        state = wait_for(lambda: finished_state(job), 300, f"job {job}", every=1)
        took = time.monotonic() - t0
    finally:
        shutil.rmtree(data, ignore_errors=True)
    log = job_log(paths.root, job)
    assert state == "FAILED", log[-4000:]
    head = [x for x in log.splitlines() if "preflight: the head node node1 failed" in x]
    assert len(head) == 1 and "cifar10" in head[0] and "the job ends" in head[0], log[-4000:]
    assert "ray head on" not in log and "driver:" not in log
    assert not paths.trials.exists() or not any(paths.trials.iterdir())
    assert not ray_left(job)
    _show(capsys, f"preflight, job {job}: {head[0].split('] ', 1)[-1]} ({took:.0f} s from "
                  "launch to the job's end)")
