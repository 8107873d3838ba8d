"""W&B: one run per trial, offline by default; ``sync`` uploads offline runs.

Run id = ``<sweep_id>-<trial_id>`` (sweep_id: random, made once per sweep folder,
runs/<sweep>/sweep_id), so two sweeps that share a trial never resume each other's
runs, while every relaunch of one sweep continues the same run; name = trial_id,
group = sweep name, job_type = mixup mode, config = the flat TrialConfig. A
resumed trial continues the same run id (``resume="allow"``) and logs each epoch
once (trial.py). Offline runs live in ``runs/<sweep>/wandb/``. ``online`` without
an API key or without a network falls back to offline, saying once how to
``mixsweep sync``. No API key is ever logged or written by mixsweep: wandb finds
it (``wandb login`` / WANDB_API_KEY); mixsweep only checks that one is there.
"""

from __future__ import annotations

import contextlib
import netrc
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from mixsweep.names import WANDB_MODES as MODES
from mixsweep.names import WandbMode
from mixsweep.reach import reach


def _flatten_epoch(rec: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in rec.items() if not isinstance(v, dict)}
    for layer, v in (rec.get("nl") or {}).items():
        out[f"nonlinearity/{layer}"] = v
    for layer, v in (rec.get("cos") or {}).items():
        out[f"cosine/{layer}"] = v
    return out


class TrialRun:
    """The W&B run of one trial (a no-op when mode is 'disabled')."""

    def __init__(self, *, trial_id: str, sweep: str, mode: str, config: dict[str, Any],
                 project: str, entity: str | None, root: Path, sweep_id: str | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown wandb mode {mode!r}; allowed: {', '.join(MODES)}")
        self.run = None
        if mode == "disabled":
            return
        import wandb

        # the sweep's resolved mode (--wandb, else the sweep file) is authoritative in the
        # trial's process; a stray WANDB_MODE from the shell (even an empty one) must not win
        root.mkdir(parents=True, exist_ok=True)
        rid = run_id(sweep_id, trial_id)

        def init(how: WandbMode, **settings: Any) -> Any:
            return wandb.init(
                mode=how, id=rid, name=trial_id, group=sweep, job_type=config.get("mixup.mode"),
                config=config, project=project, entity=entity, dir=str(root), resume="allow",
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, **settings),
            )

        actual = mode
        try:
            os.environ["WANDB_MODE"] = mode
            self.run = init(cast(WandbMode, mode), init_timeout=60)  # checked against MODES
        except Exception as err:  # online and the service went away since launch checked it
            if mode != "online":
                raise
            print(f"W&B online failed ({type(err).__name__}); logging offline: "
                  f"upload later with: mixsweep sync {sweep}", file=sys.stderr, flush=True)
            os.environ["WANDB_MODE"] = actual = "offline"
            self.run = init("offline")

        # the epochs this run already holds: what earlier sessions wrote to their offline files
        # (a SIGKILLed session loses what wandb had not flushed yet), or, online, the steps
        # the server reports for the resumed run
        self.logged: set[int] = set(range(getattr(self.run, "starting_step", 0) or 0))
        if actual == "offline":
            self.logged |= offline_steps(root, self.run.id)

    def log_epoch(self, rec: dict[str, Any]) -> None:
        step = int(rec["epoch"])
        if self.run is not None and step not in self.logged:
            self.run.log(_flatten_epoch(rec), step=step)
            self.logged.add(step)

    def backfill(self, records: Iterable[dict[str, Any]]) -> None:
        """Log the epochs reported before a kill that never reached a W&B file."""
        for rec in sorted(records, key=lambda r: r["epoch"]):
            self.log_epoch(rec)

    def finish(self, result: dict[str, Any] | None = None) -> None:
        if self.run is None:
            return
        if result is not None:
            keys = ("status", "final_acc", "best_acc", "epochs_to_target", "reached_target",
                    "steps_to_target", "seconds_to_target", "train_seconds")
            self.run.summary.update({k: result.get(k) for k in keys})
            for layer, v in (result.get("nonlinearity") or {}).items():
                self.run.summary[f"final_nonlinearity/{layer}"] = v
            for layer, v in (result.get("nl_at_target") or {}).items():
                self.run.summary[f"nonlinearity_at_target/{layer}"] = v
        self.run.finish(exit_code=0 if not result or result.get("status") == "completed" else 1)
        self.run = None


_BLOCK = 32768  # the .wandb file: a LevelDB-style log of protobuf Records


def _records(data: bytes) -> Iterator[bytes]:
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 or pos + 7 + length > len(data):  # padding, or a record cut short
            return
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def offline_steps(sweep_root: Path, run_id: str) -> set[int]:
    """The history steps written to the offline files of run ``run_id`` (all its sessions)."""
    from wandb.proto import wandb_internal_pb2 as pb

    steps: set[int] = set()
    for path in (sweep_root / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if data[:4] != b":W&B":
            continue
        for raw in _records(data):
            rec = pb.Record()  # type: ignore[attr-defined]  # generated protobuf module: no stub
            try:
                rec.ParseFromString(raw)
            except Exception:  # a damaged record: skip it
                continue
            if rec.WhichOneof("record_type") == "history":
                steps.add(rec.history.step.num)
    return steps


def run_id(sweep_id: str | None, trial_id: str) -> str:
    """The W&B run id of a trial: unique per sweep folder, stable across its relaunches."""
    return f"{sweep_id}-{trial_id}" if sweep_id else trial_id


def wandb_version() -> str:
    """Import wandb (only this module does) and return its version; ImportError if it cannot."""
    import wandb

    return str(wandb.__version__)


def online_problem(timeout: float = 5.0) -> str | None:
    """Why W&B online cannot work from here (no API key, no route to the server), or None.

    The key is only looked for (WANDB_API_KEY, else the netrc entry ``wandb login``
    writes), never read out or logged."""
    base = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    url = urlparse(base)
    host = url.hostname or "api.wandb.ai"
    if not os.environ.get("WANDB_API_KEY"):
        try:
            found = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            found = None
        if not found:
            return "no API key: run `wandb login` or set WANDB_API_KEY"
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:  # a port that is not a number
        return f"WANDB_BASE_URL {base!r} is not a URL"
    return reach(host, port, timeout)


def usable_mode(mode: str, sweep: str, say: Callable[[str], None]) -> str:
    """``mode``, or 'offline' when it is 'online' and online cannot work (said once)."""
    if mode != "online":
        return mode
    problem = online_problem()
    if problem is None:
        return mode
    say(f"W&B online is not usable ({problem}); logging offline instead: "
        f"upload later with: mixsweep sync {sweep}")
    return "offline"


def offline_runs(sweep_root: Path) -> list[Path]:
    """Offline run folders of a sweep not yet uploaded."""
    found = sorted((sweep_root / "wandb").glob("offline-run-*"))
    return [p for p in found if not any(p.glob("*.wandb.synced"))]


class SyncError(RuntimeError):
    """``mixsweep sync`` cannot start (no wandb command, no key, no route to W&B)."""


def sync(sweep_root: Path, jobs: int = 8, timeout: float = 600.0) -> list[tuple[Path, bool, str]]:
    """Upload the sweep's offline runs with ``wandb sync``, ``jobs`` at a time.

    Returns (run folder, ok, last line of output) per run. Raises SyncError at once (no
    upload tried) when the ``wandb`` command is missing or W&B cannot be reached. An upload
    that takes more than ``timeout`` seconds is stopped; once one has been stopped with none
    done, the runs not yet started are not tried (the next sync tries them), so a W&B that
    accepts connections and never answers costs one ``timeout``, not one per run.
    """
    import signal
    import threading

    exe = shutil.which("wandb")
    if exe is None:
        raise SyncError("the `wandb` command is not on PATH: install it here (pip install wandb) "
                        "or put its folder on PATH, then run the same command again")
    problem = online_problem()
    if problem is not None:
        raise SyncError(f"cannot upload: {problem}; the offline runs stay in {sweep_root / 'wandb'}: "
                        "run the same command again when W&B is reachable")
    runs = offline_runs(sweep_root)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    done, gave_up = threading.Event(), threading.Event()

    def one(path: Path) -> tuple[Path, bool, str]:
        if gave_up.is_set():
            return path, False, "not tried: the uploads before it got no answer"
        # its own process group: on a timeout the whole group goes (wandb starts helpers
        # that would keep the output pipe open and the wait hanging)
        proc = subprocess.Popen([exe, "sync", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                env=env, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
            if not done.is_set():
                gave_up.set()
            return path, False, f"no answer from W&B within {timeout:g} s (stopped)"
        lines = (out or "").strip().splitlines()
        if proc.returncode == 0:
            done.set()
        return path, proc.returncode == 0, lines[-1] if lines else f"exit {proc.returncode}"

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, runs))
