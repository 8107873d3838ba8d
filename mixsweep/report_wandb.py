"""The W&B report (wandb-workspaces): the HTML report's comparisons as panels over the runs.

Runs are those tracking.py logs: group = sweep name, config = the flat
TrialConfig (``mixup.mode`` ...), history ``test_acc`` / ``nonlinearity/<layer>``
per epoch, summary ``final_acc``, ``epochs_to_target``, ``reached_target``,
``final_nonlinearity/<layer>``, ``nonlinearity_at_target/<layer>``.
The report is built offline; it is saved only when W&B is online and logged in,
else its JSON definition is written beside the HTML.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mixsweep.report_data import ReportData, spec_diff
from mixsweep.store import atomic_write_text

if TYPE_CHECKING:  # wandb_workspaces is imported where a report is built
    from wandb_workspaces.reports.v2.interface import MetricType


def _wandb_target(data: ReportData) -> tuple[str, str]:
    """(entity, project) from the first sweep's ``tracking.wandb`` (entity may be '')."""
    wb = (data.specs[data.sweeps[0]].get("tracking") or {}).get("wandb") or {}
    return wb.get("entity") or "", wb.get("project") or "mixsweep"


def build(data: ReportData, entity: str | None = None, project: str | None = None):
    """The Report object (no network): one panel grid, one runset per sweep grouped by mode."""
    import wandb_workspaces.reports.v2 as wr

    ent, proj = _wandb_target(data)
    entity, project = entity if entity is not None else ent, project or proj
    runsets = [wr.Runset(entity=entity, project=project, name=s, filters=f"Group == '{s}'",
                         groupby=["mixup.mode"]) for s in data.sweeps]
    agg: dict[str, Any] = dict(groupby="mixup.mode", groupby_aggfunc="mean", groupby_rangefunc="stddev")
    nl_final: list[MetricType] = [wr.SummaryMetric(f"final_nonlinearity/{layer}") for layer in data.layers]
    nl_target: list[MetricType] = [wr.SummaryMetric(f"nonlinearity_at_target/{layer}") for layer in data.layers]
    panels: list[Any] = [
        wr.BarPlot(title="Per-layer nonlinearity at the end of training (lower = more linear)",
                   metrics=nl_final, orientation="v", **agg, title_y="nonlinearity NL"),
        wr.BarPlot(title="Per-layer nonlinearity at matched accuracy (first epoch at target)",
                   metrics=nl_target, orientation="v", **agg, title_y="nonlinearity NL"),
        wr.LinePlot(title="Test accuracy over training", x="epoch", y=["test_acc"], **agg,
                    title_x="epoch", title_y="test accuracy"),
        *[wr.LinePlot(title=f"Nonlinearity of {layer} over training", x="epoch", y=[f"nonlinearity/{layer}"],
                      **agg, title_x="epoch", title_y="nonlinearity NL") for layer in data.layers],
        wr.ScatterPlot(title="Epochs to target vs k (censored runs have none: see reached_target)",
                       x=wr.Config("mixup.k"), y=wr.SummaryMetric("epochs_to_target")),
        wr.ScatterPlot(title="Epochs to target vs alpha (censored runs have none)",
                       x=wr.Config("mixup.alpha"), y=wr.SummaryMetric("epochs_to_target")),
        wr.BarPlot(title="Share of runs reaching the target accuracy", metrics=[wr.SummaryMetric("reached_target")],
                   orientation="v", **agg),
        wr.ScatterPlot(title="Final test accuracy vs labeled fraction",
                       x=wr.Config("data.labeled_fraction"), y=wr.SummaryMetric("final_acc")),
    ]
    blocks: list[Any] = [
        wr.MarkdownBlock(text=(
            f"Sweeps: {', '.join(data.sweeps)} (W&B group = sweep name; runs grouped by `mixup.mode`). "
            "NL = per-layer nonlinearity along interpolation paths: 0 = affine, lower = more linear. "
            "Runs that never reached the target accuracy are censored: they have no `epochs_to_target` "
            "and are absent from those scatter plots (the HTML report shows them and uses "
            "censoring-aware medians).")),
        wr.PanelGrid(runsets=runsets, panels=panels),
    ]
    if len(data.sweeps) > 1:
        diff = spec_diff(data.specs)
        rows = ["| key | " + " | ".join(data.sweeps) + " |", "|---" * (len(data.sweeps) + 1) + "|"]
        rows += ["| " + " | ".join(str(v) for v in r) + " |" for r in diff.itertuples(index=False)]
        blocks += [wr.H2(text="Spec differences"), wr.MarkdownBlock(text="\n".join(rows))]
    return wr.Report(entity=entity, project=project, title=f"mixsweep: {' vs '.join(data.sweeps)}"[:128],
                     description="Which mode makes which layer more linear, and how fast does each converge?",
                     blocks=blocks)


def to_json(report) -> str:
    """The report's definition as JSON (pydantic; no network)."""
    from pydantic import TypeAdapter
    from wandb_workspaces.reports.v2 import Report

    return TypeAdapter(Report).dump_json(report, indent=2).decode()


def validate_offline(report) -> None:
    """Checks a save would run without contacting W&B: the filters parse and every panel
    converts to W&B's internal model (runsets need the server, so they are not converted)."""
    from wandb_workspaces import expr
    from wandb_workspaces.reports.v2 import PanelGrid

    for block in report.blocks:
        if isinstance(block, PanelGrid):
            for rs in block.runsets:
                # build() gives every runset a filter string (the field also takes expressions)
                expr.filters_tree_to_v2(expr.expr_to_filters(cast(str, rs.filters)))
            for panel in block.panels:
                panel._to_model()
        else:
            block._to_model()


def publish(data: ReportData, html_out: Path) -> str:
    """Save the report when online and logged in, else write ``<out>.wandb-report.json``."""
    report = build(data)
    validate_offline(report)
    path = html_out.with_name(html_out.name + ".wandb-report.json")
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        atomic_write_text(path, to_json(report) + "\n")
        return f"W&B is offline (WANDB_MODE): wrote the W&B report definition to {path}"
    from mixsweep.tracking import online_problem

    problem = online_problem()  # bounded: no key or no route says so at once, never hangs
    if problem is not None:
        atomic_write_text(path, to_json(report) + "\n")
        return f"W&B report not saved ({problem}): wrote its definition to {path}"
    try:
        if not report.entity:  # ask W&B (needs login) for the default entity
            from wandb_workspaces.reports.v2.interface import _get_api

            report.entity = _get_api().default_entity
            for block in report.blocks:
                for rs in getattr(block, "runsets", []):
                    rs.entity = report.entity
        report.save()
        return f"W&B report saved: {report.url}"
    except Exception as err:  # not logged in / no network: keep the definition, say why
        atomic_write_text(path, to_json(report) + "\n")
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"W&B report not saved ({why}): wrote its definition to {path}"
