"""The results store: one object owns every path of a sweep; atomic writes.

    runs/<sweep>/
      spec.yaml              the sweep file as validated (resolved defaults)
      results.csv            one row per trial id: config + final metrics + status
      trials/<trial_id>/
        config.json          the resolved TrialConfig
        metrics.jsonl        one line per epoch (epoch 0 = at init)
        checkpoint.pt        the last finished epoch (resume point)
        result.json          the final record (status completed | failed)
      slurm/                 job.sbatch, job id, logs (SLURM launches)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class SweepLocked(RuntimeError):
    """Another launch holds the sweep's lock."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:  # type: ignore[no-untyped-def]
    """Temp file in the same folder, fsynced, renamed over ``path``, folder fsynced: a crash
    at any point leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _umask_mode())  # mkstemp makes 0600; results follow the user's umask
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + rename: readers never see half a file."""
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    # key order kept: layer dicts are in network order
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # here: status and launch --dry-run import this module without torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: Path) -> Any | None:
    """A JSON file's object; None if it is missing or not whole JSON (cut short, garbage)."""
    try:
        return json.loads(path.read_bytes().decode())
    except (FileNotFoundError, ValueError):  # ValueError: bad JSON or bad UTF-8
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a line that is not a whole JSON object (a write cut
    short, garbage) ends the read: what follows it cannot be trusted either."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().decode(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            break
        if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
            break
        out.append(rec)
    return out


@dataclass(frozen=True)
class TrialPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def error(self) -> Path:
        """Ray's last error for a trial that crashed past max_failures."""
        return self.root / "error.json"

    def read_result(self, trial_id: str) -> dict[str, Any] | None:
        """The final record, if this folder holds one for ``trial_id`` (else None)."""
        result = read_json(self.result)
        ok = isinstance(result, dict) and result.get("trial_id") == trial_id
        return result if ok and result.get("status") in ("completed", "failed") else None

    def write_metrics(self, history: Iterable[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in history))


@dataclass(frozen=True)
class SweepPaths:
    root: Path  # runs/<sweep>

    @classmethod
    def of(cls, runs_dir: str | Path, name: str) -> SweepPaths:
        return cls(Path(runs_dir) / name)

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def results(self) -> Path:
        return self.root / "results.csv"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the sweep's lock (flock: the kernel drops it when the process dies, even by
        SIGKILL, so no stale lock outlives a killed launch). Raises SweepLocked if held."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, _umask_mode())
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise SweepLocked(f"sweep {self.root.name!r} is already running (launch pid {holder} "
                                  f"holds {self.lock_file}); wait for it or stop it first") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def sweep_id(self) -> str:
        """A random id for this sweep folder, made once and kept: unique per sweep, the same
        for every relaunch of it (the W&B run ids start with it)."""
        path = self.root / "sweep_id"
        current = path.read_text().strip() if path.is_file() else ""
        if len(current) == 8 and current.isalnum():
            return current
        new = secrets.token_hex(4)
        atomic_write_text(path, new + "\n")
        return new

    def write_spec(self, spec: Any) -> None:
        """spec.yaml: the validated sweep (a SweepSpec), what a requeued job re-reads."""
        import yaml

        atomic_write_text(self.spec, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))

    def trial(self, trial_id: str) -> TrialPaths:
        return TrialPaths(self.trials / trial_id)


# --------------------------------------------------------------------------- the results table

STATUS_ORDER = ("completed", "failed", "error", "running", "pending")


def result_row(trial_id: str, config: dict[str, Any], result: dict[str, Any] | None,
               epochs_done: int, status: str) -> dict[str, Any]:
    """One results-table row: config columns, status, final metrics, NL per layer."""
    row: dict[str, Any] = {"trial_id": trial_id, "status": status, "epochs_done": epochs_done}
    row.update(config)
    r = result or {}
    row["reason"] = r.get("reason")
    for key in ("final_acc", "best_acc", "target_accuracy", "reached_target", "epochs_to_target",
                "steps_to_target", "seconds_to_target", "train_seconds", "wall_seconds", "nl_epoch"):
        row[key] = r.get(key)
    for prefix, key in (("nl", "nonlinearity"), ("cos", "cosine"), ("nl_target", "nl_at_target")):
        for layer, v in (r.get(key) or {}).items():
            row[f"{prefix}.{layer}"] = v
    return row


def collect_rows(sweep: SweepPaths, trials: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows for the given TrialConfigs (every expanded trial exactly once), from their folders."""
    rows = []
    for cfg in trials:
        tp = sweep.trial(cfg.trial_id)
        result = tp.read_result(cfg.trial_id)
        history = read_jsonl(tp.metrics)
        epochs = history[-1]["epoch"] if history else 0
        error = read_json(tp.error)
        error = error if isinstance(error, dict) else None
        if result:
            status = result["status"]
        elif error:  # crashed past max_failures in Ray; re-runs (from its checkpoint) on relaunch
            status, result = "error", {"reason": error.get("error")}
        else:
            status = "running" if history else "pending"
        rows.append(result_row(cfg.trial_id, cfg.flat(), result, epochs, status))
    return rows


def write_results(sweep: SweepPaths, rows: list[dict[str, Any]]) -> None:
    """results.csv, atomically: one row per trial id."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    atomic_write_text(sweep.results, frame.to_csv(index=False))


def read_results(sweep: SweepPaths):
    """The results table as a pandas DataFrame (raises FileNotFoundError if absent)."""
    import pandas as pd

    return pd.read_csv(sweep.results)


def current_results(sweep: SweepPaths):
    """The results table as it stands now, rebuilt from the trial folders (the source of truth).

    results.csv is rewritten by each launch; a job killed outright (scancel, a node failure)
    can leave it behind its trials. When spec.yaml cannot be read as a sweep (another
    version's store), results.csv is read as is. Same dtypes as read_results (CSV round trip).
    """
    import io

    import pandas as pd

    from mixsweep.spec import SpecError, expand, load_spec

    try:
        trials = expand(load_spec(sweep.spec))
    except SpecError:
        return read_results(sweep)
    frame = pd.DataFrame(collect_rows(sweep, trials))
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))
