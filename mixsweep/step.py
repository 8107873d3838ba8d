"""The training step, shared by the trial (``trial.py``) and ``mixsweep bench``.

One epoch of training without a per-step host sync:

- All randomness of epoch e is drawn up front, on the CPU, from the same
  generators and in the same order as the step-by-step code draws it (the
  loader's index streams and crop/flip parameters: ``MemoryLoader.draws``;
  mixup weights and permutations: ``mixup_draws``), copied to the device once
  per epoch and indexed by the step number. A trial gives the same batches,
  weights and permutations as drawing them step by step (DESIGN's randomness
  contract; tests/test_step.py).
- Losses are summed, and the first non-finite loss is noted, on the device;
  they are read once, at the end of the epoch. A non-finite loss still fails
  the trial (``TrialFailed``) naming the epoch and step of the first one.

``train.cuda_graphs: true`` (CUDA, memory loader): every per-step scalar (lr,
consistency weight, EMA decay) comes from a per-epoch device table indexed by
a device step counter, the optimizer runs fused with a tensor lr, and the
whole step (batch gather + augmentation, mixup, forward, backward, optimizer,
EMA teacher, loss sums) is captured once as a CUDA graph after a few eager
warm-up steps and replayed for every later step of the trial (never captured
again per epoch). Where capture is impossible the step says so in one line
and runs eagerly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from mixsweep.data.base import epoch_generator, step_row
from mixsweep.data.memory_loader import MemoryLoader
from mixsweep.mixup import ema_decay, ema_update, mix_draw, mixup_losses, rampup

Log = Callable[[str], None]
WARMUP_STEPS = 3  # eager steps (side stream) before a CUDA graph is captured
_MIX_STREAM = 2  # epoch_generator stream of mixup's randomness


class TrialFailed(RuntimeError):
    """The trial cannot go on (non-finite loss); the reason names epoch and step."""

    steps_done: int = 0  # the epoch's steps before the bad one (set by TrainStep.epoch)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mixup_draws(mode: str, k: int | None, alpha: float | None, seed: int, epoch: int,
                steps: int, batch: int) -> dict[str, torch.Tensor]:
    """Epoch ``epoch``'s mixup randomness, in the order the step-by-step loop draws it.

    Per step: the labeled mix (modes sup, both), then the unlabeled mix (unsup,
    both), all from ``epoch_generator(seed, epoch, 2)``. Returns
    ``{sup,unsup}_{lam,perms}``: (steps, B, k) float32 weights and (steps, k, B)
    permutations; empty for erm and mt.
    """
    parts = [p for p, modes in (("sup", ("sup", "both")), ("unsup", ("unsup", "both")))
             if mode in modes]
    if not parts:
        return {}
    if k is None or alpha is None:
        raise ValueError(f"mode {mode!r} mixes: it needs k and alpha")
    g = epoch_generator(seed, epoch, _MIX_STREAM)
    lams: dict[str, list[torch.Tensor]] = {p: [] for p in parts}
    perms: dict[str, list[torch.Tensor]] = {p: [] for p in parts}
    for _ in range(steps):
        for p in parts:
            lam, perm = mix_draw(batch, k, alpha, g)
            lams[p].append(lam.float())  # the dtype mix_apply casts to (float32 inputs)
            perms[p].append(perm)
    out = {}
    for p in parts:
        out[f"{p}_lam"], out[f"{p}_perms"] = torch.stack(lams[p]), torch.stack(perms[p])
    return out


class TrainStep:
    """Trains a model one epoch at a time (see the module docstring).

    Args:
        model / forward: the module and what to call for its forward (maybe compiled).
        teacher: the EMA teacher of the consistency modes, else None.
        opt / sched: the optimizer and its per-step LambdaLR.
        loader: a loader of ``mixsweep.data`` (graphs need the memory loader).
        cfg: the TrialConfig (train, mixup and seed sections are read).
        num_classes / total_steps: of the trial (total_steps scales the ramp-up).
        loss_fn: ``mixup_losses`` (a test may wrap it).
        log: where the one line about a CUDA graph fallback goes.
    """

    def __init__(self, *, model: torch.nn.Module, forward: Callable, teacher: torch.nn.Module | None,
                 opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR, loader: Any,
                 cfg: Any, num_classes: int, total_steps: int, device: torch.device,
                 loss_fn: Callable[..., dict[str, torch.Tensor]] = mixup_losses, log: Log = _stderr):
        self.model, self.forward, self.teacher = model, forward, teacher
        self.opt, self.sched, self.loader, self.cfg = opt, sched, loader, cfg
        self.num_classes, self.total_steps, self.device = num_classes, total_steps, device
        self.loss_fn, self.log = loss_fn, log
        self.channels_last = cfg.train.channels_last and device.type == "cuda"
        self.bf16 = cfg.train.precision == "bf16"
        self.steps = loader.steps_per_epoch
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, sup, unsup
        self.bad_step = torch.full((1,), -1, dtype=torch.int64, device=device)
        self.bad_val = torch.zeros(1, dtype=torch.float64, device=device)
        self.ctr = torch.zeros(1, dtype=torch.int64, device=device)  # step within the epoch
        self.table: dict[str, torch.Tensor] = {}  # this epoch's draws, on the device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0
        self.device_mode = False  # per-step scalars as device tensors (graphs)
        self.graphs = bool(getattr(cfg.train, "cuda_graphs", False)) and self._graphs_possible()
        if self.graphs:
            self.enter_device_mode()

    # -- setup
    def _graphs_possible(self) -> bool:
        why = None
        if self.device.type != "cuda":
            why = f"no CUDA device (training on {self.device.type})"
        elif not isinstance(self.loader, MemoryLoader):
            why = f"it needs data.loader 'memory' (got {self.cfg.data.loader!r})"
        if why:
            self.log(f"train.cuda_graphs: {why}; running the step eagerly")
        return why is None

    def enter_device_mode(self) -> None:
        """lr as a device tensor read by a fused optimizer; lr, consistency weight and EMA decay
        from per-epoch device tables. Runs eagerly too (tests check it on CPU)."""
        self.device_mode = True
        for g in self.opt.param_groups:
            if not isinstance(g["lr"], torch.Tensor):
                g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device)
            if self.device.type == "cuda":  # no host read of lr (the foreach path calls .item())
                g["fused"], g["foreach"] = True, False
                if "capturable" in g:  # Adam: step() refuses a capture otherwise
                    g["capturable"] = True
        self.lr = self.opt.param_groups[0]["lr"]

    def _amp(self):
        # no autocast weight cache inside a captured graph (PyTorch's CUDA graphs notes)
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16,
                              cache_enabled=not self.device_mode)

    def _x(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is not None and self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # -- per-epoch tables
    def _stage(self, host: dict[str, torch.Tensor]) -> None:
        """Copy the epoch's draws to the device once; a graph keeps reading the same buffers."""
        cuda = self.device.type == "cuda"
        for key, t in host.items():
            src = t.pin_memory() if cuda else t
            if key in self.table and self.table[key].shape == t.shape:
                self.table[key].copy_(src, non_blocking=cuda)
            else:
                self.table[key] = src.to(self.device, non_blocking=cuda)

    def _scalars(self, step0: int) -> dict[str, torch.Tensor]:
        """lr, consistency weight and EMA decay of each step of the epoch (device mode)."""
        steps = range(step0, step0 + self.steps)
        base, lam = self.sched.base_lrs[0], self.sched.lr_lambdas[0]
        out = {"lr": torch.tensor([float(base) * lam(s) for s in steps], dtype=torch.float32)}
        if self.teacher is not None:
            out["weight"] = torch.tensor([self._weight(s) for s in steps], dtype=torch.float32)
            out["decay"] = torch.tensor([self._decay(s) for s in steps], dtype=torch.float64)
        return out

    def _weight(self, step: int) -> float:
        """The consistency weight of global step ``step``: the configured weight x the ramp."""
        m = self.cfg.mixup
        return m.unsup_weight * rampup(step / self.total_steps, m.rampup)

    def _decay(self, step: int) -> float:
        """The EMA teacher's decay at global step ``step``."""
        return ema_decay(step, self.cfg.mixup.ema_max_decay)

    def _pick(self, key: str, i: int | torch.Tensor) -> torch.Tensor:
        return step_row(self.table[key], i)

    def _mix(self, i: int | torch.Tensor) -> dict[str, Any]:
        return {f"mix_{p}": (self._pick(f"{p}_lam", i), self._pick(f"{p}_perms", i))
                for p in ("sup", "unsup") if f"{p}_lam" in self.table}

    # -- one step
    def _losses(self, batch, i: int | torch.Tensor, weight: float | torch.Tensor):
        m = self.cfg.mixup
        with self._amp():
            return self.loss_fn(m.mode, self.forward, self.teacher, self._x(batch.x), batch.y,
                                self._x(batch.xu), self.num_classes, k=m.k, alpha=m.alpha,
                                unsup_weight=weight, generator=None, **self._mix(i))

    def _track(self, losses: dict[str, torch.Tensor], i: int | torch.Tensor) -> None:
        loss = losses["loss"].detach()
        self.sums += torch.stack([loss.float(), losses["sup"].float(), losses["unsup"].float()]).double()
        first = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_val.copy_(torch.where(first, loss.double(), self.bad_val))
        self.bad_step.copy_(torch.where(first, i, self.bad_step))

    def _host_step(self, batch, i: int, step: int) -> None:
        """One step, per-step scalars computed on the host (no device read)."""
        weight = self._weight(step) if self.teacher is not None else 0.0
        losses = self._losses(batch, i, weight)
        self._track(losses, i)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.opt.step()
        self.sched.step()
        if self.teacher is not None:
            ema_update(self.teacher, self.model, self._decay(step))

    def _device_step(self) -> None:
        """One step read entirely from device state (what a CUDA graph captures)."""
        i = self.ctr
        batch = self.loader.batch_at(self.table, i)
        weight = self._pick("weight", i) if self.teacher is not None else 0.0
        self.opt.zero_grad(set_to_none=True)
        losses = self._losses(batch, i, weight)
        self._track(losses, i)
        losses["loss"].backward()
        self.lr.copy_(self._pick("lr", i))
        self.opt.step()
        if self.teacher is not None:
            ema_update(self.teacher, self.model, self._pick("decay", i))
        self.ctr += 1

    def _graphed_step(self) -> None:
        """Replay the captured step; before that: eager warm-up steps, then the one capture."""
        if self.graph is not None:
            self.graph.replay()
            return
        if not self.graphs:  # device mode without a graph (a failed capture; tests on CPU)
            self._device_step()
            return
        if self.warm < WARMUP_STEPS:  # on a side stream, as PyTorch's whole-network capture does
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._device_step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.warm += 1
            return
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                self._device_step()
        except Exception as err:  # noqa: BLE001 - any capture failure means: run eagerly
            self.graphs = False
            self.log(f"train.cuda_graphs: capture failed ({type(err).__name__}: "
                     f"{str(err).splitlines()[0] if str(err) else ''}); running the step eagerly")
            torch.cuda.synchronize(self.device)
            self._device_step()
            return
        self.graph = graph
        graph.replay()  # capture records; the replay runs this step

    def _advance_sched(self, n: int) -> None:
        """Step the scheduler ``n`` times on the host (its state: checkpoints, the lr of the
        record), with plain floats in the groups meanwhile: the device lr is the table's."""
        groups = self.opt.param_groups
        device_lrs = [g["lr"] for g in groups]
        for g in groups:
            g["lr"] = 0.0
        try:
            for _ in range(n):
                self.sched.step()
        finally:
            for g, lr in zip(groups, device_lrs, strict=True):
                g["lr"] = lr

    # -- one epoch
    def run_epoch(self, epoch: int, step0: int, limit: int | None = None) -> dict[str, float]:
        """Train epoch ``epoch`` (global steps step0 .. step0 + steps - 1); the mean losses.

        ``limit``: run only the epoch's first ``limit`` steps (``mixsweep bench`` on CPU).
        Raises ``TrialFailed`` (with ``.steps_done``) when a loss was non-finite.
        """
        cfg = self.cfg
        n = self.steps if limit is None else max(1, min(limit, self.steps))
        memory = isinstance(self.loader, MemoryLoader)
        host = mixup_draws(cfg.mixup.mode, cfg.mixup.k, cfg.mixup.alpha, cfg.seed, epoch, n,
                           self.loader.batch_size)
        if memory:
            host.update(self.loader.draws(epoch))
        if self.device_mode:
            host.update(self._scalars(step0))
        self._stage(host)
        self.sums.zero_()
        self.bad_step.fill_(-1)
        self.ctr.zero_()
        self.model.train()
        if self.teacher is not None:
            self.teacher.train()
        if self.device_mode:
            for _ in range(n):
                self._graphed_step()
            self._advance_sched(n)
        else:
            batches = ((self.loader.batch_at(self.table, i) for i in range(n)) if memory
                       else self.loader.epoch(epoch))
            for i, batch in zip(range(n), batches, strict=False):
                self._host_step(batch, i, step0 + i)
        # the one read of the epoch
        vals = torch.cat([self.sums, self.bad_step.double(), self.bad_val]).tolist()
        bad = int(vals[3])
        if bad >= 0:
            err = TrialFailed(f"non-finite loss ({vals[4]}) at epoch {epoch} step {bad + 1} "
                              f"(global step {step0 + bad + 1})")
            err.steps_done = bad
            raise err
        return {f"train_{k}": v / n for k, v in zip(("loss", "sup", "unsup"), vals, strict=False)}
