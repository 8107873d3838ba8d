"""The ``mixsweep`` command line: a table of verbs, each a thin call into a module."""

from __future__ import annotations

import contextlib
import errno
import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import NoArgsIsHelpError  # typer >= 0.29 vendors click
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperGroup

from mixsweep.data import DataError
from mixsweep.slurm import SlurmError
from mixsweep.spec import LARGE_SWEEP, SpecError, keys_help
from mixsweep.store import StoreError, SweepLocked


@contextlib.contextmanager
def _plain_usage_errors() -> Iterator[None]:
    """A usage error (a bad option value, a missing argument, an unknown verb) as one plain
    ``error:`` line with exit code 2, like every other bad input (not typer's framed box)."""
    try:
        yield
    except NoArgsIsHelpError:
        raise  # a bare verb: typer prints its help
    except ClickUsageError as err:
        where = f" (see: {err.ctx.command_path} --help)" if err.ctx is not None else ""
        err_console.print(f"error: {' '.join(err.format_message().split())}{where}",
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


class _PlainErrors(TyperGroup):
    def make_context(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with _plain_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        with _plain_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_PlainErrors,
    help="Run mixup sweeps on Ray Tune (+ SLURM) and measure per-layer linearity.\n\n"
    "Example: mixsweep launch sweeps/quickstart.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class UsageError(RuntimeError):
    """Bad input from the command line; reported as one line, exit 2."""


USER_ERRORS: tuple[type[BaseException], ...] = (SpecError, DataError, UsageError, SlurmError,
                                                 SweepLocked, StoreError)
_AGAIN = "nothing finished is lost: {fix} and run the same command again"
# the file system refused a write or read: errno -> what to do about it (one line, exit 2)
_FS_ERRORS = {
    errno.ENOSPC: "free space", errno.EDQUOT: "free space (or raise the quota)",
    errno.EROFS: "choose a writable place", errno.EACCES: "fix the permissions",
    errno.EPERM: "fix the permissions",
    # a path of the wrong kind (a file where a folder is needed, or the reverse), or unusable
    errno.ENOTDIR: "choose another path (or move that file away)",
    errno.EEXIST: "choose another path (or move that file away)",
    errno.EISDIR: "give a file name, not a folder",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ELOOP: "fix the symbolic link (it loops)",
}

_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _file_in_the_way(path: Path) -> Path | None:
    """The file that stands where ``path`` needs a folder (``path`` or one of its parents)."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def _fs_error_line(err: OSError) -> str:
    """One line for an OSError of _FS_ERRORS: the path, what is wrong, what to do."""
    path = Path(err.filename) if err.filename else None
    what = err.strerror or type(err).__name__
    if path is not None and err.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(path)
        if blocker is not None:
            what = f"{blocker} is a file, not a folder"
    elif path is not None and err.errno == errno.EISDIR:
        what = "is a folder, not a file"
    where = f"{path}: " if path is not None and not what.startswith(str(path)) else ""
    # disk full, quota, read-only, permissions: the commands meet these when they write
    verb = "cannot write " if err.errno in _WRITE_ERRORS else ""
    return f"error: {verb}{where}{what}; " + _AGAIN.format(fix=_FS_ERRORS[err.errno])


def user_errors(fn):
    """Report bad input as one line per problem on stderr with exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            for line in str(err).splitlines() or [type(err).__name__]:
                err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as err:
            if err.errno not in _FS_ERRORS:
                raise
            err_console.print(_fs_error_line(err), markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def _root() -> None:
    """Run mixup sweeps on Ray Tune (+ SLURM) and measure per-layer linearity.

    Example: mixsweep launch sweeps/quickstart.yaml
    """


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):  # None or NaN: not applicable / censored
        return "—"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e6 else f"{v:.4g}"
    return str(v)


@app.command()
@user_errors
def trial(
    config: Annotated[Path, typer.Argument(help="YAML with the sweep file's keys, one value per key.")],
    out: Annotated[Path | None, typer.Option(help="Trial folder (metrics, checkpoint, result.json); resumes from it.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (overrides train.device).")] = None,
) -> None:
    """Run one trial without Ray (for debugging) and print a summary.

    Example: mixsweep trial sweeps/trial_digits.yaml --out runs/debug
    """
    from mixsweep.spec import load_trial
    from mixsweep.trial import device_problem, run_trial

    _, cfg = load_trial(config)
    name = device if device is not None else cfg.train.device
    problem = device_problem(name)
    if problem:  # before anything is written or trained
        where = "--device" if device is not None else f"{config}: train.device"
        raise UsageError(f"{where} {name!r}: {problem}")
    out = out or Path("runs") / "trials" / cfg.trial_id
    blocker = _file_in_the_way(out)
    if blocker is not None:
        where = f"--out {out}" + (f": {blocker}" if blocker != out else "")
        raise UsageError(f"{where} is a file, not a folder: give the trial's folder")
    console.print(f"trial [bold]{cfg.trial_id}[/]: {cfg.data.dataset} {cfg.model.arch} "
                  f"mode={cfg.mixup.mode} k={cfg.mixup.k} alpha={cfg.mixup.alpha} -> {out}")

    def progress(rec: dict) -> None:
        console.print(f"  epoch {rec['epoch']:>3}  acc {rec['test_acc']:.4f}"
                      + (f"  loss {rec['train_loss']:.4f}" if "train_loss" in rec else ""))

    res = run_trial(cfg, out, progress, device=device)
    table = Table(title=f"trial {cfg.trial_id}: {res['status']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("final_acc", "best_acc", "epochs_to_target", "reached_target", "target_accuracy",
                "steps_to_target", "seconds_to_target", "train_seconds"):
        table.add_row(key, _fmt(res[key]))
    for layer, v in res["nonlinearity"].items():
        table.add_row(f"NL {layer}", _fmt(v))
    console.print(table)
    if res["status"] != "completed":
        err_console.print(f"trial failed: {res['reason']}", markup=False, soft_wrap=True)
        raise typer.Exit(1)


PLAN_ROWS = 1000  # rows of the --dry-run trial table


def _print_plan(spec, trials) -> None:
    from mixsweep.spec import plan

    info = plan(spec, trials)
    varying = [k for k in info["axes"] if k != "seeds"]
    table = Table(title=f"sweep {spec.name}: {len(trials)} trials")
    table.add_column("trial_id", no_wrap=True, min_width=12)
    for col in (*varying, "seed"):
        table.add_column(col.split(".")[-1].replace("labeled_fraction", "fraction"), no_wrap=True)
    for t in trials[:PLAN_ROWS]:
        flat = t.flat()
        table.add_row(t.trial_id, *(_fmt(flat[k]) for k in varying), str(t.seed))
    console.print(table)
    if len(trials) > PLAN_ROWS:  # a 100,000-row table takes minutes to print and to read
        console.print(f"... and {len(trials) - PLAN_ROWS} more trials, not shown (the first "
                      f"{PLAN_ROWS} are above; the counts below are for all {len(trials)})")
    console.print(f"trials: {info['trials']}  by mode: {info['by_mode']}  epochs in all: {info['epochs_total']}")
    console.print("axes: " + "; ".join(f"{k}={v}" for k, v in info["axes"].items()))
    r = info["resources"]
    console.print(f"resources per trial: {r['cpus_per_trial']} CPU, {r['gpus_per_trial']} GPU; "
                  f"max concurrent: {r['max_concurrent'] or 'all that fit'}; max failures: {r['max_failures']}")
    gh = info["gpu_hours_estimate"]
    console.print("estimated GPU-hours: " + (f"{gh:.1f}" if gh is not None else "— (set train.epoch_seconds_hint)"))


def _live_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console)
    task = bar.add_task("trials", total=None, detail="starting Ray")

    def update(c: dict) -> None:
        # epochs done / in all, as --dry-run counts them (the sum of train.epochs)
        bar.update(task, total=c["total"], completed=c["done"] + c["failed"],
                   detail=f"running {c['running']}  errors {c['failed']}  "
                          f"epochs {c['epochs']}/{c['epochs_total']}")

    return bar, update


@app.command(epilog="Sweep-file keys (section: key=default; a list under a per-trial key is an axis):\n\n"
             + keys_help())
@user_errors
def launch(
    file: Annotated[Path, typer.Argument(help="Sweep file (YAML).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate, print the trial table (and the sbatch script); run nothing.")] = False,
    local: Annotated[bool, typer.Option("--local", help="Run here even if the file has a slurm: section.")] = False,
    max_concurrent: Annotated[int | None, typer.Option(min=1, help="Override resources.max_concurrent.")] = None,
    wandb: Annotated[str | None, typer.Option(help="offline | online | disabled (overrides tracking.wandb.mode).")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Join a running Ray cluster ('auto' inside the sbatch job).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help=f"Run a sweep of more than {LARGE_SWEEP} trials.")] = False,
    expect_nodes: Annotated[int, typer.Option(min=0, help="With --ray-address: wait for this many Ray nodes, say how many joined, go on with those (the sbatch job passes its node count).")] = 0,
    join_timeout: Annotated[float, typer.Option(callback=_seconds("--join-timeout"), help="Seconds to wait for --expect-nodes.")] = 120.0,
) -> None:
    """Run a sweep: locally on Ray Tune, or submitted to SLURM when the file has a slurm: section.

    Re-running the same command resumes: finished trials are kept, unfinished ones
    continue from their last epoch.

    Example: mixsweep launch sweeps/quickstart.yaml
    """
    import os

    from mixsweep import stop

    stop.install()  # a TERM from now on stops the sweep cleanly (exit 3), whenever it comes
    from mixsweep.data.datasets import ensure_available
    from mixsweep.spec import expand, load_spec
    from mixsweep.store import SweepPaths

    if wandb is not None and wandb not in ("offline", "online", "disabled"):
        raise UsageError(f"--wandb must be offline, online or disabled (got {wandb!r})")
    spec = load_spec(file)
    trials = expand(spec)
    to_slurm = spec.slurm is not None and not local
    if len(trials) > LARGE_SWEEP and not (yes or dry_run):
        raise UsageError(f"{file}: {len(trials)} trials is more than {LARGE_SWEEP}; check the grid "
                         "with --dry-run, then pass --yes to run it")
    from mixsweep import placement

    need = placement.Need.of(spec, trials)  # a trial no node can run would wait for ever
    if to_slurm:
        placement.check_slurm(need, spec.slurm.cpus_per_node, spec.slurm.gpus_per_node)
    if dry_run:
        _print_plan(spec, trials)
        if to_slurm:
            from mixsweep.slurm import submit

            submit(spec, file, dry_run=True, console=console)
        return
    if ray_address is None and not to_slurm:  # a cluster's nodes: checked once launch joins it
        placement.check_local(need)
    for name, root, download in {(t.data.dataset, t.data.root, t.data.download) for t in trials}:
        ensure_available(name, root, download, say=lambda msg: console.print(msg, markup=False))
    if any(t.data.loader == "ffcv" for t in trials):  # fail before a GPU-hour is spent
        from mixsweep.data.ffcv_loader import require_ffcv

        require_ffcv()
    paths = SweepPaths.of(spec.runs_dir, spec.name)
    from mixsweep.slurm import require_no_active_job, submit

    # a live job re-reads spec.yaml when requeued: check before rewriting it (its own driver may)
    require_no_active_job(spec.name, paths.root, own_job=os.environ.get("SLURM_JOB_ID"))
    # the sweep's lock before anything in its folder is written: a second launch of a running
    # sweep (another file of the same name, say) is refused and leaves spec.yaml as it was
    with paths.lock():
        paths.write_spec(spec)
        if to_slurm:
            submit(spec, paths.spec, dry_run=False, console=console)
            return
        from mixsweep.tune import run_sweep

        bar, update = _live_progress()
        with bar:
            outcome = run_sweep(spec, trials, ray_address=ray_address,
                                max_concurrent=max_concurrent, wandb_mode=wandb,
                                progress=update, expect_nodes=expect_nodes,
                                join_timeout=join_timeout,
                                say=lambda line: console.print(line, markup=False,
                                                               highlight=False, soft_wrap=True))
    console.print(f"sweep {spec.name}: {outcome.completed} completed, {outcome.failed} failed, "
                  f"{outcome.unfinished} unfinished, {outcome.skipped} already done before this launch "
                  f"({outcome.seconds:.0f} s); results: {paths.results}")
    if not outcome.done:
        err_console.print(f"sweep stopped before the end; resume with: mixsweep launch {file}")
        raise typer.Exit(3)


def _seconds(option: str, most: float = 86400.0, zero: bool = True):
    """A typer callback: a number of seconds, 0 (or, without ``zero``, more) to ``most``
    (typer's min= lets nan and inf in)."""

    def check(value: float | None) -> float | None:
        if value is not None and not (0 <= value <= most and (zero or value > 0)):  # nan: False
            least = "0" if zero else "more than 0"
            raise typer.BadParameter(f"{value} is not a number of seconds from {least} to {most:g}",
                                     param_hint=f"'{option}'")
        return value

    return check


def _sweep_dir(name_or_dir: str, runs_dir: Path) -> Path:
    """The folder of a sweep given by name (under ``runs_dir``) or as a folder."""
    from mixsweep.store import SweepPaths

    def is_sweep(sp: SweepPaths) -> bool:  # spec.yaml may be damaged: results.csv also tells
        return sp.root.is_dir() and (sp.spec.exists() or sp.results.is_file())

    given = SweepPaths(Path(name_or_dir))
    if is_sweep(given):
        return given.root
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UsageError(f"--runs-dir {runs_dir} is a file, not a folder: give the folder "
                         "that holds the sweeps (default: runs)")
    sweep = SweepPaths.of(runs_dir, name_or_dir)
    if not is_sweep(sweep):
        raise UsageError(f"no sweep {name_or_dir!r}: {sweep.spec} not found (launch it first)")
    return sweep.root


@app.command()
@user_errors
def status(
    name: Annotated[str, typer.Argument(help="Sweep name (under --runs-dir) or a sweep folder.")],
    runs_dir: Annotated[Path, typer.Option(help="Where sweeps are stored.")] = Path("runs"),
    watch: Annotated[float, typer.Option(callback=_seconds("--watch"), help="Refresh every N seconds until Ctrl-C (0: once).")] = 0,
) -> None:
    """Progress of a sweep: trials done/running/pending/failed and the best cells.

    Example: mixsweep status quickstart --watch 10
    """
    from mixsweep.status_view import show

    show(_sweep_dir(name, runs_dir), console, watch)


@app.command()
@user_errors
def cancel(
    name: Annotated[str, typer.Argument(help="Sweep name (under --runs-dir) or a sweep folder.")],
    runs_dir: Annotated[Path, typer.Option(help="Where sweeps are stored.")] = Path("runs"),
) -> None:
    """Cancel the sweep's SLURM job (scancel); its results stay readable and it resumes on relaunch.

    Example: mixsweep cancel k_points
    """
    from mixsweep.slurm import cancel as scancel

    root = _sweep_dir(name, runs_dir)
    job_id = scancel(root)
    console.print(f"cancelled SLURM job {job_id}; results stay in {root} "
                  f"(mixsweep status {name}); resume with: mixsweep launch {root / 'spec.yaml'}",
                  markup=False, highlight=False)


@app.command()
@user_errors
def sync(
    name: Annotated[str, typer.Argument(help="Sweep name (under --runs-dir) or a sweep folder.")],
    runs_dir: Annotated[Path, typer.Option(help="Where sweeps are stored.")] = Path("runs"),
    jobs: Annotated[int, typer.Option(min=1, max=256, help="Uploads at once.")] = 8,
    timeout: Annotated[float, typer.Option(callback=_seconds("--timeout", zero=False), help="Seconds one run's upload may take before it is stopped (it is tried again by the next sync).")] = 600.0,
) -> None:
    """Upload a sweep's offline W&B runs (needs `wandb login` or WANDB_API_KEY).

    Example: mixsweep sync quickstart --jobs 16
    """
    from mixsweep.tracking import SyncError, offline_runs
    from mixsweep.tracking import sync as wandb_sync

    root = _sweep_dir(name, runs_dir)
    if not offline_runs(root):
        console.print(f"nothing to sync in {root / 'wandb'}")
        return
    try:
        results = wandb_sync(root, jobs, timeout=timeout)
    except SyncError as err:
        raise UsageError(str(err)) from None
    bad: dict[str, list[str]] = {}  # one line per distinct failure, not one per run
    for p, ok, msg in results:
        if not ok:
            bad.setdefault(msg, []).append(p.name)
    failed = sum(len(v) for v in bad.values())
    console.print(f"synced {len(results) - failed} of {len(results)} runs")
    for msg, names in bad.items():
        which = names[0] if len(names) == 1 else f"{len(names)} runs ({', '.join(names[:3])}" \
            + (", ..." if len(names) > 3 else "") + ")"
        err_console.print(f"failed: {which}: {msg}", markup=False, highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(1)


@app.command()
@user_errors
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Sweep folders (runs/<sweep>) to compare.")],
    out: Annotated[Path, typer.Option(help="The HTML file (self-contained: opens without a network).")] = Path("report.html"),
    by: Annotated[str, typer.Option(help="Axis of facet rows: fraction, k, alpha, dataset, ... or a results.csv config column; 'none' for no rows.")] = "fraction",
    png: Annotated[Path | None, typer.Option(help="Also write each figure as DIR/<figure>.png (needs Chromium).")] = None,
    wandb: Annotated[bool, typer.Option("--wandb", help="Also build the W&B report: saved when online, else its JSON beside the HTML.")] = False,
    markdown: Annotated[Path | None, typer.Option(help="Also write the tables of numbers (mean ± sd over seeds per cell; NL at the end, at an early epoch, at matched accuracy) as Markdown.")] = None,
    early_epoch: Annotated[int | None, typer.Option(min=1, help="The early epoch of the --markdown NL tables (default: linearity.every).")] = None,
    where: Annotated[list[str] | None, typer.Option(help="Only trials with KEY=VALUE (repeatable; keys as for --by; VALUE may list several: weight=10,none), e.g. --where batchnorm=true --where fraction=1.")] = None,
    figures: Annotated[str | None, typer.Option(help="Only these figures, comma-separated: profile, profile_target, nl_epochs, acc_epochs, ett_k, ett_alpha, acc_fraction.")] = None,
) -> None:
    """Compare sweeps: per-layer nonlinearity, accuracy, epochs to target -> one HTML file.

    Example: mixsweep report runs/quickstart runs/quickstart_a02 --out report.html --png figs --markdown tables.md
    """
    from mixsweep.report import ReportError, write_report

    try:
        only = [f.strip() for f in figures.split(",") if f.strip()] if figures is not None else None
        if only == []:  # an empty --figures must not quietly draw them all
            from mixsweep.report_figures import FIGURES

            raise ReportError(f"--figures {figures!r} names no figure; use {', '.join(FIGURES)}")
        built = write_report(run_dirs, out, by=None if by.lower() == "none" else by, png_dir=png,
                             wandb=wandb, markdown=markdown, early_epoch=early_epoch,
                             where=where, only=only)
    except ReportError as err:
        raise UsageError(str(err)) from None
    console.print(f"report: {built.html} ({len(built.figures)} figures)", soft_wrap=True)
    for p in built.pngs:
        console.print(f"  png: {p}", soft_wrap=True)
    if built.markdown:
        console.print(f"  tables: {built.markdown}", soft_wrap=True)
    if built.wandb:
        console.print(built.wandb, markup=False, highlight=False, soft_wrap=True)
    for note in built.notes:  # what could not be read and was left out (also in the HTML)
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


data_app = typer.Typer(cls=_PlainErrors, help="Prepare datasets (e.g. FFCV .beton files).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
@user_errors
def data_prepare(
    dataset: Annotated[str, typer.Argument(help="cifar10 | cifar100 | svhn | digits | synthetic")],
    format: Annotated[str, typer.Option("--format", help="Output format (ffcv).")] = "ffcv",
    out: Annotated[Path | None, typer.Option(help="Folder for train.beton/test.beton "
                                             "(default: data.ffcv_dir's default).")] = None,
    root: Annotated[str, typer.Option(help="Where the dataset is (or is downloaded to).")] = "~/.cache/mixsweep/data",
    download: Annotated[bool, typer.Option(help="Download the dataset if missing.")] = False,
) -> None:
    """Write a dataset in a loader's format.

    Example: mixsweep data prepare cifar10 --format ffcv --out data/ffcv/cifar10 --download
    """
    from mixsweep.data import load_dataset
    from mixsweep.data.ffcv_loader import prepare, resolve_ffcv_dir
    from mixsweep.spec import DataConfig

    if format != "ffcv":
        raise UsageError(f"unknown --format {format!r}; allowed: ffcv")
    target = out if out is not None else resolve_ffcv_dir(DataConfig().ffcv_dir, root, dataset)
    written = prepare(load_dataset(dataset, root, download), target)
    for part, path in written.items():
        console.print(f"{part}: {path}")


@app.command()
@user_errors
def bench(
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quick: Annotated[bool, typer.Option(help="Tiny sizes (a smoke run, numbers not meaningful).")] = False,
    only: Annotated[str | None, typer.Option(help="Comma list of parts: loader,trainer,nonlinearity,scheduler,gpu.")] = None,
) -> None:
    """Loader / trainer / nonlinearity / scheduler (and GPU) benchmarks, ratios side by side.

    Example: mixsweep bench --json
    """
    import json

    from mixsweep.bench import PARTS, format_results, run_bench

    parts = [p.strip() for p in only.split(",") if p.strip()] if only is not None else None
    if parts == []:  # an empty --only must not run the whole benchmark
        raise UsageError(f"--only {only!r} names no part; allowed: {', '.join(PARTS)}")
    bad = [p for p in parts or [] if p not in PARTS]
    if bad:
        raise UsageError(f"unknown bench part(s) {', '.join(bad)}; allowed: {', '.join(PARTS)}")
    res = run_bench(quick=quick, parts=parts, log=lambda m: err_console.print(m, markup=False))
    if json_out:
        print(json.dumps(res, indent=2))
    else:
        console.print(format_results(res), markup=False, highlight=False)


@app.command()
@user_errors
def selftest(
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print the rows as JSON: a list of {check, status, figure, detail}.")] = False,
    sweep: Annotated[Path | None, typer.Option(help="Also check this sweep file's data, runs folder, W&B mode, torch.compile and GPU memory per architecture.")] = None,
    preflight: Annotated[bool, typer.Option("--preflight", help="Seconds, not a minute: versions, the device, one tiny step per GPU, and (--sweep) the data root and runs folder: a SLURM node's check.")] = False,
) -> None:
    """Check this machine: device, each mode's step (CUDA graphs vs eager), speed, loaders, and a sweep's data, runs folder and W&B.

    Exit code 0: every check passed or was skipped; 1: a check failed (named in the last line).

    Example: mixsweep selftest --sweep sweeps/quickstart.yaml
    """
    import json
    import time

    from mixsweep import selftest as checks

    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda (got {device!r})")

    start = time.perf_counter()

    def log(row):  # progress on stderr while the checks run
        err_console.print(f"{time.perf_counter() - start:6.1f} s  {row.status:<4} {row.check}  "
                          f"{row.figure}", markup=False, highlight=False)
        return row

    rows = (checks.preflight if preflight else checks.selftest)(device, sweep, log=log)
    seconds = time.perf_counter() - start
    if json_out:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        err_console.print(checks.verdict(rows), markup=False, highlight=False)
    else:
        kind = "preflight" if preflight else "selftest"
        console.print(checks.table(rows, f"mixsweep {kind}: {seconds:.1f} s"))
        if preflight:
            console.print(checks.identity_line(), markup=False, highlight=False, soft_wrap=True)
        console.print(checks.verdict(rows), markup=False, highlight=False, soft_wrap=True)
    if checks.failed(rows):
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="mixsweep")


if __name__ == "__main__":
    sys.exit(main())
