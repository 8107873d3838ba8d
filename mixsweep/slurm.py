"""SLURM: render the sbatch script that runs a sweep on a Ray cluster, submit, status, cancel.

The only module that knows sbatch. The script (``render_sbatch``, a pure
function whose signature is its parameter schema) starts a Ray head on the
first node and a worker on each other node of one allocation, runs
``mixsweep launch SPEC --local --ray-address ...`` on the head, and on the
``--signal=B:USR1@grace`` warning stops the driver and Ray cleanly and
requeues itself; the requeued run resumes the sweep from the store.

Files (``runs/<sweep>/slurm/``): ``job.sbatch`` (the rendered script),
``job_id`` (the last submitted job), ``slurm-<jobid>.log`` (its output,
appended across requeues, one ``==== start`` marker per run).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time as _time
from importlib import resources
from pathlib import Path
from typing import Any

from mixsweep.spec import SweepSpec
from mixsweep.store import SweepPaths, atomic_write_text

JOB_FILE = "job.sbatch"
JOB_ID_FILE = "job_id"
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED",
                           "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED",
                           "SIGNALING", "STAGE_OUT"})
# a value on an #SBATCH line: sbatch splits those lines itself (no shell), so
# refuse anything that could end the option or start another one
_SBATCH_VALUE = re.compile(r"^[^\s'\"\\#]+$")


class SlurmError(RuntimeError):
    """A SLURM command failed; the message says what to do next."""


class SlurmNotFound(SlurmError):
    """sbatch/squeue/scancel are not on PATH."""


class SubmitError(SlurmError):
    """sbatch refused the job, or the sweep already has a job in the queue."""


def _sbatch_value(key: str, value: object) -> str:
    text = str(value)
    if not _SBATCH_VALUE.match(text):
        raise SlurmError(
            f"slurm: {key} {text!r} cannot go on an #SBATCH line "
            "(no spaces, quotes, backslashes or '#'); choose another value or path"
        )
    return text


def render_sbatch(
    *,
    job_name: str,
    workdir: str,
    spec_file: str,
    log_dir: str,
    python: str = "python3",
    nodes: int = 1,
    gpus_per_node: int = 0,
    cpus_per_node: int = 2,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    mem: str | None = None,
    time: str = "01:00:00",
    grace_seconds: int = 300,
    setup: tuple[str, ...] | list[str] = (),
    container: str | None = None,
    extra_sbatch: tuple[str, ...] | list[str] = (),
) -> str:
    """The sbatch script: #SBATCH options, quoted settings, the user's setup lines, fixed body.

    Args:
        job_name: SLURM job name. workdir: the driver's cwd (where runs_dir is relative to).
        spec_file: the validated sweep file the driver reads (runs/<sweep>/spec.yaml).
        log_dir: folder of ``slurm-%j.log``. python: interpreter that has mixsweep and ray.
        setup: shell lines run before Ray starts (``module load cuda``), put in verbatim:
            they are the user's own commands. Every other value is shell-quoted.
        container: apptainer image (.sif) to run Ray and the driver in.
        extra_sbatch: further options, one per ``#SBATCH`` line, e.g. ``--constraint=a100``.
    """
    opts = [
        f"--job-name={_sbatch_value('job name', job_name)}",
        f"--nodes={int(nodes)}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={int(cpus_per_node)}",
    ]
    if gpus_per_node:
        opts.append(f"--gres=gpu:{int(gpus_per_node)}")
    for key, value in (("partition", partition), ("account", account), ("qos", qos), ("mem", mem)):
        if value is not None:
            opts.append(f"--{key}={_sbatch_value(key, value)}")
    opts += [
        f"--time={_sbatch_value('time', time)}",
        f"--output={_sbatch_value('log dir', log_dir)}/slurm-%j.log",
        "--open-mode=append",  # a requeued run appends to the same log
        f"--signal=B:USR1@{int(grace_seconds)}",
        "--requeue",
        "--no-kill",  # a failed node ends its Ray worker, not the job: the sweep goes on
    ]
    for opt in extra_sbatch:
        if not opt.startswith("-") or "\n" in opt or "\r" in opt:
            raise SlurmError(f"slurm.extra_sbatch: {opt!r} must be one option starting with '-'")
        opts.append(opt)

    q = shlex.quote
    settings = {
        "SWEEP": job_name,
        "WORKDIR": workdir,
        "SPEC_FILE": spec_file,
        "PYTHON": python,
        "CONTAINER": container or "",
        "NNODES": str(int(nodes)),
        "NUM_CPUS": str(int(cpus_per_node)),
        "NUM_GPUS": str(int(gpus_per_node)),
        "GRACE_SECONDS": str(int(grace_seconds)),
    }
    lines = ["#!/bin/bash", "# Rendered by mixsweep (mixsweep/slurm.py); submit with sbatch."]
    lines += [f"#SBATCH {opt}" for opt in opts]
    # traps and srun call the body's functions, which shellcheck cannot see
    lines += ["# shellcheck disable=SC2317", "", "set -euo pipefail", "", "# --- settings (from the sweep file, shell-quoted)"]
    lines += [f"{key}={q(value)}" for key, value in settings.items()]
    lines += ["", "# --- slurm.setup (the sweep file's own shell lines, verbatim)"]
    lines += list(setup) or [":"]
    body = resources.files("mixsweep").joinpath("templates/ray_cluster.sh").read_text()
    return "\n".join(lines) + "\n\n" + body


def sbatch_script(spec: SweepSpec, workdir: Path | None = None, python: str | None = None) -> str:
    """The script for a sweep with a ``slurm:`` section (paths made absolute)."""
    if spec.slurm is None:
        raise SlurmError(f"sweep {spec.name!r} has no slurm: section; run it with --local")
    s = spec.slurm
    workdir = (workdir or Path.cwd()).resolve()
    sweep = SweepPaths.of(workdir / spec.runs_dir, spec.name)
    if python is None:  # the job uses the Python that submitted it, or the image's
        python = "python3" if s.container else sys.executable
    return render_sbatch(
        job_name=f"mixsweep-{spec.name}",
        workdir=str(workdir),
        spec_file=str(sweep.spec),
        log_dir=str(sweep.slurm),
        python=python,
        nodes=s.nodes,
        gpus_per_node=s.gpus_per_node,
        cpus_per_node=s.cpus_per_node,
        partition=s.partition,
        account=s.account,
        qos=s.qos,
        mem=s.mem,
        time=s.time,
        grace_seconds=s.grace_seconds,
        setup=s.setup,
        container=s.container,
        extra_sbatch=s.extra_sbatch,
    )


# Variables that name a resource of this process only: a job inherits the submitting
# environment (sbatch --export=ALL), and wandb in the job would try this process's
# service socket, which does not exist on the compute nodes, and fail every trial.
PROCESS_LOCAL_ENV = ("WANDB_SERVICE",)


TIMEOUT_S = 60.0  # one SLURM command; a controller that does not answer in a minute is down


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a SLURM command; SlurmError (one line) if it is missing or does not answer in time."""
    missing = SlurmNotFound(
        f"{cmd[0]} not found on PATH: run this on a SLURM login node, start a local one "
        "(sudo bash slurm/local-cluster.sh), or run the sweep here with --local"
    )
    if shutil.which(cmd[0]) is None:
        raise missing
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_LOCAL_ENV}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=TIMEOUT_S, check=False, env=env)
    except FileNotFoundError:  # removed since the lookup
        raise missing from None
    except PermissionError:
        raise SlurmNotFound(f"{cmd[0]} on PATH cannot be run (permission denied): "
                            "fix PATH or the file's mode") from None
    except subprocess.TimeoutExpired:
        after = (" Whether the job was submitted is unknown: look with squeue --me before "
                 "launching again." if cmd[0] == "sbatch" else " Try again when it answers.")
        raise SlurmError(f"{' '.join(cmd[:3])} did not answer within {TIMEOUT_S:g} s: the SLURM "
                         f"controller is down or overloaded (scontrol ping says which).{after}"
                         ) from None


def recorded_job(sweep_root: Path) -> str | None:
    """The id of the sweep's last submitted job, or None; SlurmError if the file holds no id."""
    path = Path(sweep_root) / "slurm" / JOB_ID_FILE
    try:
        text = path.read_bytes().decode(errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError):  # no slurm/ folder: no job was submitted
        return None
    except OSError as err:
        raise SlurmError(f"{path}: cannot be read ({err.strerror}); if this sweep has a job "
                         f"in the queue (squeue --me), cancel it with scancel, then remove {path}"
                         ) from None
    if not text:
        return None
    if not re.fullmatch(r"\d+(_\d+)?", text):
        raise SlurmError(f"{path} holds no SLURM job id ({text[:40]!r}); if this sweep has a "
                         f"job in the queue (squeue --me), cancel it with scancel, then remove {path}")
    return text


def log_file(sweep_root: Path, job_id: str) -> Path:
    return Path(sweep_root) / "slurm" / f"slurm-{job_id}.log"


def submit(spec: SweepSpec, spec_path: Path, dry_run: bool = False,
           python: str | None = None, console: Any = None) -> str | None:
    """Render runs/<sweep>/slurm/job.sbatch, sbatch it, record and return the job id.

    ``spec_path`` is the sweep file the user gave (named in errors). The job's
    driver reads the store's spec.yaml, written here if the caller has not.
    With ``dry_run`` nothing is written or submitted and None is returned (print
    ``sbatch_script(spec)`` to show the script). ``python``: the job's interpreter
    (default: this one, or ``python3`` in slurm.container). ``console`` (rich):
    where to print the script (dry run) or the job id and how to follow it.
    """
    script = sbatch_script(spec, python=python)  # validates the #SBATCH values before anything is written
    if dry_run:
        if console is not None:
            console.print(f"sbatch script for {spec_path} (not submitted):", markup=False)
            console.print(script, markup=False, highlight=False, soft_wrap=True)
        return None
    sweep = SweepPaths.of(Path.cwd().resolve() / spec.runs_dir, spec.name)
    require_no_active_job(spec.name, sweep.root)
    if not sweep.spec.is_file():
        sweep.write_spec(spec)
    job_file = sweep.slurm / JOB_FILE
    atomic_write_text(job_file, script)
    proc = _run(["sbatch", "--parsable", str(job_file)])
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise SubmitError(
            f"sbatch refused {job_file} ({spec_path}): {msg[-1] if msg else 'exit ' + str(proc.returncode)}; "
            "fix the slurm: section (partition, account, time, ...) and launch again"
        )
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SubmitError(f"sbatch printed no job id: {proc.stdout.strip()!r}")
    atomic_write_text(sweep.slurm / JOB_ID_FILE, job_id + "\n")
    if console is not None:
        console.print(follow_hint(spec.name, sweep.root, job_id), markup=False, highlight=False)
    return job_id


def require_no_active_job(name: str, sweep_root: Path, own_job: str | None = None) -> None:
    """Raise SubmitError if the sweep's recorded job is queued or running (and is not ``own_job``).

    ``launch`` calls this before it rewrites runs/<sweep>/spec.yaml: a live job
    re-reads that file when it is requeued, so it must not change under it.
    """
    old = recorded_job(sweep_root)
    if old is None or old == own_job or not shutil.which("squeue"):
        return
    state = job_state(sweep_root)
    if state and state["state"] in ACTIVE_STATES:
        raise SubmitError(
            f"sweep {name!r} already has SLURM job {old} ({state['state']}); "
            f"follow it with: mixsweep status {name}, or stop it with: "
            f"mixsweep cancel {name}"
        )


def follow_hint(name: str, sweep_root: Path, job_id: str) -> str:
    """What to tell the user after a submission."""
    return (f"submitted SLURM job {job_id} for sweep {name} (script: {sweep_root / 'slurm' / JOB_FILE})\n"
            f"  progress: mixsweep status {name} --watch 30\n"
            f"  log:      tail -f {log_file(sweep_root, job_id)}\n"
            f"  stop:     mixsweep cancel {name}")


def _parse_scontrol(line: str) -> dict[str, str]:
    """``Key=value Key2=value with spaces ...`` (scontrol show job -o) -> dict."""
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][\w:/]*)=", line))
    out: dict[str, str] = {}
    for m, nxt in zip(keys, [*keys[1:], None], strict=True):
        end = nxt.start() if nxt else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def job_state(sweep_root: Path) -> dict[str, Any] | None:
    """The recorded job's id, state, reason, nodes, restarts, times and log; None if none.

    Uses ``scontrol show job`` (a finished job stays there for MinJobAge,
    300 s by default), then ``sacct`` when the site has accounting.
    """
    info: dict[str, Any] = {"job_id": "?", "state": "UNKNOWN", "reason": None, "nodes": None,
                            "restarts": None, "run_time": None, "time_limit": None,
                            "log": None, "error": None}
    try:
        job_id = recorded_job(sweep_root)
    except SlurmError as err:  # garbage in slurm/job_id: say so, show the rest
        info["reason"] = info["error"] = str(err)
        return info
    if job_id is None:
        return None
    info.update(job_id=job_id, log=str(log_file(sweep_root, job_id)))
    try:
        return _ask_slurm(job_id, info)
    except SlurmError as err:  # missing commands, a controller that does not answer
        info["reason"] = info["error"] = str(err)
        return info


def _ask_slurm(job_id: str, info: dict[str, Any]) -> dict[str, Any]:
    proc = _run(["scontrol", "show", "job", "-o", job_id])
    if proc.returncode == 0 and proc.stdout.strip():
        d = _parse_scontrol(proc.stdout.strip().splitlines()[0])
        info.update(state=d.get("JobState", "UNKNOWN"), reason=d.get("Reason"),
                    nodes=d.get("NodeList") or None, run_time=d.get("RunTime"),
                    time_limit=d.get("TimeLimit"))
        if d.get("Restarts", "").isdigit():
            info["restarts"] = int(d["Restarts"])
        return info
    if shutil.which("sacct"):
        acct = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,NodeList,Elapsed"])
        fields = acct.stdout.strip().splitlines()[-1].split("|") if acct.stdout.strip() else []
        if acct.returncode == 0 and len(fields) == 3:
            info.update(state=fields[0].split()[0], nodes=fields[1] or None, run_time=fields[2])
            return info
    info["reason"] = "no longer known to SLURM (finished; no accounting to ask)"
    return info


def cancel(sweep_root: Path, timeout: float = 120.0) -> str:
    """Stop the sweep's recorded job in order and return its id; the results stay in the store.

    USR2 to the batch shell makes the script stop the driver (it checkpoints
    and writes results.csv), then Ray, then scancel the job itself. A pending
    job, or one still there after ``timeout`` seconds, gets a plain scancel.
    """
    job_id = recorded_job(sweep_root)
    if job_id is None:
        raise SlurmError(f"no SLURM job recorded in {Path(sweep_root) / 'slurm' / JOB_ID_FILE}: "
                         "nothing to cancel (a --local sweep stops with Ctrl-C)")
    info = job_state(sweep_root) or {}
    if info.get("error"):
        raise SlurmError(f"cannot cancel SLURM job {job_id}: {info['error']}")
    if info.get("state") not in ACTIVE_STATES:
        raise SlurmError(f"SLURM job {job_id} is not queued or running ({info.get('state')}): "
                         "nothing to cancel")
    if info.get("state") == "RUNNING":
        _run(["scancel", "--batch", "--signal=USR2", job_id])
        end = _time.monotonic() + timeout
        while _time.monotonic() < end:
            now = job_state(sweep_root) or {}
            if not now.get("error") and now.get("state") not in ACTIVE_STATES - {"COMPLETING"}:
                return job_id
            _time.sleep(1.0)
    proc = _run(["scancel", job_id])
    if proc.returncode != 0 and "already completing or completed" not in proc.stderr:
        raise SlurmError(f"scancel {job_id} failed: {(proc.stderr or proc.stdout).strip()}")
    return job_id
