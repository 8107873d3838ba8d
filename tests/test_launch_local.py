"""A local `launch`: its lock comes before anything in the run folder is written; its Ray
listens on loopback only with a fresh token kept out of files; the terminal shows only
mixsweep's lines (Ray's and Tune's go to runs/<sweep>/launch.log); and its progress counts
epochs as --dry-run does."""

from __future__ import annotations

import ipaddress
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_launch import ENV, cli, write_sweep

from mixsweep.store import SweepPaths, read_jsonl

# Ray's and Tune's own notices: never on a launch's terminal
RAY_NOTICES = ("Token authentication", "Tuner.restore", "Stop signal received", "tensorboard",
               "TensorBoard", "Failed to fetch metrics", "Resume experiment with")


def test_refused_second_launch_leaves_spec_yaml_byte_identical(tmp_path: Path) -> None:
    """Before: the second launch rewrote runs/<sweep>/spec.yaml with its own file, then met
    the lock. Now the lock comes first: refused, one line, spec.yaml untouched."""
    first = write_sweep(tmp_path, seeds=[0])
    other = tmp_path / "other"
    other.mkdir()
    second = write_sweep(other, seeds=[0, 1, 2], train__epochs=7)  # same name, another grid
    sweep = SweepPaths.of(tmp_path / "runs", "tiny")
    sweep.root.mkdir(parents=True)
    sweep.spec.write_bytes(b"name: tiny  # the running launch's spec\n")
    before = sweep.spec.read_bytes()
    with sweep.lock():  # the first launch, running
        proc = cli("launch", str(second), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: sweep 'tiny' is already running (launch pid ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sweep.spec.read_bytes() == before
    assert sorted(p.name for p in sweep.root.iterdir()) == [".lock", "spec.yaml"]
    assert first.is_file()


# --------------------------------------------------------------------------- progress counts


class _Trial:
    def __init__(self, trial_id: str):
        self.config = {"trial": _cfg(trial_id)}


def _cfg(trial_id: str) -> dict:
    return {"__id": trial_id}


def test_progress_counts_epochs_as_the_dry_run_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """epochs done/total: epoch 0 (the report at init) counts nothing, a resumed trial's
    repeated report counts once, epochs done before the launch count."""
    from mixsweep import tune

    monkeypatch.setattr(tune, "_trial_name", lambda trial: trial.config["trial"]["__id"])
    seen: list[dict] = []
    counts = tune._Counts(total=2, skipped=0, progress=seen.append, epochs_total=6,
                          done_before={"a": 1, "b": 0})
    a, b = _Trial("a"), _Trial("b")
    for trial, epoch in ((a, 1), (b, 0), (b, 1), (a, 2), (a, 2), (b, 2), (a, 3)):
        counts.on_trial_result(0, [], trial, {"epoch": epoch, "trial_id": "ray's own id"})
    assert [s["epochs"] for s in seen] == [1, 1, 2, 3, 3, 4, 5]
    assert seen[-1]["epochs_total"] == 6
    b_done = tune._Counts(total=1, skipped=1, progress=None, epochs_total=3, done_before={"b": 3})
    assert b_done.counts["epochs"] == 3


# --------------------------------------------------------------------------- a real local launch


def _listening(tree: list[psutil.Process]) -> set[tuple[str, int, str]]:
    out = set()
    for p in tree:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add((c.laddr.ip, c.laddr.port, p.name()))
        except psutil.Error:
            continue
    return out


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _token_and_session(tree: list[psutil.Process]) -> tuple[str | None, Path | None]:
    """The auth token in the environment of the launch's Ray processes, and Ray's session dir."""
    token = session = None
    for p in tree:
        try:
            token = token or p.environ().get("RAY_AUTH_TOKEN")
            found = re.search(r"--session[-_]dir=(\S+)", " ".join(p.cmdline()))
        except psutil.Error:
            continue
        session = session or (Path(found.group(1)) if found else None)
    return token, session


def _files_holding(text: str, *roots: Path) -> list[Path]:
    hits = []
    for root in roots:
        for f in root.rglob("*"):
            try:
                if f.is_file() and f.stat().st_size < 10**8 and text.encode() in f.read_bytes():
                    hits.append(f)
            except OSError:
                continue
    return hits


def _epochs_line(stdout: str) -> str:
    found = re.findall(r"epochs (\d+)/(\d+)", stdout)
    assert found, stdout[-2000:]
    return "/".join(found[-1])


@pytest.mark.slow
def test_local_launch_private_quiet_and_counting_epochs(tmp_path: Path) -> None:
    """One local sweep, stopped by TERM midway and launched again:
    - every socket a Ray process of the launch listens on is loopback (before: the GCS and
      raylet listened on every interface);
    - the token is in the environment of Ray's processes and in no file (not in
      ~/.ray/auth_token, which Ray wrote with mode 0644 before; not in Ray's session dir);
    - stdout/stderr hold mixsweep's lines only; Tune's "Stop signal received" and
      "Tuner.restore(...)" are in runs/tiny/launch.log;
    - the bar's "epochs done/total" ends at --dry-run's "epochs in all" (before: it counted
      Tune reports, epoch 0 and resumed ones included)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**ENV, "HOME": str(home)}
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(key, None)
    path = write_sweep(tmp_path, seeds=[0], train__epochs=8)  # 2 trials, 8 epochs each
    plan = cli("launch", str(path), "--dry-run", cwd=tmp_path, env=env, timeout=120)
    total = int(re.search(r"epochs in all: (\d+)", plan.stdout).group(1))
    assert total == 16

    proc = subprocess.Popen([sys.executable, "-m", "mixsweep.cli", "launch", str(path)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    trials = tmp_path / "runs/tiny/trials"
    deadline = time.monotonic() + 300
    listening: set = set()
    token = session = None
    while time.monotonic() < deadline and proc.poll() is None:
        dirs = list(trials.glob("*")) if trials.is_dir() else []
        epochs = [len(read_jsonl(d / "metrics.jsonl")) for d in dirs]
        if len(epochs) == 2 and min(epochs) >= 2:  # both trials past epoch 1: Ray fully up
            tree = psutil.Process(proc.pid).children(recursive=True)
            listening, (token, session) = _listening(tree), _token_and_session(tree)
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be checked and stopped"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 3, out[-2000:] + err[-2000:]
    assert listening, "no Ray process listened"
    wide = [x for x in listening if not _is_loopback(x[0])]
    assert not wide, wide
    assert err == f"sweep stopped before the end; resume with: mixsweep launch {path}\n", err
    assert not any(n in out + err for n in RAY_NOTICES), out + err
    assert token and len(token) == 64 and session is not None and session.is_dir(), (token, session)
    assert not _files_holding(token, session, tmp_path), "the auth token was written to a file"
    log = (tmp_path / "runs/tiny/launch.log").read_text()
    assert "Stop signal received" in log and "Tuner.restore(" in log

    again = cli("launch", str(path), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stderr == "" and not any(n in again.stdout for n in RAY_NOTICES)
    assert _epochs_line(again.stdout) == f"{total}/{total}"
    assert not (home / ".ray").exists()  # no token file, nothing of Ray's in HOME
