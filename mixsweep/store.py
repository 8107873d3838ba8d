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

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _umask_mode())  # mkstemp makes 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    # key order kept: layer dicts are in network order
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # here: status and launch --dry-run import this module without torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
        return result if result and result.get("trial_id") == trial_id else None

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
