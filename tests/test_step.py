"""The training step (mixsweep.step) against the loop it replaced, on CPU.

``reference_train_epoch`` is the trial's loop as it was before the step moved
to mixsweep.step (randomness drawn step by step from the generators, a host
sync per step, a per-tensor EMA): the new step must give the same batches,
mixup weights and permutations, and a trial the same per-epoch accuracy,
losses, nonlinearity and weights, bit for bit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mixsweep import trial as trial_mod
from mixsweep.data import load_dataset, make_loader
from mixsweep.data.loaders import epoch_generator
from mixsweep.data.split import labeled_split
from mixsweep.mixup import ema_decay, mix_apply, mix_batch, mixup_losses, one_hot, rampup
from mixsweep.step import TrainStep, mixup_draws
from mixsweep.store import TrialPaths, read_jsonl
from mixsweep.trial import run_trial

_TIMING = {"train_seconds", "wall_seconds", "seconds_to_target", "provenance"}


@torch.no_grad()
def _reference_ema(teacher, student, decay: float) -> None:
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def reference_train_epoch(self, epoch: int) -> dict[str, float]:
    """The trial loop at the branch base (kept verbatim but for the names it imports)."""
    cfg, m = self.cfg, self.cfg.mixup
    self.model.train()
    if self.teacher is not None:
        self.teacher.train()
    g = epoch_generator(cfg.seed, epoch, stream=2)
    amp = torch.autocast(self.device.type, torch.bfloat16, enabled=cfg.train.precision == "bf16")
    sums = {"loss": 0.0, "sup": 0.0, "unsup": 0.0}
    start = time.perf_counter()
    for i, batch in enumerate(self.loader.epoch(epoch)):
        weight = 0.0
        if self.teacher is not None:
            weight = m.unsup_weight * rampup(self.step / self.total_steps, m.rampup)
        with amp:
            losses = mixup_losses(
                m.mode, self.forward, self.teacher, self._x(batch.x), batch.y, self._x(batch.xu),
                self.data.num_classes, k=m.k, alpha=m.alpha, unsup_weight=weight, generator=g,
            )
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise trial_mod.TrialFailed(
                f"non-finite loss ({float(loss.detach())}) at epoch {epoch} step {i + 1} "
                f"(global step {self.step + 1})"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.teacher is not None:
            _reference_ema(self.teacher, self.model, ema_decay(self.step, m.ema_max_decay))
        self.step += 1
        for k in sums:
            sums[k] += float(losses[k].detach())
    self.train_seconds += time.perf_counter() - start
    n = self.steps_per_epoch
    return {f"train_{k}": v / n for k, v in sums.items()}


def _computed(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in read_jsonl(TrialPaths(path).metrics)]


def _loader(unlabeled: bool, augment: bool = True, seed: int = 5):
    data = load_dataset("digits", "unused", False)
    split = labeled_split(data.train_y, 0.3, 1)
    return make_loader("memory", data, split, 128, torch.device("cpu"), augment=augment,
                       unlabeled=unlabeled, seed=seed)


@pytest.mark.parametrize("augment", [True, False], ids=["augment", "plain"])
def test_precomputed_batches_equal_step_by_step(augment: bool) -> None:
    ld = _loader(unlabeled=True, augment=augment)
    d = ld.draws(2)
    assert d["lab"].shape == (ld.steps_per_epoch, 128)
    steps = list(ld.epoch(2))
    assert len(steps) == ld.steps_per_epoch
    for i, ref in enumerate(steps):
        got = ld.batch_at(d, i)
        assert torch.equal(got.x, ref.x) and torch.equal(got.y, ref.y) and torch.equal(got.xu, ref.xu)
        # indexing by a 1-element step counter (what a CUDA graph does) gives the same batch
        by_tensor = ld.batch_at(d, torch.tensor([i]))
        assert torch.equal(by_tensor.x, ref.x) and torch.equal(by_tensor.xu, ref.xu)
    assert not torch.equal(ld.batch_at(ld.draws(3), 0).x, steps[0].x)  # another epoch differs


@pytest.mark.parametrize("mode", ["sup", "unsup", "both", "erm", "mt"])
def test_precomputed_mixup_equals_step_by_step(mode: str) -> None:
    steps, b, k, alpha = 4, 16, 3, 0.4
    d = mixup_draws(mode, k, alpha, seed=7, epoch=2, steps=steps, batch=b)
    if mode in ("erm", "mt"):
        assert d == {}
        return
    g = epoch_generator(7, 2, stream=2)  # what mixup_losses drew from, step by step
    x, y = torch.randn(b, 5), one_hot(torch.arange(b) % 4, 4)
    for i in range(steps):
        for part in [p for p, ms in (("sup", ("sup", "both")), ("unsup", ("unsup", "both"))) if mode in ms]:
            xm, ym, lam, perms = mix_batch(x, y, k, alpha, g)
            assert torch.equal(d[f"{part}_perms"][i], perms)
            assert torch.equal(d[f"{part}_lam"][i], lam.float())
            xm2, ym2 = mix_apply(x, y, d[f"{part}_lam"][i], d[f"{part}_perms"][i])
            assert torch.equal(xm2, xm) and torch.equal(ym2, ym)


@pytest.mark.parametrize(
    "mixup",
    [
        pytest.param({"mode": "erm"}, id="erm"),
        pytest.param({"mode": "sup", "k": 3, "alpha": 0.5}, id="sup"),
        pytest.param({"mode": "unsup", "k": 2, "alpha": 1.0, "rampup": 0.5}, id="unsup"),
        pytest.param({"mode": "both", "k": 3, "alpha": 0.7, "rampup": 0.5}, id="both"),
        pytest.param({"mode": "mt", "rampup": 0.5}, id="mt"),
    ],
)
def test_trial_equals_reference_loop(trial_cfg, tmp_path: Path, monkeypatch, mixup) -> None:
    """Per-epoch accuracy, losses, lr, NL and cosine, and the final weights: bit for bit."""
    cfg = trial_cfg(
        seed=3, data={"labeled_fraction": 1.0 if mixup["mode"] in ("erm", "sup") else 0.3},
        model={"width": 4}, train={"epochs": 3, "batch_size": 256}, mixup=mixup,
        linearity={"probes": 32, "every": 1},
    )
    new = run_trial(cfg, tmp_path / "new")
    with monkeypatch.context() as mp:
        mp.setattr(trial_mod.Engine, "train_epoch", reference_train_epoch)
        ref = run_trial(cfg, tmp_path / "ref")
    assert new["status"] == ref["status"] == "completed"
    hist_new, hist_ref = _computed(tmp_path / "new"), _computed(tmp_path / "ref")
    assert [r["epoch"] for r in hist_new] == [0, 1, 2, 3]
    assert hist_new == hist_ref
    assert hist_new[-1]["test_acc"] != hist_new[0]["test_acc"]  # it trained
    ca = torch.load(TrialPaths(tmp_path / "new").checkpoint, weights_only=True)
    cb = torch.load(TrialPaths(tmp_path / "ref").checkpoint, weights_only=True)
    assert ca["step"] == cb["step"]
    for part in ("model", "teacher"):
        if cb[part] is None:
            assert ca[part] is None
            continue
        for key, value in cb[part].items():
            assert torch.equal(value, ca[part][key]), (part, key)


def _engine(cfg, device_mode: bool, log: list[str] | None = None):
    """A TrainStep on digits built the way the trial builds it."""
    run = trial_mod.Engine(cfg, torch.device("cpu"))
    step = TrainStep(model=run.model, forward=run.forward, teacher=run.teacher, opt=run.opt,
                     sched=run.sched, loader=run.loader, cfg=cfg, num_classes=run.data.num_classes,
                     total_steps=run.total_steps, device=run.device,
                     log=(log.append if log is not None else print))
    if device_mode:
        step.enter_device_mode()
    return run, step


def test_device_scalar_step_matches_host_step(trial_cfg) -> None:
    """The body a CUDA graph captures (step counter, lr / weight / EMA decay read from per-epoch
    device tables), run eagerly on CPU, trains like the host-scalar step (up to float32 lr)."""
    cfg = trial_cfg(seed=1, data={"labeled_fraction": 0.3}, model={"width": 4},
                    train={"epochs": 2, "batch_size": 256},
                    mixup={"mode": "both", "k": 2, "alpha": 1.0, "rampup": 0.5})
    (ra, a), (rb, b) = _engine(cfg, False), _engine(cfg, True)
    for epoch in (1, 2):
        la = a.run_epoch(epoch, (epoch - 1) * a.steps)
        lb = b.run_epoch(epoch, (epoch - 1) * b.steps)
        assert la == pytest.approx(lb, rel=1e-4)
    assert int(b.ctr) == b.steps  # the device counter walked the epoch
    assert ra.sched.get_last_lr() == pytest.approx(rb.sched.get_last_lr())
    assert isinstance(rb.sched.get_last_lr()[0], float)  # the record's lr stays a number
    assert rb.opt.param_groups[0]["lr"] is b.lr  # the optimizer still reads the device lr
    for (name, pa), pb in zip(ra.model.named_parameters(), rb.model.parameters(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-5), name
    for ta, tb in zip(ra.teacher.parameters(), rb.teacher.parameters(), strict=True):
        assert torch.allclose(ta, tb, rtol=1e-4, atol=1e-5)


def test_cuda_graphs_on_cpu_falls_back_with_one_line(trial_cfg) -> None:
    cfg = trial_cfg(model={"width": 4}, train={"epochs": 1, "cuda_graphs": True})
    log: list[str] = []
    _, step = _engine(cfg, False, log)
    assert not step.graphs and not step.device_mode
    assert log == ["train.cuda_graphs: no CUDA device (training on cpu); running the step eagerly"]
    step.run_epoch(1, 0)
    assert len(log) == 1  # said once, not per epoch or step
    ref_cfg = trial_cfg(model={"width": 4}, train={"epochs": 1})
    assert cfg.trial_id != ref_cfg.trial_id  # true is a different trial; false keeps old ids


def test_cuda_graphs_trial_on_cpu_runs_eager(trial_cfg, capsys) -> None:
    on = run_trial(trial_cfg(model={"width": 4}, train={"epochs": 1, "cuda_graphs": True},
                             linearity={"probes": 16}))
    off = run_trial(trial_cfg(model={"width": 4}, train={"epochs": 1}, linearity={"probes": 16}))
    assert on["status"] == "completed" and on["final_acc"] == off["final_acc"]
    err = capsys.readouterr().err
    assert err.count("train.cuda_graphs: no CUDA device") == 1


@pytest.mark.parametrize("mode", ["both", "sup"])
def test_no_host_read_inside_a_step(trial_cfg, monkeypatch, mode: str) -> None:
    """Inside a step nothing reads a tensor's value on the host (item, float, int, bool, tolist):
    on a GPU each would be a sync. The epoch's one read comes after its last step."""
    cfg = trial_cfg(seed=2, data={"labeled_fraction": 0.3}, model={"width": 4},
                    train={"epochs": 1, "batch_size": 256},
                    mixup={"mode": mode, "k": 3, "alpha": 0.5, "rampup": 0.5})
    run, step = _engine(cfg, False)
    reads: list[str] = []
    inside = {"on": False}
    for name in ("item", "__float__", "__int__", "__bool__", "tolist", "__index__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            if inside["on"]:
                reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    real_step = TrainStep._host_step
    steps = {"n": 0}

    def watched(self, *a, **k):
        inside["on"] = True
        try:
            return real_step(self, *a, **k)
        finally:
            inside["on"] = False
            steps["n"] += 1

    monkeypatch.setattr(TrainStep, "_host_step", watched)
    losses = step.run_epoch(1, 0)
    assert steps["n"] == step.steps and losses["train_loss"] > 0
    assert reads == []
    inside["on"] = True  # the spy does see a host read
    float(torch.ones(()))
    inside["on"] = False
    assert reads == ["__float__"]


def _fake_cuda(monkeypatch, step: TrainStep, fail: bool = False) -> dict[str, int]:
    """torch.cuda's graph and stream calls replaced by counters; a replay runs the step body
    eagerly (the control flow of capture and replay, checked without a GPU)."""
    import contextlib

    counts = {"capture": 0, "replay": 0}

    class Graph:
        def replay(self) -> None:
            counts["replay"] += 1
            step._device_step()

    @contextlib.contextmanager
    def graph(_g):
        counts["capture"] += 1
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        yield
        step.ctr -= 1  # a real capture records without running: undo the fake's step count

    class Stream:
        def __init__(self, *_a) -> None:
            pass

        def wait_stream(self, _s) -> None:
            pass

    for name, value in {"CUDAGraph": Graph, "graph": graph, "Stream": Stream,
                        "stream": lambda _s: contextlib.nullcontext(),
                        "current_stream": lambda *_a: Stream(),
                        "synchronize": lambda *_a: None}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    step.graphs = True  # as on a CUDA device with the memory loader
    return counts


def test_graph_is_captured_once_per_trial_not_per_epoch(trial_cfg, monkeypatch) -> None:
    cfg = trial_cfg(model={"width": 4}, train={"epochs": 3, "batch_size": 256},
                    mixup={"mode": "unsup", "k": 2, "alpha": 1.0, "rampup": 0.5},
                    data={"labeled_fraction": 0.3})
    _, step = _engine(cfg, True)
    counts = _fake_cuda(monkeypatch, step)
    for epoch in (1, 2, 3):
        losses = step.run_epoch(epoch, (epoch - 1) * step.steps)
        assert losses["train_loss"] > 0
    assert counts["capture"] == 1 and step.warm == 3  # 3 warm-up steps, then one capture
    assert counts["replay"] == 3 * step.steps - 3  # every later step of every epoch replays
    assert int(step.ctr) == step.steps


def test_failed_capture_falls_back_to_eager_in_one_line(trial_cfg, monkeypatch) -> None:
    cfg = trial_cfg(model={"width": 4}, train={"epochs": 2, "batch_size": 256})
    log: list[str] = []
    _, step = _engine(cfg, True, log)
    counts = _fake_cuda(monkeypatch, step, fail=True)
    for epoch in (1, 2):
        step.run_epoch(epoch, (epoch - 1) * step.steps)
    assert counts == {"capture": 1, "replay": 0}  # tried once, never again
    assert log == ["train.cuda_graphs: capture failed (RuntimeError: operation not permitted "
                   "when stream is capturing); running the step eagerly"]
    assert int(step.ctr) == step.steps  # every step of the epoch ran


def test_mixup_draws_of_a_mixing_mode_need_k_and_alpha() -> None:
    assert mixup_draws("erm", None, None, seed=0, epoch=1, steps=2, batch=4) == {}
    with pytest.raises(ValueError, match="mode 'sup' mixes: it needs k and alpha"):
        mixup_draws("sup", None, 1.0, seed=0, epoch=1, steps=2, batch=4)
