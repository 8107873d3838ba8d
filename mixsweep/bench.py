"""``mixsweep bench``: loader, trainer, nonlinearity and scheduler benchmarks.

Each part measures its alternatives in one run and prints them side by side
with their ratio (benchmarks, not timed tests). Data is CIFAR-shaped and
synthetic (3x32x32 uint8, 10 classes, pad 4, flips), so a fresh clone needs
no download. Trainer and nonlinearity timings on CPU train a few steps of the trial's
own step (``bench_common.engine``: ``engine.Engine`` + ``step.TrainStep``) and extrapolate
per image to a 50k-image CIFAR epoch (the method is in the output). The GPU
part (``bench_gpu.py``) runs where CUDA is present; with ``--quick`` and no
CUDA it runs the same code on the CPU as a smoke test. What the parts share
(data, timing sync, the engine builder) is ``bench_common.py``.

Ray is imported only by ``tune.py``, ``tune_bench.py`` and ``ray_access.py``: ``scheduler()``
runs its trials through ``tune.run_functions``; the ``driver`` part
(``bench_driver.py``) measures the launch's own Tuner at scale.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any, TypedDict

import torch

from mixsweep.bench_common import CIFAR_EPOCH, Log, cifar_like, engine, machine, sync
from mixsweep.bench_gpu import gpu_bench
from mixsweep.data.base import default_workers
from mixsweep.data.datasets import ArrayDataset
from mixsweep.data.ffcv_loader import ffcv_available, prepare
from mixsweep.data.loaders import make_loader
from mixsweep.data.split import labeled_split
from mixsweep.linearity import layer_stats
from mixsweep.models import build_model
from mixsweep.spec import LinearityConfig

PARTS = ("loader", "trainer", "nonlinearity", "scheduler", "driver", "gpu", "store")

# default sizes (about 5 minutes on 2 busy cores) and --quick sizes (a smoke run)
class Sizes(TypedDict):
    """One size of the CPU parts (full or ``--quick``)."""

    images: int
    batch: int
    train_steps: dict[str, int]  # per architecture
    train_batch: int
    probes: int
    trials: int


SIZES: dict[bool, Sizes] = {  # keyed by quick
    False: {"images": 10_000, "batch": 512, "train_steps": {"cnn": 6, "resnet18": 2},
            "train_batch": 128, "probes": 512, "trials": 32},
    True: {"images": 1_024, "batch": 128, "train_steps": {"cnn": 2, "resnet18": 1},
           "train_batch": 32, "probes": 32, "trials": 2},
}


def _loaders(data: ArrayDataset, batch: int, device: torch.device, ffcv_dir: str | None):
    split = labeled_split(data.train_y, 1.0, 0)
    kinds = ["memory", "torch"] + (["ffcv"] if ffcv_dir else [])
    for kind in kinds:
        yield kind, make_loader(kind, data, split, batch, device, augment=True, unlabeled=False,
                                seed=0, ffcv_dir=ffcv_dir)


def _ffcv_dir(data: ArrayDataset, tmp: str, out: dict[str, Any]) -> str | None:
    if not ffcv_available():
        out["ffcv"] = "not installed (pip install 'mixsweep[ffcv]')"
        return None
    t = time.perf_counter()
    prepare(data, tmp, num_workers=default_workers())
    out["ffcv_prepare_seconds"] = round(time.perf_counter() - t, 2)
    return tmp


def loader(quick: bool, log: Log, device: torch.device | None = None) -> dict[str, Any]:
    """Images/s of an augmented epoch (best of 3, after a warm-up epoch), per loader kind.

    Best of 3 for every kind alike: one epoch of 10k images lasts ~0.1 s in
    memory, short enough for one hiccup of a shared machine to halve it.
    """
    sz, device = SIZES[quick], device or torch.device("cpu")
    data = cifar_like(sz["images"])
    out: dict[str, Any] = {"images": sz["images"], "batch": sz["batch"], "device": str(device),
                           "torch_num_workers": default_workers(), "augment": "crop pad 4 + flip"}
    with tempfile.TemporaryDirectory() as tmp:
        ffcv_dir = _ffcv_dir(data, tmp, out)
        for kind, ld in _loaders(data, sz["batch"], device, ffcv_dir):
            for _ in ld.epoch(0):  # warm-up: workers start, numba compiles
                pass
            rates = []
            for epoch in (1, 2, 3):
                sync(device)
                t = time.perf_counter()
                n = sum(len(b.y) for b in ld.epoch(epoch))
                sync(device)
                rates.append(n / (time.perf_counter() - t))
            out[f"{kind}_images_per_s"] = round(max(rates))
            log(f"loader {kind}: {out[f'{kind}_images_per_s']} images/s")
            del ld
    base = out["torch_images_per_s"]
    out["ratio_memory_vs_torch"] = round(out["memory_images_per_s"] / base, 2)
    if "ffcv_images_per_s" in out:
        out["ratio_ffcv_vs_torch"] = round(out["ffcv_images_per_s"] / base, 2)
    return out


def trainer(quick: bool, log: Log) -> dict[str, Any]:
    """The trial's step (``engine``) with cnn / resnet18 per loader for a few steps; per-image
    time x 50k = epoch estimate; the loader's share: the loader alone over the same steps."""
    sz, device = SIZES[quick], torch.device("cpu")
    data = cifar_like(sz["images"])
    out: dict[str, Any] = {"batch": sz["train_batch"], "steps": sz["train_steps"],
                           "method": f"the trial's step (Engine.train_epoch): {sz['train_steps']} "
                                     f"steps after 1 warm-up step; epoch_seconds = seconds per image "
                                     f"x {CIFAR_EPOCH}; loader_share = the loader alone over the "
                                     f"same steps / the training time"}
    with tempfile.TemporaryDirectory() as tmp:
        ffcv_dir = _ffcv_dir(data, tmp, out)
        kinds = ["memory", "torch"] + (["ffcv"] if ffcv_dir else [])
        for kind in kinds:
            for arch in ("cnn", "resnet18"):
                run = engine(data, device, arch=arch, batch=sz["train_batch"], loader=kind,
                             ffcv_dir=ffcv_dir)
                steps = sz["train_steps"][arch]
                run.train_epoch(0, limit=1)  # warm-up: workers start, numba compiles
                t = time.perf_counter()
                run.train_epoch(1, limit=steps)
                total = time.perf_counter() - t
                t = time.perf_counter()
                for _ in zip(range(steps), run.loader.epoch(2), strict=False):
                    pass
                wait = time.perf_counter() - t
                n = steps * sz["train_batch"]
                key = f"{arch}_{kind}"
                out[f"{key}_images_per_s"] = round(n / total, 1)
                out[f"{key}_epoch_seconds_est"] = round(total / n * CIFAR_EPOCH, 1)
                out[f"{key}_loader_share"] = round(min(wait / total, 1.0), 4)
                log(f"trainer {key}: {n / total:.1f} images/s, loader share {wait / total:.2%}")
                del run
    for arch in ("cnn", "resnet18"):
        out[f"ratio_{arch}_memory_vs_torch"] = round(
            out[f"{arch}_memory_images_per_s"] / out[f"{arch}_torch_images_per_s"], 2)
    return out


def nonlinearity(quick: bool, log: Log, train: dict[str, Any] | None = None) -> dict[str, Any]:
    """Seconds of one NL measurement (resnet18) vs a resnet18 epoch at the default ``every``."""
    sz, every = SIZES[quick], LinearityConfig().every
    data = cifar_like(max(sz["probes"], 256))
    torch.manual_seed(0)
    model = build_model("resnet18", 3, 10, 32)
    probes = (data.train_x[: sz["probes"]].float() - 127.5) / 64
    t = time.perf_counter()
    layer_stats(model, probes)
    nl_s = time.perf_counter() - t
    if train is None or "resnet18_memory_epoch_seconds_est" not in train:
        train = trainer(quick, log)
    epoch_s = train["resnet18_memory_epoch_seconds_est"]
    out = {"probes": sz["probes"], "every": every, "nl_seconds": round(nl_s, 2),
           "resnet18_epoch_seconds_est": epoch_s,
           "fraction_of_one_epoch": round(nl_s / epoch_s, 4),
           "fraction_at_default_every": round(nl_s / (every * epoch_s), 4),
           "method": "one layer_stats call (k=2) / estimated 50k-image resnet18 epoch "
                     "(trainer part, memory loader); at default every: / (every x epoch)"}
    log(f"nonlinearity: {nl_s:.1f} s = {out['fraction_at_default_every']:.2%} of training at every={every}")
    return out


def _trivial(config: dict[str, Any]) -> dict[str, Any]:
    return {"score": config["i"] * 2}


def scheduler(quick: bool, log: Log) -> dict[str, Any]:
    """N trivial trials through Ray Tune vs the same function called in a loop."""
    from mixsweep.tune_bench import local_ray, run_functions

    n = SIZES[quick]["trials"]
    t = time.perf_counter()
    for i in range(n):
        _trivial({"i": i})
    loop_s = time.perf_counter() - t

    t = time.perf_counter()
    with local_ray(default_workers()):
        init_s = time.perf_counter() - t
        t = time.perf_counter()
        # reuse_actors as in mixsweep.tune (a fresh process per trial is the costly part)
        results = run_functions(_trivial, [{"i": i} for i in range(n)], reuse_actors=True)
        tune_s = time.perf_counter() - t
    ok = sum(r is not None for r in results)
    out = {"trials": n, "trials_ok": ok, "ray_init_seconds": round(init_s, 2),
           "tune_seconds_per_trial": round(tune_s / n, 3),
           "loop_seconds_per_trial": round(loop_s / n, 6),
           "overhead_seconds_per_trial": round((tune_s - loop_s) / n, 3),
           "method": "Tuner.fit() wall / trials (ray.init reported apart); trials run concurrently"}
    log(f"scheduler: {out['overhead_seconds_per_trial']} s overhead per trial")
    return out


def run_bench(quick: bool = False, parts: list[str] | None = None, log: Log = print) -> dict[str, Any]:
    """Run the chosen parts (default: all; gpu only where CUDA is present)."""
    parts = list(parts or PARTS)
    res: dict[str, Any] = {"machine": machine(), "quick": quick}
    t0 = time.perf_counter()
    if "loader" in parts:
        res["loader"] = loader(quick, log)
    if "trainer" in parts or "nonlinearity" in parts:
        res["trainer"] = trainer(quick, log)
    if "nonlinearity" in parts:
        res["nonlinearity"] = nonlinearity(quick, log, res["trainer"])
    if "scheduler" in parts:
        res["scheduler"] = scheduler(quick, log)
    if "driver" in parts:
        from mixsweep.bench_driver import driver

        res["driver"] = driver(quick, log)
    if "gpu" in parts:
        if torch.cuda.is_available():
            res["gpu"] = gpu_bench(quick, log)
        elif quick:  # the same code on the CPU, tiny: a smoke test, not a measurement
            res["gpu"] = gpu_bench(quick, log, torch.device("cpu"))
        else:
            res["gpu"] = {"skipped": "no CUDA device visible (--quick runs a CPU smoke of this part)"}
    if "store" in parts:
        from mixsweep.bench_store import store_bench

        res["store"] = store_bench(quick, log)
    res["bench_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def format_results(res: dict[str, Any]) -> str:
    """Plain text: one block per part, ``key: value`` lines (ratios included)."""
    lines = []
    for part, val in res.items():
        if isinstance(val, dict):
            lines.append(f"[{part}]")
            lines += [f"  {k}: {v}" for k, v in val.items()]
        else:
            lines.append(f"{part}: {val}")
    return "\n".join(lines)
