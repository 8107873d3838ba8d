"""``mixsweep selftest``: does mixsweep work on this machine, and how fast? One table.

Rows (check, status pass / fail / skip, figure, detail), in order: the device and the
package versions; each mixup mode for a few steps of the trial's own step, and on CUDA
the same with ``train.cuda_graphs`` (``selftest_train.py``: the runs, the tolerance and
why); bf16 + channels_last; ``torch.compile`` where the sweep asks for it; the step's
images/s against the bench's bare loop at a small and a large batch; the NL probe; the
memory loader; FFCV. With ``--sweep FILE``: the data root and each dataset (never
downloaded), the runs folder (write + fsync + remove), W&B in the sweep's mode and, on a
GPU, each architecture's peak memory against its ``gpus_per_trial`` share.

``--preflight`` is the per-node check of a SLURM job (seconds): versions, the device, one
tiny step on each GPU (the CPU if none) and, with ``--sweep``, the data root and runs
folder. A check that raises becomes a failed row naming the error: the table is always
printed, and the exit code says whether every check passed or was skipped.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mixsweep import __version__
from mixsweep.selftest_train import Row, guarded
from mixsweep.trial import device_problem, nvidia_driver

if TYPE_CHECKING:  # for the annotations only: the checks import these when they run
    from rich.table import Table

    from mixsweep.data import ArrayDataset
    from mixsweep.spec import SweepSpec, TrialConfig

Log = Callable[[Row], Row]
PACKAGES = ("torch", "torchvision", "ray", "wandb")
CONTEXT_GIB = 0.5  # a CUDA context per trial process, outside the allocator's figures
_GIB = 2**30
_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "svhn": (3, 32, 32)}
_MODE_COST = {"erm": 0, "sup": 1, "mt": 2, "unsup": 3, "both": 4}  # forward passes held


# --------------------------------------------------------------------------- machine
def resolve(name: str) -> tuple[torch.device | None, str | None]:
    """The device for auto / cpu / cuda / cuda:N (``trial.device_problem``'s rules), or None
    and why it is not usable here."""
    problem = device_problem(name)
    if problem is not None:
        return None, problem
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu"), None
    index = torch.device(name).index if name != "auto" else None
    return torch.device("cuda", torch.cuda.current_device() if index is None else index), None


def device_row(device: torch.device | None, why: str | None, gpus_wanted: float,
               preflight: bool) -> Row:
    if device is None:
        return Row("device", "fail", "", f"{why}; check the driver and CUDA_VISIBLE_DEVICES")
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return Row("device", "pass", f"{p.name}, {p.total_memory / _GIB:.0f} GiB",
                   f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, driver "
                   f"{nvidia_driver() or '?'}, compute {p.major}.{p.minor}, {torch.cuda.device_count()} GPU(s) "
                   f"visible, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    figure = f"{cores} cores, torch threads {torch.get_num_threads()}"
    if not preflight:  # the CPU's model name; bench imports torchvision (seconds) on the way
        from mixsweep.bench_common import machine

        figure = f"{machine()['cpu']}, {figure}"
    if gpus_wanted > 0 and not torch.cuda.is_available():
        why = f"the sweep gives each trial {gpus_wanted:g} GPU and no CUDA device is visible"
        return Row("device", "fail" if preflight else "pass", figure,
                   why if preflight else f"CPU; note: {why} (fine where the sweep only is launched)")
    return Row("device", "pass", figure, "CPU" + (" (CUDA visible, --device cpu)"
                                                  if torch.cuda.is_available() else ""))


def versions_row() -> Row:
    found, missing = [], []
    for pkg in PACKAGES:
        try:
            found.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            missing.append(pkg)
    return Row("versions", "fail" if missing else "pass",
               f"mixsweep {__version__}, python {platform.python_version()}",
               ", ".join(found) + (f"; not installed: {', '.join(missing)}" if missing else ""))


def identity_line() -> str:
    """What the SLURM head compares across nodes (one line, key=value)."""
    return (f"preflight: host={platform.node()} mixsweep={__version__} "
            f"python={platform.python_version()} torch={torch.__version__} "
            f"cuda={torch.version.cuda or 'none'} gpus={torch.cuda.device_count()}")


# --------------------------------------------------------------------------- the sweep's places
def writable_row(check: str, folder: Path) -> Row:
    """``folder`` (or, not there yet, the folder that would hold it) takes a file: write,
    fsync, remove; the time of write + fsync is the figure (slow on a sick network FS)."""
    folder = folder.expanduser().absolute()
    where = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if where is None or not where.is_dir():
        return Row(check, "fail", "", f"{folder}: {where} is a file, not a folder")
    t = time.perf_counter()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mixsweep-selftest-", dir=where)
        try:
            os.write(fd, b"\0" * 65536)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as err:
        return Row(check, "fail", "", f"cannot write in {where}: {err.strerror or err}")
    ms = (time.perf_counter() - t) * 1000
    note = "" if where == folder else f" (not there yet; launch creates it in {where})"
    return Row(check, "pass", f"write + fsync {ms:.0f} ms", f"{folder}{note}")


def data_rows(trials: list) -> list[Row]:
    """The data root readable and each dataset of the sweep there (nothing downloaded)."""
    from mixsweep.data import DataError
    from mixsweep.data.datasets import ensure_available
    from mixsweep.data.ffcv_loader import resolve_ffcv_dir

    rows = []
    for root in sorted({t.data.root for t in trials if t.data.dataset in _SHAPES}):
        path = Path(root).expanduser()
        if not path.is_dir():
            later = any(t.data.download for t in trials if t.data.root == root)
            rows.append(Row(f"data root {root}", "skip" if later else "fail", "",
                            "not there yet; launch downloads into it" if later
                            else f"{path} is not a folder (data.root)"))
            continue
        ok = os.access(path, os.R_OK | os.X_OK)
        rows.append(Row(f"data root {root}", "pass" if ok else "fail",
                        f"{len(os.listdir(path)) if ok else '?'} entries",
                        str(path) if ok else f"{path} is not readable by this user"))
    for name, root, download, loader, ffcv in sorted({(t.data.dataset, t.data.root, t.data.download,
                                                        t.data.loader, t.data.ffcv_dir) for t in trials}):
        check = f"dataset {name}"
        if name not in _SHAPES:
            rows.append(Row(check, "pass", "embedded", "ships with mixsweep: no files needed"))
            continue
        try:
            ensure_available(name, root, download=False)
        except DataError as err:
            rows.append(Row(check, "skip" if download else "fail", "",
                            "not on disk; launch downloads it first (data.download: true)"
                            if download else str(err)))
            continue
        beton = resolve_ffcv_dir(ffcv, root, name) / "train.beton"
        if loader == "ffcv" and not beton.is_file():
            rows.append(Row(check, "fail", "", f"{beton} not found: write it with mixsweep data "
                            f"prepare {name} --format ffcv"))
            continue
        rows.append(Row(check, "pass", "present", f"in {Path(root).expanduser()}"))
    return rows or [Row("data", "pass", "embedded", "the sweep reads embedded data only")]


def wandb_row(spec: SweepSpec) -> Row:
    """W&B in the sweep's mode: offline, the package imports and the run dir takes a file."""
    from mixsweep.store import SweepPaths
    from mixsweep.tracking import online_problem, wandb_version

    mode = spec.tracking.wandb.mode
    if mode == "disabled":
        return Row("W&B", "skip", "", "skipped: tracking.wandb.mode is disabled")
    if mode == "online":
        problem = online_problem(timeout=5.0)
        return Row("W&B", "fail" if problem else "pass", "online",
                   f"{problem}; launch would log offline instead" if problem
                   else "API key present, server reachable")
    ver = wandb_version()  # imports wandb: an ImportError becomes a failed row (guarded)
    row = writable_row("W&B", SweepPaths.of(spec.runs_dir, spec.name).root / "wandb")
    return replace(row, figure=f"offline, wandb {ver}", detail=f"run dir {row.detail}")


# --------------------------------------------------------------------------- GPU memory
def _shaped(cfg: TrialConfig) -> ArrayDataset:
    """Random uint8 data of the dataset's real shape and size (what the memory loader holds)."""
    from mixsweep.data import ArrayDataset, load_dataset
    from mixsweep.names import NUM_CLASSES, TRAIN_SIZES

    name = cfg.data.dataset
    if name not in _SHAPES:
        return load_dataset(name)
    n, test = TRAIN_SIZES[name][0], max(cfg.train.eval_batch_size, cfg.linearity.probes)
    g, c = torch.Generator().manual_seed(0), NUM_CLASSES[name]
    return ArrayDataset(name, torch.randint(0, 256, (n, *_SHAPES[name]), dtype=torch.uint8, generator=g),
                        torch.arange(n) % c, torch.randint(0, 256, (test, *_SHAPES[name]),
                                                          dtype=torch.uint8, generator=g),
                        torch.arange(test) % c, c, (0.5,) * 3, (0.25,) * 3, 4, name != "svhn")


def peak_bytes(cfg: TrialConfig, device: torch.device) -> int:
    """Peak reserved GPU memory of a trial: its data, a few steps (a graph capture too),
    an evaluation and an NL measurement; eager where the sweep compiles (compiling takes
    minutes and changes the peak little)."""
    from mixsweep.engine import Engine
    from mixsweep.step import WARMUP_STEPS

    # the torch loader stands in for ffcv (both keep only batches on the GPU; no .beton needed)
    data = cfg.data.model_copy(update={"loader": "torch"}) if cfg.data.loader == "ffcv" else cfg.data
    cfg = cfg.model_copy(update={"data": data, "train": cfg.train.model_copy(
        update={"device": "cuda", "compile": False})})
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    with contextlib.redirect_stderr(io.StringIO()):
        run = Engine(cfg, device, data=_shaped(cfg))
        run.train_epoch(1, limit=WARMUP_STEPS + 2)
        run.evaluate()
        run.measure()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_reserved(device) - base
    del run
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def memory_rows(spec: SweepSpec, trials: list[TrialConfig], device: torch.device) -> list[Row]:
    """Per architecture, its heaviest trial's peak memory against the gpus_per_trial share."""
    g = spec.resources.gpus_per_trial
    if device.type != "cuda":
        return [Row("GPU memory", "skip", "", "skipped: no GPU")]
    if g == 0:
        return [Row("GPU memory", "skip", "", "skipped: gpus_per_trial is 0 (trials use CPUs)")]
    total = torch.cuda.get_device_properties(device).total_memory / _GIB
    side = max(1, math.floor(1 / g + 1e-9)) if g < 1 else 1
    heaviest: dict[str, Any] = {}
    for t in trials:
        key = (_MODE_COST[t.mixup.mode], t.train.batch_size, t.data.dataset in _SHAPES, t.linearity.probes)
        if t.model.arch not in heaviest or key > heaviest[t.model.arch][0]:
            heaviest[t.model.arch] = (key, t)
    rows = []
    for arch, (_, t) in heaviest.items():
        need = peak_bytes(t, device) / _GIB + CONTEXT_GIB
        what = (f"{t.data.dataset}, batch {t.train.batch_size}, mode {t.mixup.mode}, "
                f"{t.train.precision}{', graphs' if t.train.cuda_graphs else ''}")
        figure = f"{need:.1f} GiB of a {min(g, 1) * total:.1f} GiB share"
        if side * need <= total:
            rows.append(Row(f"GPU memory {arch}", "pass", figure,
                            f"{what}: {side} trial(s) per GPU fit ({side * need:.1f} of {total:.0f} GiB)"))
        else:
            rows.append(Row(f"GPU memory {arch}", "fail", figure,
                            f"{what}: {side} trials per GPU (gpus_per_trial {g:g}) need {side * need:.1f} "
                            f"GiB of {total:.0f} GiB: they cannot fit side by side; raise gpus_per_trial "
                            f"to {math.ceil(need / total * 100) / 100:g} or lower train.batch_size"))
    return rows


# --------------------------------------------------------------------------- the runs
def _sweep(path: Path | None) -> tuple[SweepSpec | None, list[TrialConfig]]:
    """The sweep and its trials (SpecError: a bad file, reported by the CLI as one line)."""
    if path is None:
        return None, []
    from mixsweep.expand import expand
    from mixsweep.spec_yaml import load_spec

    spec = load_spec(path)
    return spec, expand(spec)


def _place_rows(spec: SweepSpec, trials: list[TrialConfig]) -> list[Row]:
    from mixsweep.store import SweepPaths

    return (guarded("data", lambda: data_rows(trials))
            + guarded("runs folder", lambda: writable_row(
                "runs folder", SweepPaths.of(spec.runs_dir, spec.name).root)))


def preflight(device_name: str = "auto", sweep: Path | None = None,
              log: Log = lambda r: r) -> list[Row]:
    """Seconds: versions, the device, one tiny step per GPU (the CPU if none), and with
    ``sweep`` the data root and the runs folder."""
    from mixsweep.selftest_train import tiny_step

    spec, trials = _sweep(sweep)
    wanted = spec.resources.gpus_per_trial if spec is not None else 0.0
    device, why = resolve(device_name)
    rows = [log(versions_row()), log(device_row(device, why, wanted, preflight=True))]
    if device is not None:
        devices = ([torch.device("cuda", i) for i in range(torch.cuda.device_count())]
                   if device.type == "cuda" else [device])
        for dev in devices:
            rows += map(log, guarded(f"step on {dev}", functools.partial(tiny_step, dev)))
    if spec is None:
        return rows + [log(Row(c, "skip", "", "skipped: no --sweep")) for c in ("data", "runs folder")]
    return rows + list(map(log, _place_rows(spec, trials)))


def _training_rows(device: torch.device, trials: list, swept: bool, log: Log) -> list[Row]:
    from mixsweep import selftest_train as st

    data = st.digits()
    rows, recs = st.modes_with_graphs(device, data, log)

    def bf16() -> list[Row]:
        if device.type != "cuda":  # a CPU without bf16 units emulates it: minutes, not seconds
            return [Row(c, "skip", "", "skipped: no CUDA (bf16 + channels_last is the GPU setting)")
                    for c in ("bf16 + channels_last", "graphs bf16")]
        row, rec = st.bf16_row(data, device, recs["both"])
        return [row, st.graph_row("graphs bf16", st.mode_config("both", device, precision="bf16"),
                                  data, device, rec)]

    skip = (None if any(t.train.compile for t in trials)
            else "skipped: the sweep does not set train.compile: true" if swept
            else "skipped: only with a --sweep that sets train.compile: true")
    for check, fn in (
        ("bf16 + channels_last", bf16),
        ("torch.compile", lambda: st.compile_row(data, device, recs["both"], skip)),
        ("step vs bare loop", lambda: st.throughput_rows(device)),
        ("NL probe", lambda: st.nl_probe_row(device, data)),
        ("memory loader", lambda: st.memory_loader_row(data, device)),
        ("ffcv", lambda: st.ffcv_row(data, any(t.data.loader == "ffcv" for t in trials))),
    ):
        rows += map(log, guarded(check, fn))
    return rows


def selftest(device_name: str = "auto", sweep: Path | None = None,
             log: Log = lambda r: r) -> list[Row]:
    """Every check of the module docstring, in table order (about a minute on 2 CPU cores)."""
    spec, trials = _sweep(sweep)
    wanted = spec.resources.gpus_per_trial if spec is not None else 0.0
    device, why = resolve(device_name)
    rows = [log(versions_row()), log(device_row(device, why, wanted, preflight=False))]
    if device is None:
        rows.append(log(Row("training checks", "skip", "", "skipped: no usable device")))
    else:
        rows += _training_rows(device, trials, spec is not None, log)
    if spec is None:
        return rows + [log(Row(c, "skip", "", "skipped: no --sweep"))
                       for c in ("data", "runs folder", "W&B", "GPU memory")]
    rows += map(log, _place_rows(spec, trials) + guarded("W&B", lambda: wandb_row(spec)))
    if device is None:
        return rows + [log(Row("GPU memory", "skip", "", "skipped: no usable device"))]
    return rows + list(map(log, guarded("GPU memory", lambda: memory_rows(spec, trials, device))))


# --------------------------------------------------------------------------- output
def failed(rows: list[Row]) -> list[str]:
    return [r.check for r in rows if r.status == "fail"]


def verdict(rows: list[Row]) -> str:
    """The last line: ``selftest: OK (...)`` or ``selftest: FAILED: <check>, <check>``."""
    bad = failed(rows)
    if bad:
        return f"selftest: FAILED: {', '.join(bad)}"
    skipped = sum(r.status == "skip" for r in rows)
    return f"selftest: OK ({len(rows) - skipped} passed, {skipped} skipped)"


def table(rows: list[Row], title: str) -> Table:
    from rich.table import Table
    from rich.text import Text

    style = {"pass": "green", "fail": "bold red", "skip": "dim"}
    t = Table(title=title)
    for col in ("check", "status", "figure", "detail"):
        t.add_column(col, overflow="fold")
    for r in rows:  # Text: a bracket in a detail is not rich markup
        t.add_row(Text(r.check), Text(r.status, style=style[r.status]), Text(r.figure), Text(r.detail))
    return t
