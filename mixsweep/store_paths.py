"""Where a sweep's files live: one object owns every path of a sweep (``SweepPaths``)
and of a trial (``TrialPaths``); the sweep's lock. The layout is in :mod:`mixsweep.store`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixsweep.store_io import atomic_write_text, file_mode, read_json_checked, result_problem


class SweepLocked(RuntimeError):
    """Another launch holds the sweep's lock."""



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
        """The final record, if this folder holds a valid one for ``trial_id`` (else None: the
        trial runs again, from its checkpoint)."""
        return self.read_result_checked(trial_id)[0]

    def read_result_checked(self, trial_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the final record, None), (None, None) when there is none yet, or (None, why) when
        result.json is there but is not a valid record for ``trial_id``."""
        result, why = read_json_checked(self.result)
        if result is None:
            return None, why
        why = result_problem(result, trial_id)
        return (None, why) if why else (result, None)

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
    def rounds(self) -> Path:
        """rounds.json: an adaptive sweep's rounds, decisions and open cells (mixsweep.adaptive)."""
        return self.root / "rounds.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the sweep's lock (flock: the kernel drops it when the process dies, even by
        SIGKILL, so no stale lock outlives a killed launch). Raises SweepLocked if held."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, file_mode())
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
        try:  # garbage (not text, a wrong length) is replaced by a new id below
            current = path.read_bytes().decode(errors="replace").strip() if path.is_file() else ""
        except OSError:
            current = ""
        if len(current) == 8 and current.isascii() and current.isalnum():
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
