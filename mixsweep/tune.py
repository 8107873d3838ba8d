"""Ray Tune glue: run a sweep's trials as one Tuner; stop cleanly; resume.

The store (runs/<sweep>/trials/<trial_id>/) is the source of truth: a trial
with a result.json is finished and never handed to Ray again; an unfinished
one continues from its own checkpoint.pt. So every launch builds a fresh Tuner
over the trials still to do (new trials added to the sweep file are picked up
too), and ``FailureConfig(max_failures)`` retries a crashed trial, which then
continues from its last finished epoch. (Tuner.restore alone brings back the
checkpoints of only some trials; per-trial checkpoints make resume exact.)

At scale (issue 18; ``mixsweep bench --only driver`` measures it): the trials reach
Tune through a Searcher (``_Trials``), not a grid over their configs, which Tune
copies whole per trial (O(n^2)); Tune's per-trial logger files are off
and its experiment state is saved every 300 s, not its "auto" period
(``TUNE_SETTINGS``): resume never reads that state.

Before anything runs, a sweep whose trials fit no node stops with one line
(mixsweep.placement); Ray's own output goes to runs/<sweep>/launch.log
(mixsweep.ray_output); a local Ray is private and a cluster is joined within a
bounded time (mixsweep.ray_access).

Stopping: SIGINT and SIGUSR1 are Ray Tune's own graceful stop (it stops all
trials and saves its state); SIGTERM is a stop request (mixsweep.stop) that is
handed to that path once Tune listens, and that starts no trial when it comes
earlier (during ray.init, say). SLURM sends TERM on requeue and preemption, and
the sbatch script turns its time-limit warning (USR1) into a TERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import Searcher

from mixsweep import placement, ray_output, stop
from mixsweep.ray_access import forget_local_settings, init_ray, wait_for_nodes
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
    """Counts trial states for the live progress display.

    ``epochs`` / ``epochs_total`` count training epochs as ``launch --dry-run`` does
    (epochs in all = the sum of train.epochs): a trial's epochs done is the last epoch
    it finished (its report of epoch 0, at init, counts none, and a resumed trial's
    reports do not count an epoch twice); ``done_before``: each trial's last epoch
    already in the store when the launch began.
    """

    def __init__(self, total: int, skipped: int, progress: Progress | None,
                 epochs_total: int = 0, done_before: dict[str, int] | None = None):
        self.last_epoch = dict(done_before or {})
        self.counts = {"total": total, "done": skipped, "running": 0, "failed": 0,
                       "epochs": sum(self.last_epoch.values()), "epochs_total": epochs_total}
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
        key, epoch = _trial_name(trial), int(result.get("epoch") or 0)
        if epoch > self.last_epoch.get(key, 0):
            self.last_epoch[key] = epoch
            self.counts["epochs"] = sum(self.last_epoch.values())
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
    return str(trial.config["trial_id"])  # _Trials hands it out beside the config


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

    The caller holds the sweep's lock (``SweepPaths.lock``: launch takes it before it
    writes spec.yaml). Locally, Ray gets ``num_cpus`` (default: this machine's) and the
    GPUs torch sees; a trial that fits neither raises PlacementError before Ray starts.
    With ``ray_address``, ``expect_nodes`` (the sbatch job's node count): wait up to
    ``join_timeout`` s for that many Ray nodes and ``say`` how many joined; then a trial
    that fits no alive node raises PlacementError (Ray disconnected). Ray's and Tune's
    own output goes to runs/<sweep>/launch.log. A stop request (mixsweep.stop, SIGTERM)
    before the trials start runs none of them.
    """
    paths = SweepPaths.of(spec.runs_dir, spec.name)
    t0 = time.perf_counter()
    sweep_root = paths.root.resolve()
    _raise_disk_error(sweep_root)  # full or read-only: say so before Ray starts
    todo = [c for c in trials if not is_finished(paths, c)]
    skipped = len(trials) - len(todo)
    previous = stop.install()
    try:
        if todo and not stop.requested():
            mode = usable_mode(wandb_mode or spec.tracking.wandb.mode, spec.name, say)
            counts = _Counts(len(trials), skipped, progress,
                             epochs_total=sum(t.train.epochs for t in trials),
                             done_before=_epochs_done(paths, trials))
            with ray_output.to_log(sweep_root / ray_output.LOG_NAME) as reroute:
                try:
                    _run_on_ray(spec, paths, todo, sweep_root, mode, counts, reroute,
                                ray_address=ray_address, max_concurrent=max_concurrent,
                                num_cpus=num_cpus, expect_nodes=expect_nodes,
                                join_timeout=join_timeout, say=say)
                finally:
                    ray.shutdown()
                    forget_local_settings()
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


def _epochs_done(paths: SweepPaths, trials: list[TrialConfig]) -> dict[str, int]:
    """Each trial's last finished epoch in the store (0 when it has none)."""
    done = {}
    for c in trials:
        history = read_jsonl(paths.trial(c.trial_id).metrics)
        done[c.trial_id] = min(int(history[-1]["epoch"]), c.train.epochs) if history else 0
    return done


def _run_on_ray(spec: SweepSpec, paths: SweepPaths, todo: list[TrialConfig], sweep_root: Path,
                mode: str, counts: _Counts, reroute: Callable[[], None], *,
                ray_address: str | None, max_concurrent: int | None, num_cpus: int | None,
                expect_nodes: int, join_timeout: float, say: Say,
                trainable: Callable[[dict[str, Any]], None] = _trainable) -> None:
    """Start or join Ray, check that a trial fits a node, run the Tuner (inside ray_output.to_log).

    ``trainable``: the trial function (the bench mode, ``run_trivial_sweep``, swaps in a
    trivial one; everything else is the launch's own set-up).
    """
    need = placement.Need.of(spec, todo)
    if ray_address:
        gcs = init_ray(ray_address)
    else:
        cpus = num_cpus or placement.local_cpus()
        gpus = placement.local_gpus(need) if need.gpus > 0 or need.cuda else None
        placement.check_local(need, cpus, gpus)
        init_ray(None, cpus, gpus)
    reroute()  # ray.init dropped the handlers of the "ray" logger
    if stop.requested():
        return
    if ray_address and expect_nodes:
        wait_for_nodes(expect_nodes, join_timeout, say)
    if ray_address:
        placement.check_cluster(need, ray.nodes(), str(gcs))
    if stop.requested():
        return
    try:
        with _tune_settings():
            grid = _tuner(spec, paths, todo, sweep_root, mode, max_concurrent, counts,
                          trainable=trainable).fit()
        _record_errors(paths, grid)
    except Exception:
        _raise_disk_error(sweep_root)  # Ray's own files cut short by a full disk, ...
        raise


# Tune's own settings for large grids (issue 18), where the environment does not set them.
# Loggers off: Tune's default loggers write progress.csv, result.json, params.* and
# TensorBoard events per trial and keep files open per running trial; mixsweep's store
# has its own per-trial files and nothing reads Tune's. Experiment state every 300 s: a
# save writes every trial's state (2,000 trials: ~2 s each on 2 cores), and Tune's "auto"
# period (10 s at first) spent ~10 % of a 2,000-trial run on it; the state serves only
# Tuner.restore, which resume never uses (the store is the truth), and Tune still saves
# it at the end and when it stops.
TUNE_SETTINGS = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_GLOBAL_CHECKPOINT_S": "300"}


@contextlib.contextmanager
def _tune_settings() -> Iterator[None]:
    """TUNE_SETTINGS in os.environ (Tune reads them there) unless set; restored after."""
    added = {k: v for k, v in TUNE_SETTINGS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


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
           wandb_mode: str, max_concurrent: int | None, counts: _Counts,
           trainable: Callable[[dict[str, Any]], None] = _trainable) -> tune.Tuner:
    res = spec.resources
    common = {
        "sweep": spec.name, "sweep_id": paths.sweep_id(), "sweep_root": str(sweep_root),
        "cpus": res.cpus_per_trial, "wandb_mode": wandb_mode,
        "wandb_project": spec.tracking.wandb.project, "wandb_entity": spec.tracking.wandb.entity,
    }
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial}),
        param_space=common,
        tune_config=tune.TuneConfig(
            search_alg=_Trials(todo),
            num_samples=len(todo), max_concurrent_trials=max_concurrent or res.max_concurrent,
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


class _Trials(Searcher):
    """Hands Tune the sweep's trials one by one, as ``{"trial": config, "trial_id": id}`` (the
    id beside the config: naming a trial and counting its results need no validation).

    Not ``tune.grid_search`` over the configs: for each variant of a grid Tune deep-copies
    the whole space, the grid's list included, so n trials cost O(n^2) before any starts
    (400 trials: 15 s, 2,000: several minutes on 2 cores); here each trial costs one copy.
    """

    def __init__(self, configs: list[TrialConfig]):
        super().__init__()
        self.configs, self.given = configs, 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # no metric to optimize: every trial runs

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.given >= len(self.configs):
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's own sentinel, a str its stub leaves out
        cfg = self.configs[self.given]
        self.given += 1
        return {"trial": cfg.model_dump(mode="json"), "trial_id": cfg.trial_id}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass

    # Tune saves its search state with its experiment state: a count, not the list
    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"given": self.given}))

    def restore(self, checkpoint_path: str) -> None:
        self.given = int(json.loads(Path(checkpoint_path).read_text())["given"])


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
