"""What a launch would run, as text: the --dry-run plan and the sweep-file keys for --help."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from mixsweep.expand import axes
from mixsweep.names import DEFAULT_TARGETS
from mixsweep.spec import (
    DataConfig,
    LinearityConfig,
    MixupConfig,
    ModelConfig,
    ResourcesConfig,
    SweepSpec,
    TrainConfig,
    TrialConfig,
    WandbConfig,
)
from mixsweep.spec_slurm import SlurmConfig

PLAN_ROWS = 1000  # rows of the --dry-run trial table


def fmt(v: Any) -> str:
    """A table cell: "—" for None or NaN (not applicable, censored), whole floats without .0."""
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e6 else f"{v:.4g}"
    return str(v)


def plan(spec: SweepSpec, trials: list[TrialConfig]) -> dict[str, Any]:
    """What a launch would run: counts, axes, resources and a GPU-hour estimate."""
    res = spec.resources
    epochs = sum(t.train.epochs for t in trials)
    known = [t.train.epochs * h for t in trials if (h := t.train.epoch_seconds_hint) is not None]
    gpu_hours = None
    if len(known) == len(trials):  # every trial has an epoch_seconds_hint
        gpu_hours = sum(known) / 3600 * max(res.gpus_per_trial, 0)
    by_mode: dict[str, int] = {}
    for t in trials:
        by_mode[t.mixup.mode] = by_mode.get(t.mixup.mode, 0) + 1
    return {
        "name": spec.name,
        "trials": len(trials),
        "by_mode": by_mode,
        "axes": axes(spec),
        "epochs_total": epochs,
        "resources": res.model_dump(),
        "gpu_hours_estimate": gpu_hours,
        "target": "slurm" if spec.slurm else "local",
    }


def keys_help() -> str:
    """Every sweep-file key with its default, generated from the models (for --help)."""
    lines = []
    sections: dict[str, type[BaseModel]] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "mixup": MixupConfig,
                "linearity": LinearityConfig, "resources": ResourcesConfig, "tracking.wandb": WandbConfig, "slurm": SlurmConfig}
    for name, model in sections.items():
        keys = ", ".join(f"{k}={f.default!r}" for k, f in model.model_fields.items())
        lines.append(f"{name}: {keys}")
    lines.append("seeds: [0]  (name: the file's stem; runs_dir: 'runs')")
    lines.append("data.num_labels: a label count (equal per class) instead of labeled_fraction, "
                 "or a per-dataset map of axes, e.g. {cifar10: [250, 4000, null], svhn: [1000]}")
    lines.append("train.epoch_seconds_hint: seconds per epoch for the --dry-run GPU-hour "
                 "estimate, a number or a per-mode map, e.g. {erm: 1.0, sup: 1.0, unsup: 2.5}")
    lines.append("train.target_accuracy: a number or a per-dataset map; None uses "
                 + ", ".join(f"{k} {v}" for k, v in DEFAULT_TARGETS.items()))
    return "\n\n".join(lines)


def print_plan(spec: SweepSpec, trials: list[TrialConfig], console: Console) -> None:
    """The --dry-run output: the first PLAN_ROWS trials (the keys that vary), then the counts."""
    info = plan(spec, trials)
    varying = [k for k in info["axes"] if k != "seeds"]
    table = Table(title=f"sweep {spec.name}: {len(trials)} trials")
    table.add_column("trial_id", no_wrap=True, min_width=12)
    for col in (*varying, "seed"):
        table.add_column(col.split(".")[-1].replace("labeled_fraction", "fraction"), no_wrap=True)
    for t in trials[:PLAN_ROWS]:
        flat = t.flat()
        table.add_row(t.trial_id, *(fmt(flat[k]) for k in varying), str(t.seed))
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
    if spec.adaptive is not None:  # the rounds' plan; the table and counts are the worst case
        from mixsweep.adaptive import plan_lines

        for line in plan_lines(spec, trials):
            console.print(line, markup=False)
