"""The training checks of ``mixsweep selftest`` (``selftest.py`` runs them and prints the table).

Every training run here is the trial's own engine: ``engine.Engine`` (model, optimizer,
loader, ``step.TrainStep``) given a dataset through its ``data=`` argument, as ``mixsweep
bench`` drives it; nothing copies the step. A mode's run: digits (the embedded data),
cnn width 16, batch 128, half the labels, ``train.epochs: 1`` (12 steps, so the cosine lr
and the consistency ramp both move), run as two epochs of ``STEPS`` steps, then the test
accuracy and the per-layer NL.

Graph vs eager tolerance (``TOLERANCE``). The captured step is not the eager step bit for
bit: it runs the fused optimizer with a float32 lr tensor (eager: the foreach optimizer,
a Python float lr), takes the EMA decay and consistency weight from device tables, and
cuDNN's backward kernels are not deterministic. Each step the weights differ in the last
float32 bits (~1e-7 relative) and 12 steps of SGD amplify that: on the CPU the same
device-scalar body ends 2e-7 apart from the eager step here (mode both; tests/test_step.py
allows 1e-4 over longer runs). fp32: losses within 1e-3 relative (+1e-4 absolute, the
unsup term is ~1e-4), accuracy within 0.01 (3 of the 360 digits test images), each
layer's NL within 2e-2 relative (+1e-4 absolute: the affine stem_pre is ~1e-14). That
leaves room for GPU noise ten times the CPU's 1e-4 bound, and stays far under what a
real fault moves: a graph replaying stale per-epoch tables, or a frozen lr, moves the
losses by 7% to 56% (tests/test_selftest.py). bf16 autocast rounds to 8 mantissa bits
(2^-8 = 0.4%): a 1e-7 weight difference flips some roundings by one bf16 step, so bf16
gets losses within 2e-2, accuracy within 0.03 and NL (measured in fp32 on the trained
weights) within 5e-2.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mixsweep.data import ArrayDataset, load_dataset, make_loader
from mixsweep.data.split import labeled_split
from mixsweep.engine import Engine
from mixsweep.names import CONSISTENCY_MODES, MODES
from mixsweep.spec import TrialConfig
from mixsweep.step import TrialFailed

STEPS = 6  # steps per epoch of a mode's run; two epochs (the config's one epoch of 12 steps)
BF16_VS_FP32 = 0.05  # first-epoch loss, bf16 vs fp32 eager: relative (a bf16 step is 0.4%)
MIN_RATIO = 0.5  # the step's images/s below half the bare loop's: something is badly wrong
AFFINE_NL = 1e-6  # stem_pre is a conv (affine): its NL is float rounding, ~1e-14


@dataclass
class Row:
    """One line of the selftest table: status is pass, fail or skip."""

    check: str
    status: str
    figure: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Tolerance:
    loss_rel: float
    loss_abs: float
    acc_abs: float
    nl_rel: float
    nl_abs: float

    def __str__(self) -> str:
        return (f"loss rel {self.loss_rel:g}, acc {self.acc_abs:g}, NL rel {self.nl_rel:g}")


def guarded(check: str, fn: Callable[[], Row | list[Row]]) -> list[Row]:
    """``fn``'s rows, or one failed row naming the exception it raised."""
    try:
        out = fn()
    except Exception as err:  # noqa: BLE001 - a selftest reports what broke, it does not crash
        return [Row(check, "fail", "", _why(err))]
    return out if isinstance(out, list) else [out]


def _why(err: Exception) -> str:
    msg = " ".join(str(err).split())[:300]
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


TOLERANCE = {
    "fp32": Tolerance(loss_rel=1e-3, loss_abs=1e-4, acc_abs=0.01, nl_rel=2e-2, nl_abs=1e-4),
    "bf16": Tolerance(loss_rel=2e-2, loss_abs=1e-3, acc_abs=0.03, nl_rel=5e-2, nl_abs=1e-3),
}


# --------------------------------------------------------------------------- records
def mode_config(mode: str, device: torch.device, *, precision: str = "fp32",
                graphs: bool = False, compile: bool = False) -> TrialConfig:
    """The selftest's run of ``mode`` (module docstring); bf16 comes with channels_last."""
    return TrialConfig(
        data={"dataset": "digits", "labeled_fraction": 0.5},
        model={"arch": "cnn", "width": 16},
        train={"epochs": 1, "batch_size": 128, "device": device.type, "precision": precision,
               "channels_last": precision == "bf16", "cuda_graphs": graphs, "compile": compile},
        mixup={"mode": mode},
        linearity={"probes": 128},
    )


def digits() -> ArrayDataset:
    return load_dataset("digits")


def train_record(cfg: TrialConfig, data: ArrayDataset, device: torch.device) -> dict[str, Any]:
    """Two epochs of ``STEPS`` steps through ``engine.Engine``; losses, accuracy, NL, timings.

    ``error``: why training stopped (a non-finite loss, any error); ``notes``: what the step said on
    stderr (a CUDA graph fallback); ``captured``: whether a CUDA graph was captured.
    """
    said = io.StringIO()
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"loss": {}, "error": None, "captured": False}
    with contextlib.redirect_stderr(said):
        try:
            run = Engine(cfg, device, data=data)
            for epoch in (1, 2):
                for key, v in run.train_epoch(epoch, limit=STEPS).items():
                    rec["loss"][f"epoch {epoch} {key.removeprefix('train_')}"] = v
            rec["train_seconds"] = time.perf_counter() - t0
            rec["nl"] = run.measure()["nl"]
            rec["acc"] = run.evaluate()
            rec["captured"] = getattr(run.trainer(), "graph", None) is not None
        except TrialFailed as err:
            rec["error"] = str(err)
        except Exception as err:  # noqa: BLE001 - a CUDA error, say: this mode's row says it
            rec["error"] = _why(err)
    rec.setdefault("train_seconds", time.perf_counter() - t0)
    rec["notes"] = [ln for ln in said.getvalue().splitlines() if ln.strip()]
    return rec


def mode_problems(mode: str, rec: dict[str, Any], num_classes: int) -> list[str]:
    """What is wrong with a mode's record, in plain words ([] when nothing)."""
    if rec["error"]:
        return [rec["error"]]
    out = []
    loss, chance = rec["loss"], math.log(num_classes)
    first = loss["epoch 1 loss"]
    if not 0.5 * chance <= first <= 1.5 * chance:
        out.append(f"first-epoch loss {first:.4g} is not near ln({num_classes}) = {chance:.3g} "
                   "(an untrained network's cross-entropy)")
    if not loss["epoch 2 sup"] < loss["epoch 1 sup"]:
        out.append(f"the labeled loss did not fall ({loss['epoch 1 sup']:.4g} -> "
                   f"{loss['epoch 2 sup']:.4g})")
    unsup = loss["epoch 2 unsup"]
    if mode in CONSISTENCY_MODES and not unsup > 0:
        out.append(f"mode {mode} has no consistency loss (unsup = {unsup:g})")
    if mode not in CONSISTENCY_MODES and unsup != 0:
        out.append(f"mode {mode} has a consistency loss ({unsup:g}); it should have none")
    if not rec["acc"] >= 2 / num_classes:
        out.append(f"test accuracy {rec['acc']:.3f} is not above twice chance ({2 / num_classes:.2f})")
    bad = [k for k, v in rec["nl"].items() if not math.isfinite(v)]
    if bad:
        out.append(f"NL is not finite at {', '.join(bad)}")
    if rec["nl"].get("stem_pre", 0.0) > AFFINE_NL:
        out.append(f"NL of the affine stem_pre is {rec['nl']['stem_pre']:.2g}, not ~0")
    return out


def mode_figure(rec: dict[str, Any]) -> str:
    if rec["error"]:
        return ""
    loss = rec["loss"]
    return (f"loss {loss['epoch 1 loss']:.3f}->{loss['epoch 2 loss']:.3f}, acc {rec['acc']:.3f}, "
            f"NL pool {rec['nl'].get('pool', float('nan')):.3f}, {rec['train_seconds']:.1f} s")


def mode_row(mode: str, rec: dict[str, Any], num_classes: int) -> Row:
    problems = mode_problems(mode, rec, num_classes)
    return Row(f"mode {mode}", "fail" if problems else "pass", mode_figure(rec),
               "; ".join(problems) or f"{2 * STEPS} steps through engine.Engine (digits, cnn)")


# --------------------------------------------------------------------------- comparisons
def _close(a: float, b: float, rel: float, absolute: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= absolute + rel * abs(a)


def compare_records(ref: dict[str, Any], other: dict[str, Any], tol: Tolerance) -> tuple[list[str], str]:
    """``other`` against ``ref`` (losses, accuracy, NL): the differences beyond ``tol`` as
    plain phrases ([] when within it), and the largest differences as a figure."""
    problems, worst_loss, worst_nl = [], 0.0, 0.0
    for key, a in ref["loss"].items():
        b = other["loss"].get(key, float("nan"))
        worst_loss = max(worst_loss, abs(a - b) / max(abs(a), 1e-12))
        if not _close(a, b, tol.loss_rel, tol.loss_abs):
            problems.append(f"{key} {b:.6g} vs {a:.6g}")
    d_acc = abs(ref["acc"] - other["acc"])
    if not d_acc <= tol.acc_abs:
        problems.append(f"accuracy {other['acc']:.4f} vs {ref['acc']:.4f}")
    for layer, a in ref["nl"].items():
        b = other["nl"].get(layer, float("nan"))
        worst_nl = max(worst_nl, abs(a - b) / max(abs(a), tol.nl_abs))
        if not _close(a, b, tol.nl_rel, tol.nl_abs):
            problems.append(f"NL {layer} {b:.4g} vs {a:.4g}")
    figure = f"max rel diff: loss {worst_loss:.1e}, NL {worst_nl:.1e}; acc diff {d_acc:.3f}"
    return problems, figure


def comparison_row(check: str, what: str, ref: dict[str, Any], other: dict[str, Any],
                   tol: Tolerance) -> Row:
    """A row saying plainly whether ``other`` matches ``ref`` within ``tol``."""
    if ref["error"]:
        return Row(check, "skip", "", "skipped: the eager run it is compared with failed")
    if other["error"]:
        return Row(check, "fail", "", f"{what} failed: {other['error']}")
    problems, figure = compare_records(ref, other, tol)
    if problems:
        return Row(check, "fail", figure, f"{what} does NOT match eager beyond the tolerance "
                   f"({tol}): " + "; ".join(problems))
    return Row(check, "pass", figure, f"{what} matches eager within {tol}")


def graph_row(check: str, cfg: TrialConfig, data: ArrayDataset, device: torch.device,
              eager: dict[str, Any]) -> Row:
    """``cfg`` with ``train.cuda_graphs`` on: captured once, and the same as ``eager``."""
    graphed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"cuda_graphs": True})})
    rec = train_record(graphed, data, device)
    if rec["error"] is None and not rec["captured"]:
        why = "; ".join(rec["notes"]) or "no graph was captured"
        return Row(check, "fail", "", f"the CUDA graph path did not run: {why}")
    return comparison_row(check, "the CUDA graph path", eager, rec, TOLERANCE[cfg.train.precision])


def bf16_row(data: ArrayDataset, device: torch.device, fp32: dict[str, Any]) -> tuple[Row, dict[str, Any]]:
    """Mode both in bf16 + channels_last, eager: a sound run, first loss near fp32's."""
    rec = train_record(mode_config("both", device, precision="bf16"), data, device)
    problems = mode_problems("both", rec, data.num_classes)
    if not rec["error"] and not fp32["error"]:
        a, b = fp32["loss"]["epoch 1 loss"], rec["loss"]["epoch 1 loss"]
        if not _close(a, b, BF16_VS_FP32, 0.0):
            problems.append(f"first-epoch loss {b:.4g} vs fp32 {a:.4g} (more than "
                            f"{BF16_VS_FP32:.0%} apart)")
    detail = "; ".join(problems) or f"mode both, eager; first loss within {BF16_VS_FP32:.0%} of fp32"
    return Row("bf16 + channels_last", "fail" if problems else "pass", mode_figure(rec), detail), rec


def compile_row(data: ArrayDataset, device: torch.device, eager: dict[str, Any],
                skip: str | None) -> Row:
    """``torch.compile`` (mode both) vs eager; ``skip``: why not (the sweep does not ask)."""
    if skip is not None:
        return Row("torch.compile", "skip", "", skip)
    rec = train_record(mode_config("both", device, compile=True), data, device)
    row = comparison_row("torch.compile", "the compiled step", eager, rec, TOLERANCE["fp32"])
    row.figure = f"{row.figure}, {rec['train_seconds']:.0f} s with compilation".lstrip(", ")
    return row


# --------------------------------------------------------------------------- speed and parts
def throughput_rows(device: torch.device) -> list[Row]:
    """The step's images/s against the bench's bare loop (same model, batch and data)."""
    from mixsweep.bench_gpu import rate_bare, rate_engine

    cuda = device.type == "cuda"
    arch, bf16 = ("resnet18", True) if cuda else ("cnn", False)
    rows = []
    for batch, steps in (((128, 16), (512, 16)) if cuda else ((8, 2), (32, 2))):
        sz = {"images": batch * steps, "arch": arch, "bf16": bf16}
        bare, _ = rate_bare(sz, batch, device)
        eng = rate_engine(sz, batch, device, graphs=False)
        ratio = eng / bare
        # a CPU's figure is its compute, and two steps on shared cores are load noise: no gate
        gate = f"fails below {MIN_RATIO}x" if cuda else "a figure only on CPU (no gate)"
        rows.append(Row(f"step vs bare loop, batch {batch}",
                        "fail" if cuda and ratio < MIN_RATIO else "pass",
                        f"{eng:,.0f} vs {bare:,.0f} images/s ({ratio:.2f}x)",
                        f"{arch}{', bf16 + channels_last' if bf16 else ''}, CIFAR-shaped, "
                        f"{steps} steps after {steps} warm-up; {gate}"))
    return rows


def nl_probe_row(device: torch.device, data: ArrayDataset) -> Row:
    """The time of one ``layer_nonlinearity`` (fresh weights); NL finite, ~0 where affine.
    CUDA: resnet18 on 512 CIFAR-shaped probes (a sweep's cost); CPU: the mode rows' cnn on
    the digits test set (its kernels are warm: a CPU's first call of a new shape is slow)."""
    from mixsweep.bench_common import cifar_like
    from mixsweep.linearity import layer_nonlinearity
    from mixsweep.models import build_model

    torch.manual_seed(0)
    if device.type == "cuda":
        what, model = "resnet18, 512 CIFAR-shaped probes", build_model("resnet18", 3, 10, 32)
        x = cifar_like(512).train_x
    else:
        what, model = f"cnn width 16, {len(data.test_x)} digits probes", build_model("cnn", 1, 10, 8, 16)
        x = data.test_x
    probes = ((x.float() - 127.5) / 64).to(device)
    model.to(device)
    t = time.perf_counter()
    nl = layer_nonlinearity(model, probes)
    sec = time.perf_counter() - t
    bad = [k for k, v in nl.items() if not math.isfinite(v)]
    problems = [f"NL not finite at {', '.join(bad)}"] if bad else []
    if nl.get("stem_pre", 0.0) > AFFINE_NL:
        problems.append(f"NL of the affine stem_pre is {nl['stem_pre']:.2g}, not ~0")
    return Row("NL probe", "fail" if problems else "pass", f"{sec:.2f} s",
               "; ".join(problems) or f"linearity.layer_nonlinearity, {what}, k=2")


def memory_loader_row(data: ArrayDataset, device: torch.device) -> Row:
    """The memory loader: up-front draws give epoch()'s batches; shapes; images/s."""
    split = labeled_split(data.train_y, 0.5, 0)
    ld = make_loader("memory", data, split, 128, device, augment=True, unlabeled=True, seed=0)
    table = {k: v.to(device) for k, v in ld.draws(1).items()}
    problems = []
    for i, b in enumerate(ld.epoch(1)):
        d = ld.batch_at(table, i)
        if not (torch.equal(b.x, d.x) and torch.equal(b.y, d.y) and torch.equal(b.xu, d.xu)):
            problems.append(f"batch {i}: draws + batch_at differ from epoch()")
            break
        if b.x.shape != (128, *data.shape) or not bool(torch.isfinite(b.x).all()):
            problems.append(f"batch {i}: images of shape {tuple(b.x.shape)} or not finite")
            break
    t = time.perf_counter()
    n = sum(len(b.y) for b in ld.epoch(2))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = n / (time.perf_counter() - t)
    return Row("memory loader", "fail" if problems else "pass", f"{rate:,.0f} images/s",
               "; ".join(problems) or f"{data.name}, crop + flip on {device.type}, labeled + "
               "unlabeled; epoch() equals the up-front draws")


def ffcv_row(data: ArrayDataset, round_trip: bool) -> Row:
    """FFCV importable (its version); with ``round_trip``, a tiny .beton written and read."""
    from importlib.metadata import version

    from mixsweep.data.ffcv_loader import FfcvUnavailable, prepare, require_ffcv

    try:
        require_ffcv()
    except FfcvUnavailable as err:
        return Row("ffcv", "fail" if round_trip else "skip", "",
                   ("the sweep uses loader ffcv: " if round_trip else "not installed (optional): ")
                   + str(err))
    ver = f"ffcv {version('ffcv')}"
    if not round_trip:
        return Row("ffcv", "pass", ver, "imports (the .beton round trip runs when the --sweep "
                   "uses loader: ffcv: it adds 10-45 s, FFCV's numba compilation)")
    split = labeled_split(data.train_y, 1.0, 0)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
        prepare(data, tmp)
        ff = make_loader("ffcv", data, split, 128, cpu, augment=True, unlabeled=False, seed=0,
                         ffcv_dir=tmp, num_workers=1)
        mem = make_loader("memory", data, split, 128, cpu, augment=True, unlabeled=False, seed=0)
        same = all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
                   for a, b in zip(ff.epoch(0), mem.epoch(0), strict=True))
    return Row("ffcv", "pass" if same else "fail", ver,
               f"{data.name} .beton written and read: batches "
               + ("equal the memory loader's" if same else "DIFFER from the memory loader's"))


def tiny_step(device: torch.device) -> Row:
    """One step of the trial's engine on tiny synthetic data (the preflight's device check)."""
    from mixsweep.data.datasets import synthetic

    cfg = TrialConfig(data={"dataset": "synthetic"}, model={"arch": "cnn", "width": 4},
                      train={"epochs": 1, "batch_size": 32, "device": device.type},
                      linearity={"probes": 2})
    t = time.perf_counter()
    run = Engine(cfg, device, data=synthetic(64, 8, 10, 8, 0))
    try:
        loss = run.train_epoch(1, limit=1)["train_loss"]
    except TrialFailed as err:
        return Row(f"step on {device}", "fail", "", str(err))
    ok = math.isfinite(loss) and loss > 0
    return Row(f"step on {device}", "pass" if ok else "fail",
               f"loss {loss:.3f}, {time.perf_counter() - t:.2f} s",
               "one step of engine.Engine (cnn, batch 32)" if ok else f"loss {loss}")


def modes_with_graphs(device: torch.device, data: ArrayDataset, log) -> tuple[list[Row], dict[str, Any]]:
    """A row per mode (eager), then per mode the CUDA graph row (skipped without CUDA)."""
    recs, rows = {}, []
    for mode in MODES:
        recs[mode] = train_record(mode_config(mode, device), data, device)
        rows.append(log(mode_row(mode, recs[mode], data.num_classes)))
    for mode in MODES:
        if device.type != "cuda":
            rows.append(log(Row(f"graphs {mode}", "skip", "", "skipped: no CUDA")))
        else:
            rows.append(log(graph_row(f"graphs {mode}", mode_config(mode, device), data, device,
                                      recs[mode])))
    return rows, recs
