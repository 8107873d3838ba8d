"""W&B: one run per trial, offline by default; ``sync`` uploads offline runs.

Run id = trial_id, group = sweep name, job_type = mixup mode, config = the flat
TrialConfig. A resumed trial continues the same run id (``resume="allow"``) and
logs only the epochs after its checkpoint, so no epoch is logged twice. Offline
runs live in ``runs/<sweep>/wandb/``. No API key is ever read, logged or written
by mixsweep: wandb itself finds it (``wandb login`` / WANDB_API_KEY) when syncing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MODES = ("offline", "online", "disabled")


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
                 project: str, entity: str | None, root: Path):
        if mode not in MODES:
            raise ValueError(f"unknown wandb mode {mode!r}; allowed: {', '.join(MODES)}")
        self.run = None
        if mode == "disabled":
            return
        import wandb

        # the sweep's resolved mode (--wandb, else the sweep file) is authoritative in the
        # trial's process; a stray WANDB_MODE from the shell (even an empty one) must not win
        os.environ["WANDB_MODE"] = mode
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            id=trial_id, name=trial_id, group=sweep, job_type=config.get("mixup.mode"),
            config=config, project=project, entity=entity, mode=mode, dir=str(root),
            resume="allow", reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )

    def log_epoch(self, rec: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(_flatten_epoch(rec), step=int(rec["epoch"]))

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


def offline_runs(sweep_root: Path) -> list[Path]:
    """Offline run folders of a sweep not yet uploaded."""
    found = sorted((sweep_root / "wandb").glob("offline-run-*"))
    return [p for p in found if not any(p.glob("*.wandb.synced"))]


def sync(sweep_root: Path, jobs: int = 8) -> list[tuple[Path, bool, str]]:
    """Upload the sweep's offline runs with ``wandb sync``, ``jobs`` at a time.

    Returns (run folder, ok, last line of output) per run.
    """
    exe = shutil.which("wandb")
    if exe is None:
        raise RuntimeError("the `wandb` command is not on PATH (pip install wandb)")
    runs = offline_runs(sweep_root)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}

    def one(path: Path) -> tuple[Path, bool, str]:
        proc = subprocess.run([exe, "sync", str(path)], capture_output=True, text=True, env=env)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        return path, proc.returncode == 0, lines[-1] if lines else ""

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, runs))
