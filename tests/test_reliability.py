"""Faults done for real (real processes, real files, a local Ray): a trial worker and the
launch process SIGKILLed, two launches of one sweep, corrupt trial files, a full disk and
an unwritable run folder, W&B online without a key or a network, a non-finite loss; and the
security rules (no API key written anywhere, no dashboard port, the user's umask)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
from test_launch import ENV, cli, write_sweep
from wandb_reader import logged_epochs

from mixsweep.store import SweepPaths, TrialPaths, atomic_torch_save, read_jsonl
from mixsweep.trial import run_trial

REPO = Path(__file__).resolve().parents[1]
SYSTEM = os.environ.get("MIXSWEEP_SYSTEM_TESTS") == "1"


def launch_proc(path: Path, cwd: Path, *args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mixsweep.cli", "launch", str(path), *args],
                            cwd=cwd, env=env or ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def epochs_of(trial_dir: Path) -> list[int]:
    return [r["epoch"] for r in read_jsonl(trial_dir / "metrics.jsonl")]


def wait_for(cond, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError("launch ended early:\n" + proc.stdout.read()[-3000:])
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def wandb_ids(sweep_root: Path) -> set[str]:
    """The W&B run ids of a sweep's offline runs (from their run-<id>.wandb files)."""
    return {f.name[4:-6] for f in (sweep_root / "wandb").glob("offline-run-*/run-*.wandb")}


def trial_dirs(runs: Path, name: str = "tiny") -> list[Path]:
    root = runs / name / "trials"
    return sorted(root.iterdir()) if root.is_dir() else []


def assert_complete_once(runs: Path, n: int, epochs: int, name: str = "tiny") -> pd.DataFrame:
    """Every trial completed, one row each, every epoch in metrics and in W&B exactly once."""
    table = pd.read_csv(runs / name / "results.csv")
    assert len(table) == n and table["trial_id"].is_unique, table
    assert set(table["status"]) == {"completed"}, table[["trial_id", "status", "reason"]]
    for t in table["trial_id"]:
        assert epochs_of(runs / name / "trials" / t) == list(range(epochs + 1)), t
        logged = logged_epochs(runs / name, t)
        assert sorted(logged) == list(range(epochs + 1)), (t, logged)  # each once, none missing
    leftovers = [p for p in (runs / name).rglob("*.tmp")]
    assert not leftovers, leftovers
    return table


# --------------------------------------------------------------------------- faults with Ray


@pytest.mark.slow
def test_worker_sigkilled_mid_epoch_is_retried_from_its_checkpoint(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, train__epochs=20, train__checkpoint_seconds=0,
                       mixup={"mode": "erm"}, seeds=[0],
                       resources={"cpus_per_trial": 1, "max_failures": 2})
    proc = launch_proc(path, tmp_path)
    runs = tmp_path / "runs"
    wait_for(lambda: trial_dirs(runs) and len(epochs_of(trial_dirs(runs)[0])) >= 4, proc)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "ImplicitFunc" in " ".join(p.cmdline()) or p.name().startswith("ray::Impl")]
    assert len(workers) == 1, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
    trial = trial_dirs(runs)[0]
    time.sleep(0.15)  # inside an epoch
    before = max(epochs_of(trial))
    workers[0].send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    assert_complete_once(runs, 1, 20)
    result = json.loads((trial / "result.json").read_text())
    # retried from its last checkpoint (an epoch at or after the one seen before the kill)
    assert len(result["resumed_from"]) == 1 and result["resumed_from"][0] >= before >= 3, result
    assert not (trial / "error.json").exists()


@pytest.mark.slow
def test_launch_sigkilled_then_same_command_resumes(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, train__epochs=30, train__checkpoint_seconds=0, seeds=[0, 1, 2])
    proc = launch_proc(path, tmp_path)
    runs = tmp_path / "runs"

    def one_done_one_early() -> bool:
        # The first two trials run side by side and end together, so a trial "midway" when
        # one is done may be a few steps from its own end and finish before the kill lands.
        # Kill while a trial of the next pair is early (epoch 1 to 9 of 30): it has a
        # checkpoint and cannot finish in the moment before the kill.
        dirs = trial_dirs(runs)
        done = [d for d in dirs if (d / "result.json").exists()]
        early = [d for d in dirs
                 if not (d / "result.json").exists() and 2 <= len(epochs_of(d)) <= 10]
        return bool(done and early)

    wait_for(one_done_one_early, proc)
    tree = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)  # no clean stop: no results.csv rewrite, no Ray shutdown
    proc.communicate(timeout=60)
    # no orphan keeps training or writing the trials (Ray's raylet and workers die with the
    # driver; its dashboard/runtime-env agents notice later: checked at the end)
    writers = [p for p in tree if "Agent" not in p.name()]
    _, alive = psutil.wait_procs(writers, timeout=60)
    assert not alive, [p.cmdline()[:2] for p in alive]
    done_before = {d.name: (d / "result.json").stat().st_mtime_ns
                   for d in trial_dirs(runs) if (d / "result.json").exists()}
    partial = {d.name: max(epochs_of(d)) for d in trial_dirs(runs)
               if not (d / "result.json").exists() and epochs_of(d)}
    assert done_before and partial

    again = cli("launch", str(path), cwd=tmp_path)  # a stale Ray session must not block it
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{len(done_before)} already done before this launch" in again.stdout
    table = assert_complete_once(runs, 6, 30)
    for t, mtime in done_before.items():  # finished trials were not run again
        assert (runs / "tiny/trials" / t / "result.json").stat().st_mtime_ns == mtime
    for t, epoch in partial.items():  # interrupted ones went on from their checkpoint
        resumed = json.loads((runs / "tiny/trials" / t / "result.json").read_text())["resumed_from"]
        assert resumed and resumed[0] >= epoch - 1, (t, epoch, resumed)
    # one W&B run id per trial across both launches, unique to this sweep
    sweep_id = (runs / "tiny/sweep_id").read_text().strip()
    assert wandb_ids(runs / "tiny") == {f"{sweep_id}-{t}" for t in table["trial_id"]}
    _, alive = psutil.wait_procs(tree, timeout=180)
    assert not alive, [p.cmdline()[:2] for p in alive]  # nothing of the killed launch is left


@pytest.mark.slow
def test_second_launch_of_a_running_sweep_refuses(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, train__epochs=40, train__checkpoint_seconds=0, seeds=[0])
    first = launch_proc(path, tmp_path)
    runs = tmp_path / "runs"
    wait_for(lambda: any(epochs_of(d) for d in trial_dirs(runs)), first)
    second = cli("launch", str(path), cwd=tmp_path, timeout=120)
    assert second.returncode == 2, second.stdout + second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "sweep 'tiny' is already running" in lines[0], lines
    assert f"launch pid {first.pid}" in lines[0]
    out, _ = first.communicate(timeout=400)
    assert first.returncode == 0, out[-3000:]
    assert_complete_once(runs, 2, 40)


@pytest.mark.slow
def test_non_finite_loss_fails_once_and_shows_failed(tmp_path: Path) -> None:
    """One trial's loss goes NaN: failed with epoch and step, not retried (retrying a
    deterministic NaN cannot help; at most max_failures), shown failed by status and report.
    The sweep runs with a fake WANDB_API_KEY set: it is written nowhere."""
    key = "fake0123456789abcdef0123456789abcdef012345"
    path = write_sweep(tmp_path, train__epochs=3, train__lr=[0.05, 1e30],
                       mixup={"mode": "erm"}, seeds=[0],
                       resources={"cpus_per_trial": 1, "max_failures": 2})
    proc = cli("launch", str(path), cwd=tmp_path, env={**ENV, "WANDB_API_KEY": key})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = tmp_path / "runs"
    table = pd.read_csv(runs / "tiny/results.csv")
    assert sorted(table["status"]) == ["completed", "failed"]
    bad = table[table["status"] == "failed"].iloc[0]
    assert "non-finite loss" in bad["reason"] and "at epoch 1 step " in bad["reason"]
    result = json.loads((runs / "tiny/trials" / bad["trial_id"] / "result.json").read_text())
    assert result["resumed_from"] == []  # ran once
    assert len(list((runs / "tiny/wandb").glob(f"offline-run-*-{bad['trial_id']}"))) == 1
    status = cli("status", "tiny", cwd=tmp_path, timeout=120)
    assert "1 completed, 1 failed / 2 trials" in status.stdout, status.stdout
    report = cli("report", str(runs / "tiny"), "--out", str(tmp_path / "r.html"), cwd=tmp_path,
                 timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "2 trials (1 completed, 1 failed)" in (tmp_path / "r.html").read_text()
    # security: the key is in no file of the sweep (configs, metrics, W&B runs, logs) ...
    slurm_path = write_sweep(tmp_path, slurm={"partition": "gpu"})
    dry = cli("launch", str(slurm_path), "--dry-run", cwd=tmp_path,
              env={**ENV, "WANDB_API_KEY": key}, timeout=120)
    assert dry.returncode == 0 and "#SBATCH" in dry.stdout, dry.stdout + dry.stderr
    for out in (proc.stdout, proc.stderr, status.stdout, report.stdout, dry.stdout, dry.stderr):
        assert key not in out  # ... nor in any output, the sbatch script included
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 20
    hits = [p for p in files if key.encode() in p.read_bytes()]
    assert hits == []


@pytest.mark.slow
def test_wandb_online_without_key_runs_offline_and_says_once(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, train__epochs=2, mixup={"mode": "erm"}, seeds=[0, 1])
    env = {k: v for k, v in ENV.items() if k not in ("WANDB_API_KEY", "NETRC")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc: no key anywhere
    proc = cli("launch", str(path), "--wandb", "online", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = (proc.stdout + proc.stderr).count("upload later with: mixsweep sync tiny")
    assert said == 1, proc.stdout + proc.stderr
    assert "no API key" in proc.stdout
    assert_complete_once(tmp_path / "runs", 2, 2)
    assert len(list((tmp_path / "runs/tiny/wandb").glob("offline-run-*"))) == 2


def test_wandb_online_without_network_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    from mixsweep.tracking import online_problem, usable_mode

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "fake")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    assert f"cannot reach 127.0.0.1:{port}" in online_problem()
    said: list[str] = []
    assert usable_mode("online", "q", said.append) == "offline"
    assert usable_mode("offline", "q", said.append) == "offline" and len(said) == 1
    assert "mixsweep sync q" in said[0]


# --------------------------------------------------------------------------- disk full, read-only


def _mount_tmpfs(where: Path, size: str, ro: bool = False) -> None:
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:  # e.g. a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM, reason="mounts a tmpfs: set MIXSWEEP_SYSTEM_TESTS=1 (root)")
def test_disk_full_mid_sweep_then_resume(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    _mount_tmpfs(vol, "64m")
    try:
        path = write_sweep(tmp_path, train__epochs=12, train__checkpoint_seconds=0, seeds=[0],
                           resources={"cpus_per_trial": 1, "max_failures": 1},
                           runs_dir=str(vol / "runs"))
        proc = launch_proc(path, tmp_path)
        runs = vol / "runs"
        wait_for(lambda: any(len(epochs_of(d)) >= 3 for d in trial_dirs(runs)), proc)
        filler = vol / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill the disk to the last byte
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
            except OSError:
                pass
        out, _ = proc.communicate(timeout=400)
        # one line at the end (Ray logs each failed trial attempt above it, its own way)
        lines = [x for x in out.splitlines() if x.startswith("error:")]
        assert proc.returncode == 2, out[-3000:]
        assert len(lines) == 1 and "No space left on device" in lines[0], out[-3000:]
        assert out.rstrip().splitlines()[-1] == lines[0], out[-3000:]
        # nothing of ours half-written: every trial file parses, every checkpoint loads (Ray's
        # own state under ray/ may be cut short: mixsweep never reads it back)
        for p in (runs / "tiny/trials").rglob("*.json"):
            json.loads(p.read_text())
        for p in (runs / "tiny/trials").rglob("metrics.jsonl"):
            assert all(json.loads(x) for x in p.read_text().splitlines())
        assert not list(runs.rglob(".*.tmp"))
        for p in runs.rglob("checkpoint.pt"):
            torch.load(p, weights_only=True)
        filler.unlink()  # space freed: the same command finishes the sweep
        again = cli("launch", str(path), cwd=tmp_path)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert_complete_once(runs, 2, 12)
    finally:
        subprocess.run(["umount", "-l", str(vol)], check=False)


def _unwritable(tmp_path: Path) -> tuple[Path, callable]:
    runs = tmp_path / "runs"
    if SYSTEM:
        _mount_tmpfs(runs, "1m", ro=True)
        return runs, lambda: subprocess.run(["umount", "-l", str(runs)], check=False)
    runs.mkdir()
    runs.chmod(0o500)
    return runs, lambda: runs.chmod(0o700)


@pytest.mark.skipif(os.geteuid() == 0 and not SYSTEM,
                    reason="root writes anywhere: needs MIXSWEEP_SYSTEM_TESTS=1 (read-only mount)")
def test_unwritable_runs_dir_is_one_line(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, train__epochs=1, seeds=[0])
    runs, restore = _unwritable(tmp_path)
    try:
        proc = cli("launch", str(path), cwd=tmp_path, timeout=120)
    finally:
        restore()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write"), lines
    assert ("Read-only file system" in lines[0]) or ("Permission denied" in lines[0])
    assert "run the same command again" in lines[0]
    assert not list(runs.glob("*"))  # nothing half-written


# --------------------------------------------------------------------------- corrupt state


def _kill_after(epoch: int):
    def report(rec):
        if rec["epoch"] == epoch:
            raise KeyboardInterrupt

    return report


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_starts_over_saying_so_once(trial_cfg, tmp_path: Path, damage: str,
                                                      capfd) -> None:
    cfg = trial_cfg(model={"width": 4}, train={"epochs": 3}, linearity={"probes": 16, "every": 1})
    ref = run_trial(cfg, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, tmp_path / "t", _kill_after(2))
    ck = TrialPaths(tmp_path / "t").checkpoint
    data = ck.read_bytes()
    ck.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096),
                    "empty": b""}[damage])
    seen: list[int] = []
    res = run_trial(cfg, tmp_path / "t", lambda r: seen.append(r["epoch"]))
    err = capfd.readouterr().err
    assert err.count("checkpoint.pt was unreadable") == 1 and "starting over from epoch 0" in err
    assert res["status"] == "completed" and res["notes"] and res["resumed_from"] == []
    assert seen == [2, 3]  # epochs 0-1 were reported before the kill: not again
    assert [r["epoch"] for r in read_jsonl(tmp_path / "t/metrics.jsonl")] == [0, 1, 2, 3]
    assert res["final_acc"] == ref["final_acc"]  # the same training, from scratch
    assert (tmp_path / "t/checkpoint.pt.corrupt").exists()
    again = run_trial(cfg, tmp_path / "t")  # completed: said nothing more
    assert again["final_acc"] == res["final_acc"]
    assert "unreadable" not in capfd.readouterr().err


def test_corrupt_result_and_metrics_are_recomputed(trial_cfg, tmp_path: Path) -> None:
    cfg = trial_cfg(model={"width": 4}, train={"epochs": 2}, linearity={"probes": 16, "every": 1})
    first = run_trial(cfg, tmp_path / "t")
    paths = TrialPaths(tmp_path / "t")
    for garbage in (b'{"trial_id": "' + cfg.trial_id.encode() + b'", "stat', os.urandom(64),
                    b"[1, 2]"):
        paths.result.write_bytes(garbage)
        lines = paths.metrics.read_bytes().splitlines(keepends=True)
        paths.metrics.write_bytes(b"".join(lines[:-1]) + lines[-1][:7])  # a cut last line
        assert [r["epoch"] for r in read_jsonl(paths.metrics)] == [0, 1]
        res = run_trial(cfg, tmp_path / "t")  # goes on from its checkpoint: nothing re-trained
        assert res["status"] == "completed" and res["final_acc"] == first["final_acc"]
        assert [r["epoch"] for r in read_jsonl(paths.metrics)] == [0, 1, 2]
        assert json.loads(paths.result.read_text())["trial_id"] == cfg.trial_id


def test_status_reads_garbage_trial_files(tmp_path: Path, trial_cfg) -> None:
    from mixsweep.expand import expand
    from mixsweep.spec_yaml import load_spec
    from mixsweep.store import collect_rows

    path = write_sweep(tmp_path, seeds=[0], mixup={"mode": "erm"}, runs_dir=str(tmp_path / "runs"))
    spec = load_spec(path)
    (cfg,) = expand(spec)
    sweep = SweepPaths.of(spec.runs_dir, spec.name)
    tp = sweep.trial(cfg.trial_id)
    tp.root.mkdir(parents=True)
    tp.metrics.write_bytes(b'{"epoch": 0, "test_acc": 0.1}\n{"epoch": 1, "te')
    tp.result.write_bytes(b"\xff\xfe garbage")
    tp.error.write_bytes(b"[]")
    (row,) = collect_rows(sweep, [cfg])
    assert row["status"] == "unreadable" and row["epochs_done"] == 0
    assert row["reason"] == "result.json is not JSON"


def test_resume_after_sparse_checkpoints_is_exact(trial_cfg, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint_seconds > 0: killed between checkpoints, the trial redoes the epochs after
    its last checkpoint and ends bit-identical to an uninterrupted run; no epoch reported twice."""
    from mixsweep import trial as trial_mod

    clock = {"t": 0.0}
    monkeypatch.setattr(trial_mod.time, "monotonic", lambda: clock["t"])
    base = {"model": {"width": 4}, "linearity": {"probes": 16, "every": 1}}
    cfg = trial_cfg(train={"epochs": 6, "checkpoint_seconds": 2.5}, **base)
    run_trial(cfg, tmp_path / "ref")
    saves: list[int] = []
    real_save = trial_mod.atomic_torch_save

    def counting(path, obj):
        saves.append(obj["history"][-1]["epoch"])
        real_save(path, obj)

    monkeypatch.setattr(trial_mod, "atomic_torch_save", counting)

    def tick_and_kill(rec):
        clock["t"] += 1.0  # each epoch "takes" one second
        if rec["epoch"] == 5:  # killed while reporting epoch 5
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, tmp_path / "t", tick_and_kill)
    assert saves == [3]  # one checkpoint in 6 epochs (every 2.5 s), not 6
    seen: list[int] = []
    res = run_trial(cfg, tmp_path / "t", lambda r: (seen.append(r["epoch"]),
                                                    clock.__setitem__("t", clock["t"] + 1)))
    assert res["resumed_from"] == [3]
    # epochs 4 and 5 were trained again; 4 had been reported (not twice), 5 had not
    assert seen == [5, 6]
    a = [{k: v for k, v in r.items() if k != "train_seconds"} for r in read_jsonl(tmp_path / "ref/metrics.jsonl")]
    b = [{k: v for k, v in r.items() if k != "train_seconds"} for r in read_jsonl(tmp_path / "t/metrics.jsonl")]
    assert a == b
    ca = torch.load(tmp_path / "ref/checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "t/checkpoint.pt", weights_only=True)
    assert all(torch.equal(v, cb["model"][k]) for k, v in ca["model"].items())


# --------------------------------------------------------------------------- security, identity


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_torch_save(tmp_path / "d" / "checkpoint.pt", {"w": torch.zeros(2)})
        SweepPaths(tmp_path / "s").lock_file.parent.mkdir()
    finally:
        os.umask(old)
    assert (tmp_path / "d/checkpoint.pt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o777 & ~umask


def test_sweep_id_unique_per_sweep_and_stable(tmp_path: Path) -> None:
    from mixsweep.tracking import run_id

    a, b = SweepPaths(tmp_path / "quickstart"), SweepPaths(tmp_path / "copy" / "quickstart")
    ida, idb = a.sweep_id(), b.sweep_id()
    assert ida != idb and a.sweep_id() == ida and SweepPaths(a.root).sweep_id() == ida
    assert run_id(ida, "0123456789ab") == f"{ida}-0123456789ab" != run_id(idb, "0123456789ab")


def test_wandb_run_ids_differ_between_sweeps_sharing_a_trial(tmp_path: Path) -> None:
    from mixsweep.tracking import TrialRun

    for name in ("one", "two"):
        sweep = SweepPaths(tmp_path / name)
        for _ in range(2):  # a relaunch continues the same run
            run = TrialRun(trial_id="0123456789ab", sweep=name, mode="offline", config={},
                           project="p", entity=None, root=sweep.root, sweep_id=sweep.sweep_id())
            run.finish()
    one, two = wandb_ids(tmp_path / "one"), wandb_ids(tmp_path / "two")
    assert len(one) == len(two) == 1 and one != two
    assert one.pop().endswith("-0123456789ab")


def test_ray_dashboard_binds_no_port(tmp_path: Path) -> None:
    code = """
import time, psutil, ray
from mixsweep.tune import init_ray
init_ray(None, 1)
time.sleep(5)
tree = psutil.Process().children(recursive=True)
head = [p for p in tree if "dashboard/dashboard.py" in " ".join(p.cmdline())]
listening = [c.laddr for p in head for c in p.net_connections() if c.status == "LISTEN"]
ui = [c.laddr for p in tree for c in p.net_connections()
      if c.status == "LISTEN" and c.laddr.port == 8265]
print("dashboard head processes", len(head), "listening", listening, "port 8265", ui)
ray.shutdown()
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "listening [] port 8265 []" in proc.stdout, proc.stdout
