"""Ray Tune for the benchmarks: mixsweep's own driver with a trivial trainable (the
``driver`` part of ``mixsweep bench``) and a plain runner of functions as Tune trials (the
``scheduler`` and GPU ``packing`` parts). Lives beside tune.py: with ray_access.py, the only
modules that import Ray."""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from mixsweep import placement, ray_output
from mixsweep.ray_access import forget_local_settings, init_ray
from mixsweep.spec import SweepSpec, TrialConfig
from mixsweep.store import SweepPaths
from mixsweep.tune import Progress, _Counts, _run_on_ray


@dataclass(frozen=True)
class TrivialRun:
    """What ``run_trivial_sweep`` measured (seconds; ``state_saves``: Tune's experiment-state
    saves, ``TuneController.checkpoint`` calls that wrote, and their time in all)."""

    trials: int
    trials_ok: int
    init_seconds: float
    fit_seconds: float
    state_saves: int
    state_save_seconds: float
    state_write_seconds: float  # of state_save_seconds: writing the state file


def _trivial_trainable(config: dict[str, Any]) -> None:
    """The bench mode's trial: reports epochs 0..train.epochs with fake metrics, as
    ``_trainable`` does, but with no dataset, model, store or W&B."""
    cfg = TrialConfig.model_validate(config["trial"])
    for epoch in range(cfg.train.epochs + 1):
        tune.report({"epoch": epoch, "test_acc": 0.1 + epoch / 100, "trial_id": cfg.trial_id})


@contextlib.contextmanager
def _timed_state_saves() -> Iterator[dict[str, list[float]]]:
    """Time each experiment-state save of Tune's controller (the bench only): "save" gets
    the seconds of every ``TuneController.checkpoint`` call that saved (the state file
    written, then copied to the storage path), "write" those of writing the file alone."""
    from ray.tune.execution.tune_controller import TuneController

    checkpoint, save_to_dir = TuneController.checkpoint, TuneController.save_to_dir
    times: dict[str, list[float]] = {"save": [], "write": []}

    def timed(self: Any, *args: Any, **kwargs: Any) -> None:
        before = self._checkpoint_manager._last_save_time
        t = time.perf_counter()
        checkpoint(self, *args, **kwargs)
        if self._checkpoint_manager._last_save_time != before:  # throttled calls do nothing
            times["save"].append(time.perf_counter() - t)

    def timed_write(self: Any) -> None:
        t = time.perf_counter()
        save_to_dir(self)
        times["write"].append(time.perf_counter() - t)

    # the bench only, restored below: Tune has no hook around its state saves
    TuneController.checkpoint = timed  # type: ignore[method-assign]
    TuneController.save_to_dir = timed_write  # type: ignore[method-assign]
    try:
        yield times
    finally:
        TuneController.checkpoint = checkpoint  # type: ignore[method-assign]
        TuneController.save_to_dir = save_to_dir  # type: ignore[method-assign]


def run_trivial_sweep(spec: SweepSpec, trials: list[TrialConfig], *,
                      num_cpus: int | None = None, progress: Progress | None = None) -> TrivialRun:
    """``run_sweep``'s driver (its Tuner, callbacks, failure handling, storage, Tune
    settings) over ``trials`` with a trivial trainable: a measure of Tune's own cost.

    Nothing is skipped as finished and no results table is written; Ray's output goes to
    runs/<sweep>/launch.log as in a launch; ``progress`` gets the live counts.
    """
    paths = SweepPaths.of(spec.runs_dir, spec.name)
    sweep_root = paths.root.resolve()
    counts = _Counts(len(trials), 0, progress, epochs_total=sum(t.train.epochs for t in trials))
    previous = signal.getsignal(signal.SIGTERM)
    t0 = time.perf_counter()
    with ray_output.to_log(sweep_root / ray_output.LOG_NAME) as reroute, \
            _timed_state_saves() as saves:
        try:
            init_ray(None, num_cpus or placement.local_cpus(), None)
            reroute()
            t1 = time.perf_counter()
            _run_on_ray(spec, paths, trials, sweep_root, "disabled", counts, reroute,
                        ray_address=None, max_concurrent=None, num_cpus=num_cpus,
                        expect_nodes=0, join_timeout=0, say=lambda _: None,
                        trainable=_trivial_trainable)
            t2 = time.perf_counter()
        finally:
            ray.shutdown()
            forget_local_settings()
            signal.signal(signal.SIGTERM, previous)  # init_ray's stop request handler
    return TrivialRun(trials=len(trials), trials_ok=counts.counts["done"],
                      init_seconds=t1 - t0, fit_seconds=t2 - t1,
                      state_saves=len(saves["save"]), state_save_seconds=sum(saves["save"]),
                      state_write_seconds=sum(saves["write"]))


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[None]:
    """A plain local Ray for the benchmarks (no dashboard, quiet), shut down on exit."""
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
             num_cpus=num_cpus)  # None: every core
    try:
        yield
    finally:
        ray.shutdown()


def run_functions(fn: Callable[[Any], dict[str, Any]], configs: list[Any],
                  resources: dict[str, float] | None = None, *, name: str = "bench",
                  reuse_actors: bool = False) -> list[dict[str, Any] | None]:
    """Call ``fn(config)`` for each config as one Ray Tune trial (inside ``local_ray``);
    ``fn`` returns its metrics, reported once. The metrics in the order of ``configs``,
    None for a trial that failed. Tune's console tables go to stderr."""

    def trainable(config: dict[str, Any]) -> None:
        tune.report({**fn(configs[config["i"]]), "i": config["i"]})

    if resources:
        trainable = tune.with_resources(trainable, resources)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        grid = tune.Tuner(
            trainable, param_space={"i": tune.grid_search(list(range(len(configs))))},
            tune_config=tune.TuneConfig(reuse_actors=reuse_actors),
            run_config=tune.RunConfig(storage_path=tmp, name=name, verbose=0)).fit()
        out: list[dict[str, Any] | None] = [None] * len(configs)
        for result in (grid[i] for i in range(len(grid))):
            if result.error is None and result.metrics is not None:
                out[result.metrics["i"]] = result.metrics
    return out
