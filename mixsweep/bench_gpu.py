"""GPU parts of ``mixsweep bench`` (run only where CUDA is present).

1. resnet18 on a CIFAR-10-sized epoch (50k synthetic 3x32x32 images, batch
   512, memory loader): fp32, bf16 + channels_last, and bf16 + channels_last
   + torch.compile; images/s, epoch seconds, the loader's share of the epoch
   (the loader's own epoch time / the training epoch time) and GPU
   utilization sampled by nvidia-smi during the timed epoch.
2. Packing: 1, 2, 4 trials per GPU (Ray Tune, fractional ``gpu`` resources),
   each training the same model; aggregate images/s = all images / (last
   end - first start) of the timed windows.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F

from mixsweep.bench import CIFAR_EPOCH, Log, cifar_like
from mixsweep.data.loaders import make_loader
from mixsweep.data.split import labeled_split
from mixsweep.models import build_model


class Utilization:
    """Samples GPU utilization (%) with nvidia-smi every 0.2 s while active."""

    def __init__(self, index: int = 0):
        self.index, self.samples, self._stop = index, [], threading.Event()
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


def _setup(images: int, batch: int, device: torch.device, bf16: bool, cl: bool, compile_: bool):
    data = cifar_like(images)
    ld = make_loader("memory", data, labeled_split(data.train_y, 1.0, 0), batch, device,
                     augment=True, unlabeled=False, seed=0)
    torch.manual_seed(0)
    model = build_model("resnet18", 3, 10, 32).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    amp = torch.autocast(device.type, torch.bfloat16, enabled=bf16)

    def epoch(e: int, steps: int | None = None) -> int:
        n = 0
        for i, b in enumerate(ld.epoch(e)):
            if steps is not None and i >= steps:
                break
            x = b.x.contiguous(memory_format=torch.channels_last) if cl else b.x
            with amp:
                loss = F.cross_entropy(fwd(x).float(), b.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(b.y)
        return n

    return ld, epoch


def epoch_time(quick: bool, log: Log, device: torch.device) -> dict[str, Any]:
    images, batch = (4096, 256) if quick else (CIFAR_EPOCH, 512)
    out: dict[str, Any] = {"images": images, "batch": batch, "model": "resnet18"}
    variants = {"fp32": (False, False, False), "bf16_cl": (True, True, False),
                "bf16_cl_compile": (True, True, True)}
    for name, (bf16, cl, comp) in variants.items():
        ld, epoch = _setup(images, batch, device, bf16, cl, comp)
        epoch(0)  # warm-up (compile, cudnn autotune)
        torch.cuda.synchronize(device)
        with Utilization(device.index or 0) as util:
            t = time.perf_counter()
            n = epoch(1)
            torch.cuda.synchronize(device)
            sec = time.perf_counter() - t
        t = time.perf_counter()
        for _ in ld.epoch(2):
            pass
        torch.cuda.synchronize(device)
        load_s = time.perf_counter() - t
        out[name] = {"images_per_s": round(n / sec), "epoch_seconds": round(sec, 2),
                     "loader_share": round(load_s / sec, 4), "gpu_util_percent": util.mean}
        log(f"gpu epoch {name}: {n / sec:.0f} images/s, loader {load_s / sec:.1%}, util {util.mean}")
    best = max(variants, key=lambda k: out[k]["images_per_s"])
    out["best"] = best
    out["ratio_best_vs_fp32"] = round(out[best]["images_per_s"] / out["fp32"]["images_per_s"], 2)
    return out


def _pack_trial(config: dict[str, Any]) -> None:
    from ray import tune

    device = torch.device("cuda")
    _, epoch = _setup(config["images"], config["batch"], device, True, True, False)
    epoch(0, steps=5)  # warm-up
    torch.cuda.synchronize(device)
    t0 = time.time()
    n = epoch(1)
    torch.cuda.synchronize(device)
    tune.report({"images": n, "t0": t0, "t1": time.time()})


def packing(quick: bool, log: Log) -> dict[str, Any]:
    import ray
    from ray import tune

    images, batch = (4096, 256) if quick else (20_000, 512)
    out: dict[str, Any] = {"images_per_trial": images, "batch": batch,
                           "setup": "resnet18 bf16 + channels_last, memory loader"}
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for k in (1, 2, 4):
            with tempfile.TemporaryDirectory() as tmp:
                trainable = tune.with_resources(_pack_trial, {"cpu": 1, "gpu": 1 / k})
                space = {"images": images, "batch": batch, "i": tune.grid_search(list(range(k)))}
                with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON
                    res = tune.Tuner(trainable, param_space=space, run_config=tune.RunConfig(
                        storage_path=tmp, name=f"pack{k}", verbose=0)).fit()
                rows = [r.metrics for r in res if r.error is None]
            if len(rows) < k:
                out[f"trials_{k}"] = {"error": f"{k - len(rows)} of {k} trials failed"}
                continue
            span = max(r["t1"] for r in rows) - min(r["t0"] for r in rows)
            agg = sum(r["images"] for r in rows) / span
            out[f"trials_{k}"] = {"aggregate_images_per_s": round(agg)}
            log(f"gpu packing {k} per GPU: {agg:.0f} images/s aggregate")
    finally:
        ray.shutdown()
    base = out["trials_1"].get("aggregate_images_per_s")
    for k in (2, 4):
        if base and "aggregate_images_per_s" in out[f"trials_{k}"]:
            out[f"ratio_{k}_vs_1"] = round(out[f"trials_{k}"]["aggregate_images_per_s"] / base, 2)
    return out


def gpu_bench(quick: bool, log: Log) -> dict[str, Any]:
    device = torch.device("cuda", torch.cuda.current_device())
    return {"device": torch.cuda.get_device_name(device),
            "epoch": epoch_time(quick, log, device), "packing": packing(quick, log)}
