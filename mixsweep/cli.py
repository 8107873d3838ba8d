"""The ``mixsweep`` command line: a table of verbs, each a thin call into a module."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mixsweep.data import DataError
from mixsweep.spec import SpecError

app = typer.Typer(
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


USER_ERRORS: tuple[type[BaseException], ...] = (SpecError, DataError, UsageError)


def user_errors(fn):
    """Report bad input as one line per problem on stderr with exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            for line in str(err).splitlines() or [type(err).__name__]:
                err_console.print(f"error: {line}", markup=False, highlight=False)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def _root() -> None:
    """Run mixup sweeps on Ray Tune (+ SLURM) and measure per-layer linearity.

    Example: mixsweep launch sweeps/quickstart.yaml
    """


def _fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


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
    from mixsweep.trial import run_trial

    _, cfg = load_trial(config)
    out = out or Path("runs") / "trials" / cfg.trial_id
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
        err_console.print(f"trial failed: {res['reason']}", markup=False)
        raise typer.Exit(1)


data_app = typer.Typer(help="Prepare datasets (e.g. FFCV .beton files).", no_args_is_help=True)
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

    parts = [p.strip() for p in only.split(",")] if only else None
    bad = [p for p in parts or [] if p not in PARTS]
    if bad:
        raise UsageError(f"unknown bench part(s) {', '.join(bad)}; allowed: {', '.join(PARTS)}")
    res = run_bench(quick=quick, parts=parts, log=lambda m: err_console.print(m, markup=False))
    if json_out:
        print(json.dumps(res, indent=2))
    else:
        console.print(format_results(res), markup=False, highlight=False)


def main() -> None:
    app(prog_name="mixsweep")


if __name__ == "__main__":
    sys.exit(main())
