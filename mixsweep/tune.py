"""Ray Tune glue: run a sweep's trials as one Tuner; stop cleanly; resume.

The store (runs/<sweep>/trials/<trial_id>/) is the source of truth: a trial
with a result.json is finished and never handed to Ray again; an unfinished
one continues from its own checkpoint.pt. So every launch builds a fresh Tuner
over the trials still to do (new trials added to the sweep file are picked up
too), and ``FailureConfig(max_failures)`` retries a crashed trial, which then
continues from its last finished epoch. (Tuner.restore alone brings back the
checkpoints of only some trials; per-trial checkpoints make resume exact.)

Stopping: SIGINT and SIGUSR1 are Ray Tune's own graceful stop (it stops all
trials and saves its state); SIGTERM is a stop request (mixsweep.stop) that is
handed to that path once Tune listens, and that starts no trial when it comes
earlier (during ray.init, say). SLURM sends TERM on requeue and preemption, and
the sbatch script turns its time-limit warning (USR1) into a TERM.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from mixsweep import stop
from mixsweep.spec import SweepSpec, TrialConfig
from mixsweep.store import SweepPaths, atomic_write_json, collect_rows, read_jsonl, write_results
from mixsweep.tracking import TrialRun, usable_mode
from mixsweep.trial import run_trial

Progress = Callable[[dict[str, int]], None]
Say = Callable[[str], None]


@dataclass(frozen=True)
class SweepOutcome:
    total: int
    completed: int
    failed: int
    unfinished: int
    skipped: int  # finished before this launch
    seconds: float

    @property
    def done(self) -> bool:
        return self.unfinished == 0


def is_finished(paths: SweepPaths, cfg: TrialConfig) -> bool:
    return paths.trial(cfg.trial_id).read_result(cfg.trial_id) is not None


def _trainable(config: dict[str, Any]) -> None:
    """One Ray trial: run_trial on its own folder, reporting each epoch to Tune and W&B."""
    cfg = TrialConfig.model_validate(config["trial"])
    sweep_root = Path(config["sweep_root"])
    torch_threads = max(1, int(config["cpus"]))
    import torch

    torch.set_num_threads(torch_threads)
    tracker = TrialRun(
        trial_id=cfg.trial_id, sweep=config["sweep"], sweep_id=config["sweep_id"],
        mode=config["wandb_mode"],
        config=cfg.flat(), project=config["wandb_project"], entity=config["wandb_entity"],
        root=sweep_root,
    )

    trial_dir = SweepPaths(sweep_root).trial(cfg.trial_id)
    tracker.backfill(read_jsonl(trial_dir.metrics))  # reported before a kill, never written

    def report(rec: dict[str, Any]) -> None:
        tracker.log_epoch(rec)
        tune.report({"epoch": rec["epoch"], "test_acc": rec["test_acc"], "trial_id": cfg.trial_id})

    # the W&B run is finished before result.json marks the trial done: a kill in between
    # reruns the trial from its last checkpoint, which only finishes the run again
    run_trial(cfg, trial_dir.root, report, on_result=tracker.finish)


class _Counts(tune.Callback):
    """Counts trial states for the live progress display."""

    def __init__(self, total: int, skipped: int, progress: Progress | None):
        self.counts = {"total": total, "done": skipped, "running": 0, "failed": 0, "epochs": 0}
        self.progress = progress

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config; the live display (locks, a terminal) stays behind.
        return {**self.__dict__, "progress": None}

    def on_step_begin(self, iteration, trials, **info):
        stop.forward_to_tune()  # a TERM that came before Tune installed its handler

    def _emit(self) -> None:
        if self.progress is not None:
            self.progress(dict(self.counts))

    def on_trial_start(self, iteration, trials, trial, **info):
        self.counts["running"] += 1
        self._emit()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.counts["epochs"] += 1
        self._emit()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.counts["running"] -= 1
        self.counts["done"] += 1
        self._emit()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.counts["running"] -= 1
        self.counts["failed"] += 1
        self._emit()


def _trial_name(trial: Any) -> str:
    return TrialConfig.model_validate(trial.config["trial"]).trial_id


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """ray.init (local, or joining ``address``). A TERM during it is a stop request, not an exit."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Tune's new console output prints its tables even at verbose=0; launch shows its own progress
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    # include_dashboard=False: no dashboard UI and no HTTP port; Ray still starts its
    # minimal API process (it binds no port: tests/test_reliability.py checks)
    kwargs: dict[str, Any] = ({"address": address} if address
                              else {"num_cpus": num_cpus, "dashboard_host": "127.0.0.1"})
    try:  # ray.init replaces the TERM handler with sys.exit(SIGTERM) while it connects
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    except SystemExit as err:
        if err.code != signal.SIGTERM:
            raise
        stop.request()
    finally:
        stop.install()


def wait_for_nodes(expect: int, timeout: float, say: Say | None = None) -> list[str]:
    """Wait up to ``timeout`` s for ``expect`` live Ray nodes; say how many joined; their hosts.

    A node that does not join in time is not an error: the sweep goes on with
    the nodes that did (one line says so).
    """
    def alive() -> list[dict[str, Any]]:
        return [n for n in ray.nodes() if n.get("Alive")]

    t0 = time.monotonic()
    nodes = alive()
    while len(nodes) < expect and time.monotonic() - t0 < timeout and not stop.requested():
        time.sleep(0.5)
        nodes = alive()
    hosts = sorted(str(n.get("NodeManagerHostname") or n.get("NodeManagerAddress")) for n in nodes)
    cpus = ray.cluster_resources().get("CPU", 0)
    line = f"ray cluster: {len(nodes)} of {expect} nodes joined ({', '.join(hosts)}; {cpus:g} CPUs)"
    if len(nodes) < expect:
        line += (f"; {expect - len(nodes)} did not join within {timeout:.0f} s, "
                 f"the sweep goes on with {len(nodes)}")
    if say is not None:
        say(line)
    return hosts


def run_sweep(
    spec: SweepSpec,
    trials: list[TrialConfig],
    *,
    ray_address: str | None = None,
    max_concurrent: int | None = None,
    wandb_mode: str | None = None,
    progress: Progress | None = None,
    num_cpus: int | None = None,
    expect_nodes: int = 0,
    join_timeout: float = 120.0,
    say: Say = print,
) -> SweepOutcome:
    """Run the sweep's unfinished trials on Ray Tune and write the results table.

    Holds the sweep's lock throughout: a second launch of the same sweep raises SweepLocked.
    ``expect_nodes`` (the sbatch job's node count): wait up to ``join_timeout`` s
    for that many Ray nodes and ``say`` how many joined. A stop request
    (mixsweep.stop, SIGTERM) before the trials start runs none of them.
    """
    paths = SweepPaths.of(spec.runs_dir, spec.name)
    with paths.lock():
        return _run_locked(paths, spec, trials, ray_address=ray_address,
                           max_concurrent=max_concurrent, wandb_mode=wandb_mode,
                           progress=progress, num_cpus=num_cpus, expect_nodes=expect_nodes,
                           join_timeout=join_timeout, say=say)


def _run_locked(paths: SweepPaths, spec: SweepSpec, trials: list[TrialConfig], *,
                ray_address: str | None, max_concurrent: int | None, wandb_mode: str | None,
                progress: Progress | None, num_cpus: int | None, expect_nodes: int,
                join_timeout: float, say: Say) -> SweepOutcome:
    t0 = time.perf_counter()
    sweep_root = paths.root.resolve()
    _raise_disk_error(sweep_root)  # full or read-only: say so before Ray starts
    todo = [c for c in trials if not is_finished(paths, c)]
    skipped = len(trials) - len(todo)
    previous = stop.install()
    try:
        mode = spec.tracking.wandb.mode
        if todo and not stop.requested():
            mode = usable_mode(wandb_mode or spec.tracking.wandb.mode, spec.name, say)
            init_ray(ray_address, num_cpus)
        if todo and expect_nodes and not stop.requested():
            wait_for_nodes(expect_nodes, join_timeout, say)
        if todo and not stop.requested():
            try:
                grid = _tuner(spec, paths, todo, sweep_root, mode, max_concurrent,
                              _Counts(len(trials), skipped, progress)).fit()
                _record_errors(paths, grid)
            except Exception:
                _raise_disk_error(sweep_root)  # Ray's own files cut short by a full disk, ...
                raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    rows = collect_rows(paths, trials)
    try:
        write_results(paths, rows)
    except OSError:
        _raise_disk_error(sweep_root)
        raise
    by = [r["status"] for r in rows]
    return SweepOutcome(
        total=len(trials), completed=by.count("completed"), failed=by.count("failed"),
        unfinished=len(trials) - by.count("completed") - by.count("failed"), skipped=skipped,
        seconds=time.perf_counter() - t0,
    )


def _raise_disk_error(root: Path) -> None:
    """Raise the OSError that writing 64 KiB under ``root`` gives now (disk full, quota,
    read-only), naming ``root``; return if the write succeeds."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root) as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(root)) from None


def _tuner(spec: SweepSpec, paths: SweepPaths, todo: list[TrialConfig], sweep_root: Path,
           wandb_mode: str, max_concurrent: int | None, counts: _Counts) -> tune.Tuner:
    res = spec.resources
    common = {
        "sweep": spec.name, "sweep_id": paths.sweep_id(), "sweep_root": str(sweep_root),
        "cpus": res.cpus_per_trial, "wandb_mode": wandb_mode,
        "wandb_project": spec.tracking.wandb.project, "wandb_entity": spec.tracking.wandb.entity,
    }
    trainable = tune.with_resources(
        _trainable, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial}
    )
    return tune.Tuner(
        trainable,
        param_space={
            **common,
            "trial": tune.grid_search([c.model_dump(mode="json") for c in todo]),
        },
        tune_config=tune.TuneConfig(
            num_samples=1, max_concurrent_trials=max_concurrent or res.max_concurrent,
            # a new worker process per trial costs ~2.5 s each on 2 cores; reused: ~0.2 s
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(sweep_root / "ray"),
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            callbacks=[counts],
            verbose=0,
        ),
    )


def _record_errors(paths: SweepPaths, grid: Any) -> None:
    """Keep Ray's error for a trial that crashed past max_failures (it re-runs on relaunch)."""
    for result in grid:
        if result.error is None:
            continue
        trial_id = _trial_name(result)
        atomic_write_json(paths.trial(trial_id).error,
                          {"trial_id": trial_id, "error": error_summary(result.error)})


def error_summary(err: BaseException, limit: int = 400) -> str:
    """One line naming the trial's own exception (not Ray's wrapper or its traceback)."""
    cause = getattr(err, "cause", None) or err
    lines = [ln.strip() for ln in str(cause).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("For further information")]
    text = f"{type(cause).__name__}: " + " | ".join(lines[-4:]) if lines else type(cause).__name__
    return text[:limit]
