"""``mixsweep status``: a sweep's progress and its best cells, readable at 80 columns.

The counts per status, then the best cells by mean final accuracy (seeds pooled).
Epochs to target follows the report's rule (``report_data.reach``): the median over
completed and failed trials, never-reached trials counted as later than every
observed epoch. Config axes that are the same for every trial are said once, above
the table, so the table keeps to the axes that tell cells apart.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from mixsweep.report_data import FINISHED, fmt_cfg, reach
from mixsweep.store import STATUS_ORDER, SweepPaths, read_sweep

# (results column, header): the axes a cell is made of
CELL_AXES = (("data.dataset", "dataset"), ("data.labeled_fraction", "fraction"), ("model.arch", "arch"),
             ("mixup.mode", "mode"), ("mixup.k", "k"), ("mixup.alpha", "alpha"))
BEST = 10  # cells shown


def _counts_title(name: str, rows: pd.DataFrame) -> str:
    counts = {s: int((rows["status"] == s).sum()) for s in STATUS_ORDER}
    other = len(rows) - sum(counts.values())  # statuses of another version's results.csv
    title = ", ".join([f"{v} {k}" for k, v in counts.items() if v] + ([f"{other} other"] if other else []))
    return f"{name}: {title} / {len(rows)} trials"


def cell_rows(rows: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """(the axes that vary among finished trials, one row per cell sorted by mean accuracy):
    columns ``seeds`` (completed trials), ``acc`` (mean), ``ett`` (report's median text),
    ``reached`` ("r/n" over completed and failed), ``failed``."""
    fin = rows[rows["status"].isin(FINISHED)].copy()
    for col, _ in CELL_AXES:
        if col not in fin:  # a results.csv of another version
            fin[col] = None
    for col in ("final_acc", "epochs_to_target"):
        fin[col] = pd.to_numeric(fin[col], errors="coerce") if col in fin else float("nan")
    if "reached_target" not in fin:
        fin["reached_target"] = None
    axes = [c for c, _ in CELL_AXES]
    varying = [c for c in axes if fin[c].map(fmt_cfg).nunique() > 1] or axes[:1]  # NaN is a value
    out: list[dict[str, Any]] = []
    for key, g in fin.groupby(axes, dropna=False, sort=False):
        _, ett, hit, n = reach(g)
        ok = g[g["status"] == "completed"]
        out.append({**dict(zip(axes, key, strict=True)), "seeds": len(ok),
                    "acc": float(ok["final_acc"].mean()) if len(ok) else float("nan"),
                    "ett": ett, "reached": f"{hit}/{n}", "failed": int((g["status"] == "failed").sum())})
    cells = pd.DataFrame(out, columns=[*axes, "seeds", "acc", "ett", "reached", "failed"])
    return varying, cells.sort_values("acc", ascending=False, kind="stable", na_position="last")


def status_table(root: Path) -> RenderableType:
    """Counts per status and the best cells, then a ``note:`` line for each thing in the
    sweep folder that could not be read."""
    name, rows, notes = read_sweep(SweepPaths(root), curves=False)
    varying, cells = cell_rows(rows)
    parts: list[RenderableType] = [Text(_counts_title(name, rows))]
    if len(cells):
        same = [f"{head} {fmt_cfg(cells[col].iloc[0])}" for col, head in CELL_AXES
                if col not in varying and cells[col].notna().any()]
        if same:
            parts.append(Text("every trial: " + ", ".join(same)))
        table = Table(show_edge=False, pad_edge=False)
        for col, head in CELL_AXES:
            if col in varying:
                table.add_column(head, overflow="fold")
        for head in ("seeds", "acc", "epochs→target", "reached", "failed"):
            table.add_column(head, justify="right", overflow="fold", no_wrap=head != "epochs→target")
        for _, r in cells.head(BEST).iterrows():
            table.add_row(*(fmt_cfg(r[c]) for c in varying), str(r["seeds"]),
                          f"{r['acc']:.4f}" if pd.notna(r["acc"]) else "—", r["ett"], r["reached"],
                          str(r["failed"]))
        parts.append(table)
        shown = f"the {BEST} best of {len(cells)} cells" if len(cells) > BEST else f"all {len(cells)} cells"
        parts.append(Text(f"{shown}, by mean final accuracy over completed trials; epochs→target: "
                          "median over completed and failed trials, never-reached ones counted as "
                          "later (cens.)"))
    if SweepPaths(root).rounds.exists():  # an adaptive sweep: its round and open cells
        from mixsweep.adaptive import adaptive_lines

        parts += [Text(line) for line in adaptive_lines(root)]
    parts += [Text(f"note: {n}") for n in notes]
    return Group(*parts)


def with_slurm(root: Path, table: RenderableType) -> RenderableType:
    """The status table, under a line with the sweep's SLURM job state (if it has a job)."""
    from mixsweep.slurm import job_state

    info = job_state(root)
    if info is None:
        return table
    if info.get("error"):  # the job id or SLURM could not be read: say why, show the rest
        which = f" {info['job_id']}" if info["job_id"] != "?" else ""
        return Group(Text(f"SLURM job{which}: state unknown: {info['error']}"), table)
    line = f"SLURM job {info['job_id']}: {info['state']}"
    if info["reason"] and info["reason"] != "None":
        line += f" ({info['reason']})"
    if info["nodes"]:
        line += f" on {info['nodes']}"
    if info["restarts"]:
        line += f", requeued {info['restarts']}x"
    if info["run_time"]:
        line += f", run time {info['run_time']}" + (f" of {info['time_limit']}" if info["time_limit"] else "")
    return Group(Text(line), Text(f"log: {info['log']}"), table)


def view(root: Path) -> RenderableType:
    """What ``status`` prints once: the SLURM line (if any) and the status table."""
    return with_slurm(root, status_table(root))


def show(root: Path, console: Console, watch: float = 0) -> None:
    """Print the view once, or refresh it every ``watch`` seconds until Ctrl-C."""
    if not watch:
        console.print(view(root))
        return
    from rich.live import Live

    with Live(view(root), console=console, refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(watch)
                live.update(view(root))
        except KeyboardInterrupt:
            pass
