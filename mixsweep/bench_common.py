"""What the parts of ``mixsweep bench`` share (``bench.py`` and ``bench_gpu.py`` import it).

CIFAR-shaped synthetic data (so a fresh clone needs no download), the machine
description printed with every run, the device sync that brackets a timing, and
``engine``: the trial's own engine (``engine.Engine``) built from a config at the
trial defaults, which every timed run except a bare baseline trains.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Callable
from typing import Any

import torch

from mixsweep.data.base import default_workers
from mixsweep.data.datasets import ArrayDataset, synthetic
from mixsweep.engine import Engine
from mixsweep.spec import TrialConfig

CIFAR_EPOCH = 50_000  # images in a CIFAR-10 training epoch (extrapolation target)
Log = Callable[[str], None]


def cifar_like(n: int, seed: int = 0) -> ArrayDataset:
    """Synthetic CIFAR-shaped data: 3x32x32 uint8, 10 classes, crop pad 4, flips."""
    return dataclasses.replace(synthetic(n, 256, 10, 32, seed), name="cifar_like", pad=4)


def machine() -> dict[str, Any]:
    """The CPU model, cores, torch threads, versions, GPU and load: printed beside figures."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": default_workers(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); a timing read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine(data: ArrayDataset, device: torch.device, *, arch: str, batch: int, loader: str = "memory",
           ffcv_dir: str | None = None, bf16: bool = False, cuda_graphs: bool = False) -> Engine:
    """The trial's own engine on ``data``: what ``mixsweep trial`` runs, erm, SGD at its defaults.

    Args:
        data: the dataset to train on (``cifar_like`` in the benchmarks).
        device: where to train.
        arch: ``model.arch``; batch: ``train.batch_size``; loader: ``data.loader``.
        ffcv_dir: the .beton folder (loader ffcv only).
        bf16: bf16 autocast with channels_last; cuda_graphs: ``train.cuda_graphs``.
    """
    cfg = TrialConfig(
        data={"dataset": "cifar10", "loader": loader, **({"ffcv_dir": ffcv_dir} if ffcv_dir else {})},
        model={"arch": arch},
        train={"batch_size": batch, "epochs": 2, "device": device.type,
               "precision": "bf16" if bf16 else "fp32", "channels_last": bf16,
               "cuda_graphs": cuda_graphs},
        linearity={"probes": 2},
    )
    return Engine(cfg, device, data=data)
