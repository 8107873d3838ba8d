"""The training engine of one trial: model, optimizer, schedule, loader and step.

``Engine(cfg, device, data=...)`` builds what a trial trains from a
TrialConfig; ``run_trial`` (``trial.py``) drives it epoch by epoch,
checkpoints it and reports. The engine is public for the code that needs finer
control than a whole trial: ``mixsweep bench`` and ``mixsweep selftest`` time
single epochs or a few steps of it (``train_epoch(epoch, limit=...)``,
``train_seconds``), on their own data, with the very step a trial runs.

Example::

    eng = Engine(cfg, "cpu", data=my_dataset)
    losses = eng.train_epoch(1)
    acc, stats = eng.evaluate(), eng.measure()
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch

from mixsweep.data import ArrayDataset, load_dataset, make_loader
from mixsweep.data.base import Normalize, eval_batches
from mixsweep.data.ffcv_loader import resolve_ffcv_dir
from mixsweep.data.split import labeled_split
from mixsweep.linearity import layer_stats, probe_set
from mixsweep.mixup import mixup_losses
from mixsweep.models import build_model
from mixsweep.names import CONSISTENCY_MODES
from mixsweep.spec import TrialConfig
from mixsweep.step import TrainStep, TrialFailed


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
    """Accuracy of ``model`` (in eval mode, restored after) over ``(x, y)`` batches."""
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was)
    return correct / max(total, 1)


class Engine:
    """The state of one trial while it trains: model (and EMA teacher), optimizer, lr
    schedule, loader, probes, the global step and the training seconds so far.

    Args:
        cfg: the resolved trial config.
        device: where to train (a torch.device, or auto / cpu / cuda / cuda:N);
            None: ``cfg.train.device``.
        data: the dataset to train on, in place of ``cfg.data.dataset`` (your own
            ``ArrayDataset``: synthetic data for a benchmark, a subset for a notebook).
            None: the config's dataset, read (and downloaded if allowed) from its root.

    Attributes read by callers: ``model``, ``teacher``, ``loader``, ``opt``, ``sched``,
    ``data``, ``step`` (optimizer steps so far), ``steps_per_epoch``, ``total_steps``,
    ``train_seconds`` (training time so far, each epoch up to its final device sync)
    and ``history`` (the epoch records of ``run_trial``).
    """

    def __init__(self, cfg: TrialConfig, device: str | torch.device | None = None, *,
                 data: ArrayDataset | None = None):
        self.cfg = cfg
        self.device = resolve_device(device if device is not None else cfg.train.device)
        device = self.device
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
        """Everything a checkpoint holds (tensors and plain values: ``weights_only`` loads it)."""
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
        """Restore a ``state()``; the epoch it continues from is appended to ``resumes``."""
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

        Args:
            epoch: the epoch number (1-based in a trial): it seeds the data order and the
                mixing weights, so the same epoch gives the same batches.
            limit: only the first ``limit`` steps of the epoch (benchmarks and selftests;
                never in a trial). None: the whole epoch.

        Returns:
            ``train_loss``, ``train_sup``, ``train_unsup``: the means over the steps run.
            ``step`` and ``train_seconds`` advance; TrialFailed on a non-finite loss.
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
        """Per-layer nonlinearity and cosine on the probes (``linearity.layer_stats``)."""
        lin = self.cfg.linearity
        return layer_stats(self.model, self.probes, k=lin.k, alpha=lin.alpha, seed=lin.seed)

    def evaluate(self) -> float:
        """Test accuracy of the model (eval mode, no augmentation)."""
        batches = ((self._x(x), y) for x, y in eval_batches(self.data, self.device, self.cfg.train.eval_batch_size))
        return evaluate(self.model, batches)
