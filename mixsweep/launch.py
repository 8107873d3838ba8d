"""Launch a sweep: the checks, the spec write, then a SLURM job or Ray Tune here.

``launch(...)`` is what ``mixsweep launch`` calls and the Python API's entry point: it
expands the grid once and hands that trial list to every step after it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixsweep.expand import expand
from mixsweep.names import WANDB_MODES
from mixsweep.spec import LARGE_SWEEP, SweepSpec, TrialConfig
from mixsweep.spec_errors import SpecError
from mixsweep.spec_yaml import load_spec

Say = Callable[[str], None]


class LaunchError(SpecError):
    """A launch refused before anything starts (reported as one line, exit 2)."""

    def __init__(self, message: str):
        super().__init__([message])


@dataclass
class LaunchResult:
    """What a launch did. ``trials``: the expanded grid (what --dry-run prints);
    ``sweep_dir``: runs/<sweep> (None for a dry run); ``outcome``: the Ray Tune run's counts
    (mixsweep.tune.SweepOutcome; None for a dry run or a SLURM submission); ``job_id``:
    the SLURM job (None unless submitted)."""

    spec: SweepSpec
    trials: list[TrialConfig]
    dry_run: bool = False
    to_slurm: bool = False
    sweep_dir: Path | None = None
    outcome: Any = None
    job_id: str | None = None
    rounds: Any = None  # adaptive seeds: mixsweep.adaptive.Rounds (rounds.json's record)

    @property
    def done(self) -> bool:
        """Every trial finished (completed or failed), or nothing to wait for here; for
        adaptive seeds, every round needed has run."""
        if self.rounds is not None:
            return bool(self.rounds.done)
        return self.outcome is None or self.outcome.done


def _checks(spec: SweepSpec, trials: list[TrialConfig], *, to_slurm: bool, local_ray: bool,
            say: Say) -> None:
    """Before anything is written: the trial fits a node, the data is there (or fetched
    now), FFCV is installed if a trial reads .beton files."""
    from mixsweep import placement
    from mixsweep.data.datasets import ensure_available

    need = placement.Need.of(spec, trials)
    if local_ray:  # a cluster's nodes: checked once run_sweep joins it
        placement.check_local(need)
    for name, root, download in {(t.data.dataset, t.data.root, t.data.download) for t in trials}:
        ensure_available(name, root, download, say=say)
    if any(t.data.loader == "ffcv" for t in trials):  # fail before a GPU-hour is spent
        from mixsweep.data.ffcv_loader import require_ffcv

        require_ffcv()


def launch(
    file_or_spec: str | Path | SweepSpec,
    *,
    dry_run: bool = False,
    local: bool = False,
    max_concurrent: int | None = None,
    wandb: str | None = None,
    ray_address: str | None = None,
    yes: bool = False,
    expect_nodes: int = 0,
    join_timeout: float = 120.0,
    say: Say = print,
    progress: Callable[[dict[str, int]], None] | None = None,
    console: Any = None,
    while_running: AbstractContextManager[Any] | None = None,
    runner: Callable[[list[TrialConfig]], Any] | None = None,
) -> LaunchResult:
    """Run a sweep: locally on Ray Tune, or submitted to SLURM when it has a slurm: section.

    The ``mixsweep launch`` command installs mixsweep.stop's SIGTERM handler first (a TERM
    then stops the sweep cleanly); ``run_sweep`` holds it while Ray runs.
    Re-running the same launch resumes: finished trials are kept, unfinished ones continue
    from their last epoch. Bad input raises SpecError (its subclasses: LaunchError,
    PlacementError) before anything is written; DataError, SlurmError and SweepLocked
    likewise name what to fix.

    Args:
        file_or_spec: a sweep file (YAML) or a SweepSpec (``parse_spec`` of a mapping).
        dry_run: validate and expand only; run, write and submit nothing.
        local: run here even if the sweep has a slurm: section.
        max_concurrent: overrides resources.max_concurrent.
        wandb: offline | online | disabled; overrides tracking.wandb.mode.
        ray_address: join a running Ray cluster ('auto' inside the sbatch job).
        yes: run a sweep of more than LARGE_SWEEP trials.
        expect_nodes: with ray_address, wait for this many Ray nodes (up to join_timeout
            seconds), say how many joined, and go on with those.
        join_timeout: seconds to wait for expect_nodes.
        say: where one-line notices go (a download, the nodes that joined).
        progress: called with trial counts as the sweep runs (locally).
        console: a rich Console for the SLURM submission's lines (default: a new one).
        while_running: entered around the local Ray Tune run (the CLI's live progress bar).
        runner: runs a list of trials instead of mixsweep.tune.run_sweep (tests); it gets
            the trials and returns an outcome with ``.done``.

    With adaptive seeds (``seeds: {start, max, until}``) the local run goes in rounds
    (mixsweep.adaptive.run_rounds): ``trials`` is then the worst case, every seed to max.

    Returns:
        LaunchResult: the trials, and the sweep folder and outcome of a real launch.
    """
    if wandb is not None and wandb not in WANDB_MODES:
        raise LaunchError(f"--wandb must be {', '.join(WANDB_MODES[:-1])} or {WANDB_MODES[-1]} "
                          f"(got {wandb!r})")
    spec = file_or_spec if isinstance(file_or_spec, SweepSpec) else load_spec(file_or_spec)
    source = str(file_or_spec) if not isinstance(file_or_spec, SweepSpec) else spec.name
    trials = expand(spec)
    if spec.adaptive is not None:  # a SweepSpec built in Python: the file's checks too
        from mixsweep.adaptive import check_metric, plan_cells
        from mixsweep.spec import check_contrast

        check_contrast(spec)
        check_metric(spec.adaptive.until, trials)
        plan_cells(spec, trials)
    to_slurm = spec.slurm is not None and not local
    result = LaunchResult(spec, trials, dry_run=dry_run, to_slurm=to_slurm)
    if len(trials) > LARGE_SWEEP and not (yes or dry_run):
        raise LaunchError(f"{source}: {len(trials)} trials is more than {LARGE_SWEEP}; check the "
                          "grid with --dry-run, then pass --yes to run it")
    from mixsweep import placement

    if to_slurm and spec.slurm is not None:  # a trial no node can run would wait for ever
        placement.check_slurm(placement.Need.of(spec, trials), spec.slurm)
    if dry_run:
        return result
    _checks(spec, trials, to_slurm=to_slurm, local_ray=ray_address is None and not to_slurm, say=say)
    from mixsweep.slurm import require_no_active_job, submit
    from mixsweep.store import SweepPaths

    paths = SweepPaths.of(spec.runs_dir, spec.name)
    result.sweep_dir = paths.root
    # a live job re-reads spec.yaml when requeued: check before rewriting it (its own driver may)
    require_no_active_job(spec.name, paths.root, own_job=os.environ.get("SLURM_JOB_ID"))
    # the sweep's lock before anything in its folder is written: a second launch of a running
    # sweep (another file of the same name, say) is refused and leaves spec.yaml as it was
    with paths.lock():
        paths.write_spec(spec)
        if to_slurm:
            result.job_id = submit(spec, Path(source), dry_run=False, console=console or _console())
            return result
        if runner is None:
            from mixsweep.tune import run_sweep

            def runner(batch: list[TrialConfig]) -> Any:
                return run_sweep(spec, batch, ray_address=ray_address,
                                 max_concurrent=max_concurrent, wandb_mode=wandb,
                                 progress=progress, expect_nodes=expect_nodes,
                                 join_timeout=join_timeout, say=say)

        with while_running or nullcontext():
            if spec.adaptive is None:
                result.outcome = runner(trials)
            else:
                from mixsweep.adaptive import run_rounds

                result.rounds = run_rounds(spec, trials, runner, say=say)
                result.outcome = result.rounds.outcome
    return result


def _console() -> Any:
    from rich.console import Console

    return Console()
