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
                err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
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
        err_console.print(f"trial failed: {res['reason']}", markup=False, soft_wrap=True)
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="mixsweep")


if __name__ == "__main__":
    sys.exit(main())
