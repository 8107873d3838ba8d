"""The ``gpu`` part of ``mixsweep bench``: the trial's own step against a bare loop.

Every timed run except the bare baseline is the trial's engine (``engine.Engine``
+ ``step.TrainStep``: the step ``mixsweep trial`` runs), on CIFAR-shaped
synthetic data, resnet18, bf16 + channels_last, memory loader. It prints the
ratios of issue 13:

1. ``epoch``: the engine vs a bare loop (the minimal SGD loop below, kept bare
   on purpose as the reference) at batch 512, one CIFAR-sized epoch each:
   ``ratio_engine_vs_bare``.
2. ``small_batch``: one trial at batch 128, ``train.cuda_graphs`` on vs off:
   ``ratio_graphs_vs_eager``.
3. ``packing``: 1, 2, 4 graphed trials at batch 128 per GPU (Ray Tune,
   fractional ``gpu`` resources); aggregate images/s = all images / (last end
   - first start) of the timed epochs; ``ratio_best_vs_one_eager`` divides the
   best by the eager trial of part 2.

Without CUDA, ``--quick`` runs the same code on the CPU with tiny sizes and
the small ``cnn`` (a smoke test of this code, not a measurement: graphs fall
back to eager there, so the ratios are about 1).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F

from mixsweep.bench_common import CIFAR_EPOCH, Log, cifar_like, engine, sync
from mixsweep.data.loaders import make_loader
from mixsweep.data.split import labeled_split
from mixsweep.models import build_model


class Utilization:
    """Samples GPU utilization (%) with nvidia-smi every 0.2 s while active."""

    def __init__(self, index: int = 0):
        self.index, self._stop = index, threading.Event()
        self.samples: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cmd = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu",
               "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self._stop.wait(0.2)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def _sizes(quick: bool, device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":  # the CPU smoke: the same code, tiny
        return {"images": 128, "big": 32, "small": 16, "arch": "cnn", "pack": (1, 2), "bf16": False}
    return {"images": 4096 if quick else CIFAR_EPOCH, "big": 512, "small": 128, "arch": "resnet18",
            "pack": (1, 2, 4), "bf16": True}


def bare_loop(images: int, batch: int, device: torch.device, arch: str, bf16: bool):
    """The reference: a minimal SGD loop over the memory loader (no mixup, no EMA, no tracking)."""
    data = cifar_like(images)
    ld = make_loader("memory", data, labeled_split(data.train_y, 1.0, 0), batch, device,
                     augment=True, unlabeled=False, seed=0)
    torch.manual_seed(0)
    model = build_model(arch, 3, 10, 32).to(device)
    cl = bf16  # channels_last with bf16 (the GPU setting)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    amp = torch.autocast(device.type, torch.bfloat16, enabled=bf16)

    def epoch(e: int) -> int:
        n = 0
        for b in ld.epoch(e):
            x = b.x.contiguous(memory_format=torch.channels_last) if cl else b.x
            with amp:
                loss = F.cross_entropy(model(x).float(), b.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(b.y)
        return n

    return epoch


def rate_bare(sz: dict[str, Any], batch: int, device: torch.device) -> tuple[float, float | None]:
    """Images/s of one epoch of ``bare_loop`` after a warm-up epoch, and the mean GPU
    utilization (%) meanwhile (None off CUDA or without nvidia-smi).

    Args:
        sz: ``images`` (the epoch's size), ``arch``, ``bf16``.
        batch: the batch size.
        device: where to train.
    """
    epoch = bare_loop(sz["images"], batch, device, sz["arch"], sz["bf16"])
    epoch(0)  # warm-up (cudnn autotune, allocator)
    sync(device)
    with Utilization(device.index or 0) if device.type == "cuda" else contextlib.nullcontext() as u:
        t = time.perf_counter()
        n = epoch(1)
        sync(device)
        sec = time.perf_counter() - t
    return n / sec, (u.mean if u is not None else None)


def rate_engine(sz: dict[str, Any], batch: int, device: torch.device, graphs: bool) -> float:
    """Images/s of one epoch of the trial's engine (``bench_common.engine``) after a warm-up
    epoch, timed by the engine's ``train_seconds`` as a trial records it.

    Args:
        sz: ``images``, ``arch``, ``bf16`` (as for ``rate_bare``).
        batch: the batch size.
        device: where to train.
        graphs: ``train.cuda_graphs``.
    """
    run = engine(cifar_like(sz["images"]), device, arch=sz["arch"], batch=batch,
                 bf16=sz["bf16"], cuda_graphs=graphs)
    run.train_epoch(0)  # warm-up; with graphs: the eager warm-up steps and the one capture
    before = run.train_seconds
    run.train_epoch(1)  # train_seconds: the epoch up to its final sync, as a trial records it
    return run.steps_per_epoch * batch / (run.train_seconds - before)


def epoch_time(sz: dict[str, Any], log: Log, device: torch.device) -> dict[str, Any]:
    b = sz["big"]
    bare, util = rate_bare(sz, b, device)
    eng = rate_engine(sz, b, device, graphs=False)
    out = {"images": sz["images"], "batch": b, "model": sz["arch"],
           "bare_images_per_s": round(bare), "bare_gpu_util_percent": util,
           "engine_images_per_s": round(eng), "ratio_engine_vs_bare": round(eng / bare, 3)}
    log(f"gpu batch {b}: bare {bare:.0f} images/s, engine {eng:.0f} images/s "
        f"(ratio {eng / bare:.3f})")
    return out


def small_batch(sz: dict[str, Any], log: Log, device: torch.device) -> dict[str, Any]:
    b = sz["small"]
    eager = rate_engine(sz, b, device, graphs=False)
    graphed = rate_engine(sz, b, device, graphs=True)
    out = {"images": sz["images"], "batch": b, "model": sz["arch"],
           "eager_images_per_s": round(eager), "cuda_graphs_images_per_s": round(graphed),
           "ratio_graphs_vs_eager": round(graphed / eager, 3)}
    log(f"gpu batch {b}: eager {eager:.0f}, cuda_graphs {graphed:.0f} images/s "
        f"(ratio {graphed / eager:.3f})")
    return out


def _pack_trial(config: dict[str, Any]) -> dict[str, Any]:
    sz = config["sizes"]
    device = torch.device("cuda" if config["cuda"] else "cpu")
    run = engine(cifar_like(sz["images"]), device, arch=sz["arch"], batch=sz["small"],
                 bf16=sz["bf16"], cuda_graphs=True)
    run.train_epoch(0)  # warm-up and capture
    t0 = time.time()
    run.train_epoch(1)
    return {"images": run.steps_per_epoch * sz["small"], "t0": t0, "t1": time.time()}


def packing(sz: dict[str, Any], log: Log, device: torch.device, one_eager: float) -> dict[str, Any]:
    from mixsweep.tune_bench import local_ray, run_functions

    cuda = device.type == "cuda"
    out: dict[str, Any] = {"images_per_trial": sz["images"], "batch": sz["small"],
                           "setup": f"{sz['arch']}, train.cuda_graphs, memory loader"}
    with local_ray(None if cuda else max(sz["pack"])):
        for k in sz["pack"]:
            res: dict[str, float] = {"cpu": 1.0, "gpu": 1 / k} if cuda else {"cpu": 1.0}
            config = {"sizes": {**sz, "pack": list(sz["pack"])}, "cuda": cuda}
            rows = [r for r in run_functions(_pack_trial, [config] * k, res, name=f"pack{k}")
                    if r is not None]
            if len(rows) < k:
                out[f"trials_{k}"] = {"error": f"{k - len(rows)} of {k} trials failed"}
                continue
            span = max(r["t1"] for r in rows) - min(r["t0"] for r in rows)
            agg = sum(r["images"] for r in rows) / span
            out[f"trials_{k}"] = {"aggregate_images_per_s": round(agg)}
            log(f"gpu packing {k} per {'GPU' if cuda else 'CPU run'}: {agg:.0f} images/s aggregate")
    aggs = {k: out[f"trials_{k}"]["aggregate_images_per_s"] for k in sz["pack"]
            if "aggregate_images_per_s" in out[f"trials_{k}"]}
    if aggs:
        best = max(aggs, key=lambda k: aggs[k])
        out["best_trials_per_gpu"] = best
        out["ratio_best_vs_one_eager"] = round(aggs[best] / one_eager, 3)
    return out


def gpu_bench(quick: bool, log: Log, device: torch.device | None = None) -> dict[str, Any]:
    """The three parts on ``device`` (default: the current CUDA device)."""
    device = device or torch.device("cuda", torch.cuda.current_device())
    sz = _sizes(quick, device)
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16 + channels_last" if sz["bf16"] else "fp32",
    }
    if device.type != "cuda":
        out["note"] = ("CPU smoke of the GPU part (no CUDA device): tiny sizes, cnn, "
                       "graphs fall back to eager; not a measurement")
    out["epoch"] = epoch_time(sz, log, device)
    out["small_batch"] = small_batch(sz, log, device)
    out["packing"] = packing(sz, log, device, out["small_batch"]["eager_images_per_s"])
    return out
