"""The ``driver`` part of ``mixsweep bench``: Ray Tune's own cost at scale (issue 18).

``tune.run_trivial_sweep`` runs mixsweep's driver (the Tuner, callbacks, failure
handling, storage and Tune settings of a launch) over N trials whose trainable only
reports a few epochs of fake metrics: no dataset, no model. Per N it reports

- ``overhead_seconds_per_trial``: Tuner.fit wall / trials (the trials do no work; they
  run ``num_cpus`` at a time), and its ratio at the large N to the small N;
- driver RSS (MB) when the first trial starts, when the last one ends, and its peak
  (sampled every 0.25 s during the run);
- ``state_save_share``: the time Tune spent saving its experiment state (its
  controller's ``checkpoint`` calls that wrote) / Tuner.fit wall.

Targets: ratio <= 1.5, RSS < 1 GB, state saving < 5 % of wall time.
This module does not import Ray (tune.py does).
"""

from __future__ import annotations

import os
import resource
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from mixsweep.expand import expand
from mixsweep.spec import parse_spec
from mixsweep.tune_bench import run_trivial_sweep

Log = Callable[[str], None]
SIZES = {False: (50, 2000), True: (8, 40)}  # trials: the small and the large run
EPOCHS = 3  # reports per trial: epochs 0..3, as a trial reports its init and each epoch
TARGETS = {"overhead_ratio": 1.5, "rss_mb": 1024, "state_save_share": 0.05}


def rss_mb() -> float:
    """This process's resident memory now (MB; its peak where /proc is absent)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Memory:
    """Driver RSS at the first trial start, at the last trial end, and its sampled peak."""

    def __init__(self, total: int):
        self.total, self.peak = total, rss_mb()
        self.start: float | None = None
        self.end: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, rss_mb())

    def progress(self, counts: dict[str, int]) -> None:
        now = rss_mb()
        self.peak = max(self.peak, now)
        if self.start is None and counts["running"] > 0:
            self.start = now
        if counts["done"] + counts["failed"] >= self.total:
            self.end = now

    def __enter__(self) -> _Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(n_trials: int, *, epochs: int = EPOCHS, num_cpus: int = 2) -> dict[str, Any]:
    """One trivial sweep of ``n_trials`` (seeds 0..n-1) in a temporary runs folder."""
    with tempfile.TemporaryDirectory(prefix="mixsweep-bench-driver-") as tmp:
        spec = parse_spec({"name": "bench-driver", "seeds": list(range(n_trials)),
                           "train": {"epochs": epochs}, "runs_dir": tmp,
                           "tracking": {"wandb": {"mode": "disabled"}}})
        trials = expand(spec)
        mem = _Memory(len(trials))
        with mem:
            run = run_trivial_sweep(spec, trials, num_cpus=num_cpus, progress=mem.progress)
    return {
        "trials": run.trials, "trials_ok": run.trials_ok, "reports_per_trial": epochs + 1,
        "ray_init_seconds": round(run.init_seconds, 2),
        "fit_seconds": round(run.fit_seconds, 2),
        "overhead_seconds_per_trial": round(run.fit_seconds / run.trials, 4),
        "driver_rss_mb_start": round(mem.start or 0.0, 1),
        "driver_rss_mb_end": round(mem.end or 0.0, 1),
        "driver_rss_mb_peak": round(mem.peak, 1),
        "state_saves": run.state_saves,
        "state_save_seconds": round(run.state_save_seconds, 3),
        "state_write_seconds": round(run.state_write_seconds, 3),
        "state_save_share": round(run.state_save_seconds / run.fit_seconds, 4),
    }


def driver(quick: bool, log: Log, sizes: tuple[int, ...] | None = None,
           num_cpus: int = 2) -> dict[str, Any]:
    """The bench part: trivial sweeps at a small and a large N, and the targets' checks."""
    small, large = sizes or SIZES[quick]
    out: dict[str, Any] = {"num_cpus": num_cpus, "targets": dict(TARGETS)}
    for n in (small, large):
        res = measure(n, num_cpus=num_cpus)
        out[f"trials_{n}"] = res
        log(f"driver {n} trials: {res['overhead_seconds_per_trial']} s/trial, RSS "
            f"{res['driver_rss_mb_start']} -> {res['driver_rss_mb_end']} MB "
            f"(peak {res['driver_rss_mb_peak']}), state saving {res['state_save_share']:.2%}")
    a, b = out[f"trials_{small}"], out[f"trials_{large}"]
    ratio = b["overhead_seconds_per_trial"] / max(a["overhead_seconds_per_trial"], 1e-9)
    out["overhead_ratio"] = round(ratio, 3)
    # the cost of one more trial, without the fixed start (worker processes, first save)
    out["marginal_seconds_per_trial"] = round(
        (b["fit_seconds"] - a["fit_seconds"]) / max(large - small, 1), 4)
    out["meets_targets"] = {
        "overhead_ratio": ratio <= TARGETS["overhead_ratio"],
        "rss_mb": max(b["driver_rss_mb_peak"], a["driver_rss_mb_peak"]) < TARGETS["rss_mb"],
        "state_save_share": max(a["state_save_share"], b["state_save_share"])
        < TARGETS["state_save_share"],
    }
    out["method"] = ("tune.run_trivial_sweep: the launch's Tuner with a trivial trainable; "
                     "overhead = Tuner.fit wall / trials; RSS of this process; state saving = "
                     "time in TuneController.checkpoint calls that saved / Tuner.fit wall")
    return out


if __name__ == "__main__":
    import json
    import sys

    args = [int(a) for a in sys.argv[1:] if a.isdigit()]
    print(json.dumps(driver("--quick" in sys.argv, lambda m: print(m, file=sys.stderr),
                            tuple(args) if len(args) == 2 else None), indent=2))
