"""`launch --ray-address`: an unreachable address, a cluster with token auth (the token
from ~/.ray/auth_token, a wrong one, none), and a cluster whose nodes are too small are
each one line and exit 2 within a bound, never Ray's retries and tracebacks; a cluster
started the ordinary way (`ray start --head`, token in ~/.ray/auth_token) is joined."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from test_launch import ENV, write_sweep

from mixsweep import ray_access

# what joining must not show: Ray's retry lines and tracebacks
RAY_NOISE = ("InvalidAuthToken", "gcs_client.cc", "Traceback", "Failed to connect", "Tuner.restore")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**ENV, "HOME": str(home), **extra}
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        if key not in extra:
            env.pop(key, None)
    return env


def _launch(path: Path, cwd: Path, env: dict[str, str], *args: str,
            timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mixsweep.cli", "launch", str(path), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert not any(w in proc.stdout + proc.stderr for w in RAY_NOISE), proc.stderr[-3000:]
    return lines[0]


# --------------------------------------------------------------------------- pure parts


def test_split_address() -> None:
    assert ray_access.split_address("10.1.2.3:6379") == ("10.1.2.3", 6379)
    assert ray_access.split_address("[::1]:6379") == ("::1", 6379)
    for bad in ("10.1.2.3", "ray://h:10001", "h:port", ":6379", ""):
        assert ray_access.split_address(bad) is None, bad


def test_token_source_follows_rays_order(tmp_path: Path) -> None:
    assert ray_access.token_source({}, tmp_path) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t")
    assert ray_access.token_source({}, tmp_path) == str(tmp_path / ".ray" / "auth_token")
    assert ray_access.token_source({"RAY_AUTH_TOKEN_PATH": "/x"}, tmp_path) == "RAY_AUTH_TOKEN_PATH (/x)"
    env = {"RAY_AUTH_TOKEN": "abc", "RAY_AUTH_TOKEN_PATH": "/x"}
    assert ray_access.token_source(env, tmp_path) == "RAY_AUTH_TOKEN"


def test_join_env_turns_token_mode_on_only_with_a_token_and_no_mode(tmp_path: Path) -> None:
    assert ray_access.join_env({}, tmp_path) == {}
    assert ray_access.join_env({"RAY_AUTH_TOKEN": "abc"}, tmp_path) == {"RAY_AUTH_MODE": "token"}
    assert ray_access.join_env({"RAY_AUTH_TOKEN": "abc", "RAY_AUTH_MODE": "disabled"}, tmp_path) == {}


def test_token_path_problem(tmp_path: Path) -> None:
    good, empty = tmp_path / "tok", tmp_path / "empty"
    good.write_text("abc\n")
    empty.write_text("")
    assert ray_access.token_path_problem({"RAY_AUTH_TOKEN_PATH": str(good)}) is None
    assert "is empty" in ray_access.token_path_problem({"RAY_AUTH_TOKEN_PATH": str(empty)})
    missing = ray_access.token_path_problem({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "no")})
    assert "cannot be read" in missing and "RAY_AUTH_TOKEN" in missing
    # RAY_AUTH_TOKEN wins over the path (Ray's order): the path is not read
    assert ray_access.token_path_problem({"RAY_AUTH_TOKEN": "x", "RAY_AUTH_TOKEN_PATH": "/no"}) is None


def test_join_failure_lines() -> None:
    auth = "AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing"
    assert "requires an auth token and none is set here" in ray_access.join_failure("h:1", auth, None)
    wrong = ray_access.join_failure("h:1", auth, "RAY_AUTH_TOKEN")
    assert "refused the auth token from RAY_AUTH_TOKEN" in wrong
    other = ray_access.join_failure("h:1", "RpcError: Timed out\n", None)
    assert other.startswith("could not join a Ray cluster at h:1: RpcError: Timed out;")
    for line in (wrong, other):
        assert "\n" not in line


def test_local_env_is_a_fresh_token_each_time() -> None:
    one, two = ray_access.local_env(), ray_access.local_env()
    assert one["RAY_AUTH_MODE"] == "token" and one["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert len(one["RAY_AUTH_TOKEN"]) == 64 and one["RAY_AUTH_TOKEN"] != two["RAY_AUTH_TOKEN"]


# --------------------------------------------------------------------------- unreachable


def test_unreachable_address_is_one_line_within_bounds(tmp_path: Path) -> None:
    """Before: Ray retried a closed port for more than 12 minutes. Now: a TCP probe
    (5 s at most) and one line naming the address; the whole launch well under 60 s."""
    port = _free_port()  # nothing listens there now
    path = write_sweep(tmp_path, seeds=[0], mixup={"mode": "erm"})
    proc, elapsed = _launch(path, tmp_path, _clean_env(tmp_path), "--ray-address",
                            f"127.0.0.1:{port}")
    line = _one_error_line(proc)
    assert f":{port} (--ray-address 127.0.0.1:{port})" in line and "cannot reach a Ray cluster" in line
    assert "Connection refused" in line
    assert elapsed < 60, elapsed
    assert not (tmp_path / "runs" / "tiny" / "results.csv").exists()  # no trial ran


# --------------------------------------------------------------------------- a real head


def _session_procs(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return out


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` the ordinary way, token auth on (its token in ~/.ray/auth_token of a
    temporary HOME), 2 CPUs, no dashboard; stopped (with every process it started) at the end."""
    home = Path(tempfile.mkdtemp(prefix="msh"))
    temp_dir = tempfile.mkdtemp(prefix="msr", dir="/tmp")  # short: Ray's socket paths
    env = _clean_env(home)
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run([*ray_cli, "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=120)
    port = _free_port()
    head = subprocess.Popen([*ray_cli, "start", "--head", "--block", "--num-cpus", "2",
                             "--include-dashboard=false", "--disable-usage-stats",
                             f"--port={port}", f"--temp-dir={temp_dir}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while ray_access.probe("127.0.0.1", port, 1.0) and ray_access.probe(
                socket.gethostbyname(socket.gethostname()), port, 1.0):
            assert head.poll() is None, head.stdout.read()
            assert time.monotonic() < deadline, "ray head did not start"
            time.sleep(0.5)
        time.sleep(3)  # its raylet registers after the GCS listens
        yield {"home": home, "address": f"127.0.0.1:{port}", "token": (home / ".ray/auth_token").read_text()}
    finally:
        sid = head.pid  # its own session: the head and every process Ray started
        with_head = _session_procs(sid)
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes on TERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
        _, alive = psutil.wait_procs(with_head, timeout=30)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_join_with_the_token_in_home_ray_auth_token(ray_head, tmp_path: Path) -> None:
    """Before: 20+ InvalidAuthToken lines and a ConnectionError traceback unless
    RAY_AUTH_MODE=token was set. Ray 2.60 reads ~/.ray/auth_token only for address=auto."""
    path = write_sweep(tmp_path, seeds=[0], mixup={"mode": "erm"}, train__epochs=1)
    proc, _ = _launch(path, tmp_path, _clean_env(ray_head["home"]), "--ray-address",
                      ray_head["address"], "--expect-nodes", "1", "--join-timeout", "30")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr[-3000:]
    assert "ray cluster: 1 of 1 nodes joined" in proc.stdout
    table = pd.read_csv(tmp_path / "runs/tiny/results.csv")
    assert list(table["status"]) == ["completed"]


def test_wrong_token_is_one_line_naming_its_source(ray_head, tmp_path: Path) -> None:
    path = write_sweep(tmp_path, seeds=[0], mixup={"mode": "erm"})
    env = _clean_env(ray_head["home"], RAY_AUTH_TOKEN="0" * 64)
    proc, elapsed = _launch(path, tmp_path, env, "--ray-address", ray_head["address"])
    line = _one_error_line(proc)
    assert "refused the auth token from RAY_AUTH_TOKEN" in line and "ray get-auth-token" in line
    assert "0" * 64 not in line  # the token itself is never printed
    assert elapsed < 60, elapsed
    log = (tmp_path / "runs/tiny/launch.log").read_text()
    assert "InvalidAuthToken" in log  # Ray's own words: in the log, not on the terminal


def test_missing_token_is_one_line_saying_what_to_set(ray_head, tmp_path: Path) -> None:
    path = write_sweep(tmp_path, seeds=[0], mixup={"mode": "erm"})
    proc, elapsed = _launch(path, tmp_path, _clean_env(tmp_path), "--ray-address",
                            ray_head["address"])  # HOME without .ray/auth_token
    line = _one_error_line(proc)
    assert "requires an auth token and none is set here: set RAY_AUTH_TOKEN" in line
    assert "RAY_AUTH_TOKEN_PATH" in line and "~/.ray/auth_token" in line
    assert elapsed < 60, elapsed


def test_token_through_the_environment_as_the_sbatch_job_passes_it(ray_head, tmp_path: Path) -> None:
    """RAY_AUTH_MODE=token + RAY_AUTH_TOKEN (what ray_cluster.sh exports), HOME without a
    token file; nodes too small for a trial: one line naming need and nodes, exit 2."""
    path = write_sweep(tmp_path, seeds=[0], mixup={"mode": "erm"},
                       resources={"cpus_per_trial": 4})
    env = _clean_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_head["token"])
    proc, elapsed = _launch(path, tmp_path, env, "--ray-address", ray_head["address"],
                            "--expect-nodes", "1", "--join-timeout", "30")
    line = _one_error_line(proc)
    assert line.startswith("error: one trial needs 4 CPUs and 0 GPUs but no node of the Ray "
                           "cluster at ") and "(alive nodes: 1 with 2 CPUs and 0 GPUs)" in line
    assert "ray cluster: 1 of 1 nodes joined" in proc.stdout  # checked after the nodes joined
    assert elapsed < 60, elapsed
    assert not (tmp_path / "runs/tiny/trials").exists()  # no trial started
