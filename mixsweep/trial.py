"""One trial: data -> model -> train loop (mixup losses) -> per-epoch eval.

``run_trial(cfg, out_dir, report)`` is a plain function of a TrialConfig. It
knows nothing of Ray: ``tune.py`` wraps it. With ``out_dir`` it writes
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

import copy
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mixsweep import __version__
from mixsweep.data import ArrayDataset, load_dataset, make_loader
from mixsweep.data.ffcv_loader import resolve_ffcv_dir
from mixsweep.data.loaders import Normalize, eval_batches
from mixsweep.data.split import labeled_split
from mixsweep.linearity import layer_stats, probe_set
from mixsweep.mixup import mixup_losses
from mixsweep.models import build_model
from mixsweep.names import CONSISTENCY_MODES
from mixsweep.spec import TrialConfig
from mixsweep.step import TrainStep, TrialFailed
from mixsweep.store import TrialPaths, atomic_torch_save, atomic_write_json, read_json, read_jsonl

Report = Callable[[dict[str, Any]], None]


def device_problem(name: str) -> str | None:
    """Why ``name`` (auto, cpu, cuda or cuda:N) is not a device this process can train on."""
    if name == "auto":
        return None
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        return "unknown device; allowed: auto, cpu, cuda, cuda:N"
    if dev.type not in ("cpu", "cuda"):
        return "not supported; allowed: auto, cpu, cuda, cuda:N"
    if dev.type == "cpu":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device is visible here; use cpu (or auto)"
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        return (f"this machine has {count} CUDA device{'s' if count != 1 else ''} "
                f"(cuda:0 to cuda:{count - 1})")
    return None


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device for ``name`` (auto: CUDA when there is one); RuntimeError if unusable."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem(name)
    if problem:
        raise RuntimeError(f"train.device {name!r}: {problem}")
    return torch.device(name)


def _lr_lambda(cfg: TrialConfig, total_steps: int, steps_per_epoch: int):
    warm = cfg.train.warmup_epochs * steps_per_epoch

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        if cfg.train.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if cfg.train.schedule == "step":
            return 0.1 ** ((t >= 0.5) + (t >= 0.75))
        return 1.0

    return f


def _optimizer(cfg: TrialConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum,
        nesterov=t.nesterov and t.momentum > 0, weight_decay=t.weight_decay,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was)
    return correct / max(total, 1)


def provenance(device: torch.device) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "mixsweep": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "host": platform.node(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


class _Run:
    """The state of one trial while it trains (kept off the public surface)."""

    def __init__(self, cfg: TrialConfig, device: torch.device, data: ArrayDataset | None = None):
        self.cfg, self.device = cfg, device
        # data: given by ``mixsweep bench`` (synthetic); a trial reads its dataset
        self.data = data if data is not None else load_dataset(cfg.data.dataset, cfg.data.root,
                                                               cfg.data.download)
        c, h, _ = self.data.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            m = cfg.model
            self.model = build_model(m.arch, c, self.data.num_classes, h, m.width, m.depth, m.batchnorm)
        self.model.to(device)
        self.channels_last = cfg.train.channels_last and device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.teacher = None
        if cfg.mixup.mode in CONSISTENCY_MODES:
            self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        split = labeled_split(self.data.train_y, cfg.data.labeled_fraction, cfg.split_seed,
                              cfg.data.num_labels)
        self.loader = make_loader(
            cfg.data.loader, self.data, split, cfg.train.batch_size, device,
            augment=cfg.data.augment, unlabeled=self.teacher is not None, seed=cfg.seed,
            ffcv_dir=resolve_ffcv_dir(cfg.data.ffcv_dir, cfg.data.root, cfg.data.dataset),
            # the torch loader's workers: the threads this trial was given (tune.py sets them
            # to resources.cpus_per_trial), not one per core of the node
            num_workers=torch.get_num_threads(),
        )
        self.steps_per_epoch = self.loader.steps_per_epoch
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.opt = _optimizer(cfg, self.model)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, _lr_lambda(cfg, self.total_steps, self.steps_per_epoch)
        )
        norm = Normalize(self.data, device)
        self.probes = norm(probe_set(self.data.test_x, cfg.linearity.probes).to(device))
        self.step = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.resumes: list[int] = []  # the epoch each resume continued from

    # -- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "trial_id": self.cfg.trial_id,
            "model": self.model.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "resumes": self.resumes,
        }

    def load(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        if self.teacher is not None:
            self.teacher.load_state_dict(ck["teacher"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.step, self.train_seconds = ck["step"], ck["train_seconds"]
        self.history = list(ck["history"])
        self.resumes = [*ck.get("resumes", []), self.history[-1]["epoch"]]

    # -- work
    def _x(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is not None and self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def trainer(self) -> TrainStep:
        """The training step of this run (built on first use, after a checkpoint was loaded)."""
        if getattr(self, "_trainer", None) is None:
            self._trainer = TrainStep(
                model=self.model, forward=self.forward, teacher=self.teacher, opt=self.opt,
                sched=self.sched, loader=self.loader, cfg=self.cfg,
                num_classes=self.data.num_classes, total_steps=self.total_steps,
                device=self.device, loss_fn=mixup_losses,
            )
        return self._trainer

    def train_epoch(self, epoch: int, limit: int | None = None) -> dict[str, float]:
        """One epoch of ``mixsweep.step.TrainStep`` (no per-step host sync); the mean losses.

        ``limit``: only the first steps of the epoch (``mixsweep bench``; never in a trial).
        """
        start = time.perf_counter()
        try:
            losses = self.trainer().run_epoch(epoch, self.step, limit)
        except TrialFailed as err:
            self.step += getattr(err, "steps_done", 0)
            raise
        self.step += self.steps_per_epoch if limit is None else min(limit, self.steps_per_epoch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - start
        return losses

    def measure(self) -> dict[str, dict[str, float]]:
        lin = self.cfg.linearity
        return layer_stats(self.model, self.probes, k=lin.k, alpha=lin.alpha, seed=lin.seed)

    def evaluate(self) -> float:
        batches = ((self._x(x), y) for x, y in eval_batches(self.data, self.device, self.cfg.train.eval_batch_size))
        return evaluate(self.model, batches)


def first_at_target(history: list[dict[str, Any]], target: float | None) -> dict[str, Any] | None:
    """The record of the first epoch (>= 1) whose accuracy reached ``target``; None: censored."""
    if target is None:
        return None
    return next((r for r in history if r["epoch"] >= 1 and r["test_acc"] >= target), None)


def _summary(cfg: TrialConfig, run: _Run, status: str, reason: str | None, wall: float) -> dict[str, Any]:
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


def _resume(run: _Run, paths: TrialPaths) -> str | None:
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
    device: str | torch.device | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one trial; returns the final result record.

    Args:
        cfg: the resolved trial config.
        out_dir: the trial's folder (config, metrics.jsonl, checkpoint.pt,
            result.json); resumes from its checkpoint. None: keep nothing.
        report: called with each epoch's record, once per epoch across kills and resumes.
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
    run = _Run(cfg, dev)
    notes: list[str] = []
    reported: list[dict[str, Any]] = []  # metrics.jsonl: the epochs already reported
    if paths is not None:
        reported = read_jsonl(paths.metrics) if same_trial else []
        note = _resume(run, paths)
        if note is not None:
            print(f"trial {cfg.trial_id}: {note}", file=sys.stderr, flush=True)
            notes.append(note)
            run = _Run(cfg, dev)  # a load that failed half-way leaves nothing behind
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

    for rec in list(run.history):  # checkpointed before a kill, never reported: report now
        if rec["epoch"] not in done_epochs:
            publish(rec)
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
