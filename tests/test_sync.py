"""`mixsweep sync`: uploads every not-yet-synced offline run, in parallel, via `wandb sync`."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml


def _sweep(tmp: Path, runs: list[str], synced: set[str]) -> Path:
    root = tmp / "runs" / "s"
    (root / "wandb").mkdir(parents=True)
    (root / "spec.yaml").write_text(yaml.safe_dump({"name": "s"}))
    for run in runs:
        d = root / "wandb" / f"offline-run-20260101_000000-{run}"
        d.mkdir()
        (d / f"run-{run}.wandb").write_bytes(b":W&B")
        if run in synced:
            (d / f"run-{run}.wandb.synced").touch()
    return root


@pytest.fixture
def wandb_server() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections: sync checks that W&B is reachable
    before it starts (the fake `wandb` below never talks to it)."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        yield srv.getsockname()[1]


def _fake_wandb(tmp: Path, fail_for: str = "", port: int = 0) -> dict[str, str]:
    """A stand-in `wandb` executable that records its arguments (no network here), and an
    API key and a W&B address (a local port) for sync's up-front check."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "wandb"
    exe.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{tmp}/calls.txt"\n'
        f'case "$2" in *{fail_for or "NEVER"}*) echo "error: not logged in" >&2; exit 1;; esac\n'
        'echo "done syncing $2"\n'
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{port}"}


def _run(tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixsweep.cli", "sync", "s", "--jobs", "3"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=60)


def test_sync_uploads_each_unsynced_run_once(tmp_path, wandb_server):
    _sweep(tmp_path, ["aaa", "bbb", "ccc", "ddd"], synced={"bbb"})
    proc = _run(tmp_path, _fake_wandb(tmp_path, port=wandb_server))
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 3 and all(c.startswith("sync ") for c in calls)
    assert sorted(c.rsplit("-", 1)[-1] for c in calls) == ["aaa", "ccc", "ddd"]
    assert "synced 3 of 3 runs" in proc.stdout


def test_sync_reports_failures_with_exit_1(tmp_path, wandb_server):
    _sweep(tmp_path, ["aaa", "bbb"], synced=set())
    proc = _run(tmp_path, _fake_wandb(tmp_path, fail_for="bbb", port=wandb_server))
    assert proc.returncode == 1
    assert "synced 1 of 2 runs" in proc.stdout
    assert "bbb" in proc.stderr and "not logged in" in proc.stderr


def test_sync_unknown_sweep_exit_2(tmp_path):
    proc = _run(tmp_path, dict(os.environ))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no sweep 's'" in proc.stderr
