"""The ``mixsweep`` command line: a table of verbs, each a thin call into a module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mixsweep.cli_errors import (
    PlainErrors,
    UsageError,
    err_console,
    file_in_the_way,
    user_errors,
)
from mixsweep.cli_errors import (
    seconds_option as _seconds,
)
from mixsweep.names import DATASETS
from mixsweep.plan import fmt as _fmt
from mixsweep.plan import keys_help
from mixsweep.spec import LARGE_SWEEP

app = typer.Typer(
    cls=PlainErrors,
    help="Run mixup sweeps on Ray Tune (+ SLURM) and measure per-layer linearity.\n\n"
    "Example: mixsweep launch sweeps/quickstart.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


@app.callback()
def _root() -> None:
    """Run mixup sweeps on Ray Tune (+ SLURM) and measure per-layer linearity.

    Example: mixsweep launch sweeps/quickstart.yaml
    """


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
    from mixsweep.spec_yaml import load_trial
    from mixsweep.trial import device_problem, run_trial

    _, cfg = load_trial(config)
    name = device if device is not None else cfg.train.device
    problem = device_problem(name)
    if problem:  # before anything is written or trained
        where = "--device" if device is not None else f"{config}: train.device"
        raise UsageError(f"{where} {name!r}: {problem}")
    out = out or Path("runs") / "trials" / cfg.trial_id
    blocker = file_in_the_way(out)
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
    from mixsweep import stop

    stop.install()  # a TERM from now on stops the sweep cleanly (exit 3), whenever it comes
    from mixsweep.launch import launch as run_launch

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    bar, update = _live_progress()
    res = run_launch(file, dry_run=dry_run, local=local, max_concurrent=max_concurrent,
                     wandb=wandb, ray_address=ray_address, yes=yes, expect_nodes=expect_nodes,
                     join_timeout=join_timeout, say=say, progress=update, console=console,
                     while_running=bar)
    if dry_run:
        from mixsweep.plan import print_plan

        print_plan(res.spec, res.trials, console)
        if res.to_slurm:
            from mixsweep.slurm import submit

            submit(res.spec, file, dry_run=True, console=console)
        return
    if res.outcome is None or res.sweep_dir is None:  # submitted to SLURM (submit printed the job)
        return
    from mixsweep.store import SweepPaths

    o = res.outcome
    console.print(f"sweep {res.spec.name}: {o.completed} completed, {o.failed} failed, "
                  f"{o.unfinished} unfinished, {o.skipped} already done before this launch "
                  f"({o.seconds:.0f} s); results: {SweepPaths(res.sweep_dir).results}")
    if not o.done:
        err_console.print(f"sweep stopped before the end; resume with: mixsweep launch {file}")
        raise typer.Exit(3)


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
    contrast: Annotated[str | None, typer.Option(help="Also a contrast section and its forest plots: AXIS=A:B as in mixsweep compare, e.g. mixup.mode=sup:erm.")] = None,
    contrast_layers: Annotated[str | None, typer.Option(help="With --contrast: only these layers, comma-separated (e.g. mid,probs).")] = None,
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
                             where=where, only=only, contrast=contrast,
                             contrast_layers=_names(contrast_layers))
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


def _names(text: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


@app.command()
@user_errors
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Sweep folders (runs/<sweep>) holding both arms.")],
    contrast: Annotated[str, typer.Option(help="AXIS=A:B, e.g. mixup.mode=sup:erm (axes as for report --by): A minus B per cell of the other axes.")],
    out: Annotated[Path, typer.Option(help="Folder for compare.md, compare.csv, forest.html (+ PNGs).")] = Path("compare"),
    early_epoch: Annotated[int | None, typer.Option(min=1, help="The early epoch of the NL contrast (default: linearity.every).")] = None,
    layers: Annotated[str | None, typer.Option(help="Compare only these layers, comma-separated (e.g. mid,probs: the endpoints you chose before looking); the correction then covers fewer intervals (default: every layer and mid).")] = None,
) -> None:
    """Contrast two values of one axis: differences with Bonferroni-adjusted 95% intervals and verdicts.

    Example: mixsweep compare runs/small_q1_supervised --contrast mixup.mode=sup:erm --out compare_q1
    """
    from mixsweep.compare import write_compare
    from mixsweep.report import ReportError

    try:
        done = write_compare(run_dirs, contrast, out, early_epoch=early_epoch,
                             layers=_names(layers))
    except ReportError as err:
        raise UsageError(str(err)) from None
    shown = (~done.table["verdict"].str.startswith("no ")).sum()
    console.print(f"compare {done.contrast}: {len(done.table)} contrasts, {shown} with a verdict", soft_wrap=True)
    for p in done.files:
        console.print(f"  {p}", soft_wrap=True)
    for note in done.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


data_app = typer.Typer(cls=PlainErrors, help="Prepare datasets (e.g. FFCV .beton files).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
@user_errors
def data_prepare(
    dataset: Annotated[str, typer.Argument(help=" | ".join(DATASETS))],
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
    only: Annotated[str | None, typer.Option(help="Comma list of parts: loader,trainer,nonlinearity,scheduler,driver,gpu,store.")] = None,
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
    main()
