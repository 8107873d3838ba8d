"""One trial: data -> model -> train loop (mixup losses) -> per-epoch eval.

``run_trial(cfg, out_dir, report, data=None)`` is a plain function of a
TrialConfig (and, optionally, your own dataset). It knows nothing of Ray:
``tune.py`` wraps it. What it trains (model, optimizer, loader, step) is an
``engine.Engine``, public for the benchmarks and the selftest. With ``out_dir`` it writes
checkpoint.pt every ``train.checkpoint_seconds`` (and at the end) and resumes
from it: epochs after the checkpoint are trained again, bit-identically on CPU
(every epoch's data order and mixing weights are seeded by the epoch), and not
reported twice: metrics.jsonl holds the epochs reported, and a checkpointed
epoch that was never reported is reported on resume. An unreadable checkpoint
(cut short, garbage) is set aside as checkpoint.pt.corrupt and the trial starts
over, saying so once. A completed ``result.json`` for the same trial id is
returned without re-running.

Epoch e (1-based) is ceil(|train| / batch) optimizer steps. Epoch 0 is an
evaluation at init. Nonlinearity is measured at init, every
``linearity.every`` epochs, at the epoch that first reaches the target
accuracy ("NL at matched accuracy") and at the end.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from mixsweep import __version__
from mixsweep.data import ArrayDataset
from mixsweep.engine import Engine, device_problem, resolve_device
from mixsweep.spec import TrialConfig
from mixsweep.step import TrialFailed
from mixsweep.store import TrialPaths, atomic_torch_save, atomic_write_json, read_json, read_jsonl

__all__ = ["Engine", "Report", "device_problem", "first_at_target", "nvidia_driver", "package_version",
           "provenance", "resolve_device", "run_trial"]

Report = Callable[[dict[str, Any]], None]


PACKAGES = ("torchvision", "ray", "wandb", "numpy", "ffcv")  # versions read, never imported


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (importlib.metadata); None: absent."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def nvidia_driver() -> str | None:
    """The NVIDIA driver version (pynvml if installed, else nvidia-smi); None if neither answers."""
    try:
        import pynvml  # optional: nvidia-ml-py

        pynvml.nvmlInit()
        try:
            ver = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return ver.decode() if isinstance(ver, bytes) else str(ver)
    except Exception:  # noqa: BLE001 - not installed, no NVML: ask nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: torch.device) -> dict[str, Any]:
    """The software and machine that made a result: package versions (None: not installed),
    CUDA and cuDNN as torch was built with them, the NVIDIA driver (None off CUDA), the commit.

    Args:
        device: the trial's device; the GPU's name and the driver are read only on CUDA.
    """
    cuda = device.type == "cuda"
    return {
        "mixsweep": __version__,
        "torch": torch.__version__,
        **{name: package_version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nvidia_driver": nvidia_driver() if cuda else None,
        "git_commit": _git_commit(),
        "host": platform.node(),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
    }


def first_at_target(history: list[dict[str, Any]], target: float | None) -> dict[str, Any] | None:
    """The record of the first epoch (>= 1) whose accuracy reached ``target``; None: censored."""
    if target is None:
        return None
    return next((r for r in history if r["epoch"] >= 1 and r["test_acc"] >= target), None)


def _summary(cfg: TrialConfig, run: Engine, status: str, reason: str | None, wall: float) -> dict[str, Any]:
    hist = run.history
    target = cfg.train.target_accuracy
    hit = first_at_target(hist, target)
    with_nl = [r for r in hist if "nl" in r]
    last = hist[-1] if hist else {}
    return {
        "trial_id": cfg.trial_id,
        "status": status,
        "reason": reason,
        "config": cfg.model_dump(mode="json"),
        "epochs_done": last.get("epoch", 0),
        "steps": run.step,
        "steps_per_epoch": run.steps_per_epoch,
        "final_acc": last.get("test_acc"),
        "best_acc": max((r["test_acc"] for r in hist if r["epoch"] >= 1), default=None),
        "final_train_loss": last.get("train_loss"),
        "target_accuracy": target,
        "reached_target": hit is not None if target is not None else None,
        # censored: null when never reached (see reached_target), never a made-up epoch
        "epochs_to_target": hit["epoch"] if hit else None,
        "steps_to_target": hit["step"] if hit else None,
        "seconds_to_target": hit["train_seconds"] if hit else None,
        "nonlinearity": with_nl[-1]["nl"] if with_nl else {},
        "cosine": with_nl[-1]["cos"] if with_nl else {},
        "nl_epoch": with_nl[-1]["epoch"] if with_nl else None,
        "nl_at_target": hit.get("nl") if hit else None,
        "nl_at_init": with_nl[0]["nl"] if with_nl and with_nl[0]["epoch"] == 0 else None,
        "train_seconds": run.train_seconds,
        "wall_seconds": wall,
        "resumed_from": run.resumes,
        "provenance": provenance(run.device),
    }


def _resume(run: Engine, paths: TrialPaths) -> str | None:
    """Load the trial's checkpoint into ``run``; a note if it was unreadable (set aside)."""
    if not paths.checkpoint.is_file():
        return None
    try:
        ck = torch.load(paths.checkpoint, map_location=run.device, weights_only=True)
        if not isinstance(ck, dict) or ck.get("trial_id") != run.cfg.trial_id:
            return None  # another trial's folder contents: start fresh, keep nothing of it
        run.load(ck)
        return None
    except Exception as err:  # cut short, garbage, or not this model's state
        bad = paths.checkpoint.with_name(paths.checkpoint.name + ".corrupt")
        paths.checkpoint.replace(bad)
        why = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        return f"checkpoint.pt was unreadable ({why}); kept as {bad.name}, starting over from epoch 0"


def run_trial(
    cfg: TrialConfig,
    out_dir: str | Path | None = None,
    report: Report | None = None,
    *,
    data: ArrayDataset | None = None,
    device: str | torch.device | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one trial; returns the final result record.

    Args:
        cfg: the resolved trial config.
        out_dir: the trial's folder (config, metrics.jsonl, checkpoint.pt,
            result.json); resumes from its checkpoint. None: keep nothing.
        report: called with each epoch's record, once per epoch across kills and resumes.
        data: your own dataset in place of ``cfg.data.dataset`` (an ``ArrayDataset``: a
            subset, synthetic data); None: the config's dataset, read from its root.
        device: overrides ``train.device``.
        on_result: called with the final record before ``result.json`` is written (the
            W&B run is finished there): a kill in between leaves the trial unfinished, and
            its rerun resumes from the last epoch's checkpoint and calls it again.
    """
    wall0 = time.perf_counter()
    paths = TrialPaths(Path(out_dir)) if out_dir is not None else None
    same_trial = False
    if paths is not None:
        done = paths.read_result(cfg.trial_id)
        if done and done.get("status") == "completed":
            return done
        before = read_json(paths.config)
        same_trial = isinstance(before, dict) and before.get("trial_id") == cfg.trial_id
        atomic_write_json(paths.config, {"trial_id": cfg.trial_id, **cfg.model_dump(mode="json")})
    dev = resolve_device(device if device is not None else cfg.train.device)
    run = Engine(cfg, dev, data=data)
    notes: list[str] = []
    reported: list[dict[str, Any]] = []  # metrics.jsonl: the epochs already reported
    if paths is not None:
        reported = read_jsonl(paths.metrics) if same_trial else []
        note = _resume(run, paths)
        if note is not None:
            print(f"trial {cfg.trial_id}: {note}", file=sys.stderr, flush=True)
            notes.append(note)
            run = Engine(cfg, dev, data=data)  # a load that failed half-way leaves nothing behind
    done_epochs = {r["epoch"] for r in reported}
    target, every = cfg.train.target_accuracy, cfg.linearity.every
    status, reason = "completed", None
    saved_at = time.monotonic()

    def publish(rec: dict[str, Any]) -> None:
        if report is not None and rec["epoch"] not in done_epochs:
            report(rec)
        done_epochs.add(rec["epoch"])
        if paths is not None:  # epochs reported before a resume from an older checkpoint stay
            upto = [r for r in run.history if r["epoch"] <= rec["epoch"]]
            paths.write_metrics([*upto, *(r for r in reported if r["epoch"] > rec["epoch"])])

    def record(rec: dict[str, Any]) -> None:
        nonlocal saved_at
        run.history.append(rec)
        if paths is not None and (rec["epoch"] == cfg.train.epochs
                                  or time.monotonic() - saved_at >= cfg.train.checkpoint_seconds):
            atomic_torch_save(paths.checkpoint, run.state())
            saved_at = time.monotonic()
        publish(rec)

    for past in list(run.history):  # checkpointed before a kill, never reported: report now
        if past["epoch"] not in done_epochs:
            publish(past)
    if not run.history:  # epoch 0: the network at init
        stats = run.measure()
        record({"epoch": 0, "step": 0, "test_acc": run.evaluate(), "train_seconds": 0.0,
                "nl": stats["nl"], "cos": stats["cos"]})
    reached = first_at_target(run.history, target) is not None
    for epoch in range(len(run.history), cfg.train.epochs + 1):
        try:
            losses = run.train_epoch(epoch)
        except TrialFailed as err:
            status, reason = "failed", str(err)
            break
        acc = run.evaluate()
        rec: dict[str, Any] = {"epoch": epoch, "step": run.step, "test_acc": acc,
                               "train_seconds": run.train_seconds, "lr": run.sched.get_last_lr()[0],
                               **losses}
        first_hit = not reached and target is not None and acc >= target
        reached = reached or first_hit
        if epoch % every == 0 or epoch == cfg.train.epochs or first_hit:
            stats = run.measure()
            rec["nl"], rec["cos"] = stats["nl"], stats["cos"]
        record(rec)
    result = _summary(cfg, run, status, reason, time.perf_counter() - wall0)
    result["notes"] = notes
    if on_result is not None:
        on_result(result)
    if paths is not None:
        atomic_write_json(paths.result, result)
    return result
