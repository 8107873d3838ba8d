"""Start the local SLURM of slurm/local-cluster.sh (1 or 3 nodes) for tests, or skip with the reason.

SLURM tests change the system (apt-get install, /etc/slurm, daemons, network
namespaces): they run only with MIXSWEEP_SLURM_TESTS=1 (.ci/run sets it); a plain
``pytest`` skips them without touching anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "local-cluster.sh"
OPT_IN = "MIXSWEEP_SLURM_TESTS"
_session = {"before": None, "started": False}  # the shape found up before the session, if any


def _can_be_root() -> bool:
    if os.geteuid() == 0:
        return True
    sudo = shutil.which("sudo")
    return bool(sudo) and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0


def require_opt_in() -> None:
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"SLURM tests install and start a local SLURM as root: set {OPT_IN}=1 to run them")


def _shared_tmp() -> str:
    """The names under /tmp that every node must see as this machine does (each node has
    its own /tmp): pytest's folders and, where the package or Python lives under /tmp
    (a clone checked out there, as CI may do), their top folder."""
    import getpass
    import sys

    import mixsweep

    names = set(os.environ.get("SLURM_CI_SHARED_TMP", "").split()) | {f"pytest-of-{getpass.getuser()}"}
    for path in (Path(mixsweep.__file__).resolve(), Path(sys.prefix).resolve(), ROOT):
        if len(path.parts) > 2 and path.parts[1] == "tmp":
            names.add(path.parts[2])
    return " ".join(sorted(names))


def start_local_slurm(nodes: int = 1) -> tuple[dict[str, str], bool]:
    """(the export lines as a dict, whether this call (re)started it). Skips when it cannot run."""
    require_opt_in()
    # every later `local-cluster.sh up` of this session (a test restarting a node) binds the same
    os.environ["SLURM_CI_SHARED_TMP"] = _shared_tmp()
    if not _can_be_root():
        pytest.skip("SLURM tests start a local SLURM (slurm/local-cluster.sh): needs root or passwordless sudo")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        pytest.skip("SLURM tests need SLURM installed, or apt-get to install it (Debian/Ubuntu)")
    proc = subprocess.run(["bash", str(SCRIPT), "up", "--nodes", str(nodes)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=900,
                          env={**os.environ, "CI": "true"})
    if proc.returncode != 0:
        pytest.fail(f"slurm/local-cluster.sh --nodes {nodes} failed:\n{proc.stderr[-4000:]}")
    env = {}
    for line in proc.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = value
    already = re.search(r"already up \((\d+) node", proc.stderr)
    if already and not _session["started"] and _session["before"] is None:
        _session["before"] = int(already.group(1))
    started = already is None
    _session["started"] |= started
    _require_empty_queue()
    return env, started


def queued_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%A %T"], capture_output=True, text=True)
    return out.stdout.split("\n")[:-1] if out.returncode == 0 else ["(squeue failed)"]


def _require_empty_queue(timeout: float = 60) -> None:
    """The tests need the node to themselves: wait for jobs already queued, else fail naming them."""
    end = time.monotonic() + timeout
    while (jobs := queued_jobs()) and time.monotonic() < end:
        time.sleep(1)
    if jobs:
        pytest.fail(f"the local SLURM still has jobs after {timeout:.0f} s ({'; '.join(jobs)}); "
                    "the SLURM tests need an idle node")


def stop_local_slurm() -> None:
    """Leave the machine as the session found it: down, or back to the shape that was up."""
    if not _session["started"]:
        return
    args = ["down"] if _session["before"] is None else ["up", "--nodes", str(_session["before"])]
    subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, stdin=subprocess.DEVNULL,
                   timeout=300)
    _session["started"] = False


def squeue_state(job_id: str) -> str | None:
    """The job's state from scontrol (None once SLURM forgot it)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    for token in out.stdout.split():
        if token.startswith("JobState="):
            return token.split("=", 1)[1]
    return None


def wait_for(pred, timeout: float, what: str, every: float = 1.0):
    """Poll pred() until it returns something truthy; fail with `what` after timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _cluster(nodes: int):
    env, started = start_local_slurm(nodes)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {**env, "started_here": "1" if started else ""}  # a cluster the tests may restart
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def local_slurm():
    """The single-node cluster (the machine itself is the node)."""
    yield from _cluster(1)


@pytest.fixture(scope="module")
def local_slurm3():
    """Three nodes (node1..node3), each slurmd in its own network/UTS/mount namespace."""
    yield from _cluster(3)


# the states a job ends in (scontrol shows them until SLURM forgets the job)
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def finished_state(job: str) -> str | None:
    """The job's end state once it has ended, else None (a ``wait_for`` predicate)."""
    state = squeue_state(job)
    return state if state in DONE else None


def job_log(sweep_root: Path, job: str) -> str:
    """The sweep job's log (runs/<sweep>/slurm/slurm-<job>.log, appended across requeues)."""
    return (sweep_root / "slurm" / f"slurm-{job}.log").read_text()


def ray_left(job: str) -> list[str]:
    """Command lines of the processes still using the job's Ray temp dirs (/tmp/ray_<job>_*)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [x for x in out.splitlines() if f"/tmp/ray_{job}_" in x]


def trial_results(trials: Path) -> dict[str, dict]:
    """{trial id: result.json} of the trial folders under ``trials``."""
    return {p.parent.name: json.loads(p.read_text()) for p in trials.glob("*/result.json")}
