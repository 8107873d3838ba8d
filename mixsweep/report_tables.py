"""Tables of numbers for a write-up: mean ± sd over seeds per config cell, in Markdown.

``mixsweep report ... --markdown FILE`` writes them. A cell is one setting of the
axes that vary among the completed trials (seeds pooled). Nonlinearity is given
at three points of training: at the end (the last measured epoch), at a fixed
early epoch, and at matched accuracy (the first epoch at the target; trials that
never reached it are left out, and n says how many are in). The softmax output
(``probs``) and the logits are reported apart from the intermediate layers:
mixup's targets are linear in probability space, not in the layers before it.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mixsweep.report_data import ReportData, axis_label, config_axes, fmt_cfg, reach

OUTPUT_LAYERS = ("logits", "probs")
SANITY_LAYERS = ("stem_pre",)


def intermediate_layers(layers: list[str]) -> list[str]:
    """Probe layers between the input and the logits (the sanity probe left out)."""
    return [x for x in layers if x not in OUTPUT_LAYERS and x not in SANITY_LAYERS]


def mean_sd(values: pd.Series) -> str:
    """``"0.412 ± 0.031"`` over the non-missing values; ``"—"`` when there are none."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "—"
    if len(v) == 1:
        return f"{v.iloc[0]:.3f}"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def early_epoch(data: ReportData) -> int | None:
    """The first epoch of the regular NL cadence (``linearity.every``; the largest when
    sweeps differ, so every trial has it), or None when there is no such column."""
    col = data.done.get("linearity.every")
    if col is None:  # pd.to_numeric(None) is nan, not None
        return None
    every = pd.to_numeric(col, errors="coerce")
    return int(every.max()) if every.notna().any() else None


def trial_frame(data: ReportData, epoch: int | None) -> pd.DataFrame:
    """One row per finished trial (completed or failed; see ``status``): NL per layer at
    the end (``end.L``), at ``epoch`` (``early.L``) and at matched accuracy (``target.L``), plus the mean over the
    intermediate layers of each (``end.mid`` ...)."""
    done = data.finished.copy()
    mid = intermediate_layers(data.layers)
    early = data.nl[data.nl["epoch"] == epoch] if epoch is not None else data.nl.iloc[0:0]
    early = early.pivot_table(index=["sweep", "trial_id"], columns="layer", values="nl")
    early.columns = [f"early.{c}" for c in early.columns]
    done = done.merge(early, left_on=["sweep", "trial_id"], right_index=True, how="left")
    for when, prefix in (("end", "nl."), ("target", "nl_target."), ("early", "early.")):
        for layer in data.layers:
            col = f"{prefix}{layer}"
            done[f"{when}.{layer}"] = pd.to_numeric(done[col], errors="coerce") if col in done else math.nan
        # a trial's own intermediate layers (depth varies between cells)
        cols = [f"{when}.{x}" for x in mid]
        done[f"{when}.mid"] = done[cols].mean(axis=1, skipna=True) if cols else math.nan
    return done


def _cells(done: pd.DataFrame, data: ReportData):
    keys = config_axes(done)
    keys = keys if "mixup.mode" in keys else ["mixup.mode", *keys]  # always say which mode
    rank = {m: i for i, m in enumerate(data.modes)}
    groups = list(done.groupby(keys, dropna=False, sort=False))
    # the other axes first (in their own order), the mode last: modes side by side per setting
    others = [k for k in keys if k != "mixup.mode"]

    def order(kv: tuple[Any, pd.DataFrame]) -> tuple:
        first = kv[1].iloc[0]
        return (*(_sortable(first[k]) for k in others), rank.get(first["mixup.mode"], 99))

    groups.sort(key=order)
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        yield {axis_label(k): fmt_cfg(v) for k, v in zip(keys, key, strict=True)}, g


def _sortable(v: Any) -> tuple:
    """None/NaN first, then numbers, then text (mixed columns such as k: None, 2, 3)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (0, 0, "")
    if isinstance(v, bool | str):
        return (2, 0, str(v))
    return (1, float(v), "")


def _markdown(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "_no completed trials_\n"
    cols = list(dict.fromkeys(c for r in rows for c in r))
    if columns is not None:  # these in this order, after the cell's own columns
        cols = [c for c in cols if c not in columns] + [c for c in columns if c in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def summary_rows(data: ReportData, frame: pd.DataFrame, epoch: int | None) -> list[dict[str, Any]]:
    """Per cell of ``frame`` (``trial_frame``): accuracy, epochs to target (failed trials
    counted), the failed trials, and NL (intermediate mean, logits, probs)."""
    rows = []
    for cell, g in _cells(frame, data):
        _, med, reached, n = reach(g)  # completed and failed
        failed = int((g["status"] == "failed").sum())
        g = g[g["status"] == "completed"]
        rows.append({
            **cell,
            "n": len(g),
            "final acc": mean_sd(g["final_acc"]),
            "epochs to target (median)": med,
            "reached": f"{reached}/{n}",
            "failed": failed,
            "NL mid, end": mean_sd(g["end.mid"]),
            f"NL mid, epoch {epoch}": mean_sd(g["early.mid"]),
            "NL mid, at target": mean_sd(g["target.mid"]),
            "NL logits, end": mean_sd(g["end.logits"]),
            "NL probs, end": mean_sd(g["end.probs"]),
            "NL probs, at target": mean_sd(g["target.probs"]),
        })
    return rows


def layer_rows(data: ReportData, frame: pd.DataFrame, when: str) -> list[dict[str, Any]]:
    """Per cell of ``frame`` (``trial_frame``): NL of every probe layer (network order) at
    ``when`` (end/early/target)."""
    rows = []
    for cell, g in _cells(frame, data):
        g = g[g["status"] == "completed"]  # a cell of failed trials only: n = 0, said so
        n = int(g[[f"{when}.{x}" for x in data.layers]].notna().any(axis=1).sum())
        row = {**cell, "n": n}
        for layer in data.layers:
            if g[f"{when}.{layer}"].notna().any():
                row[layer] = mean_sd(g[f"{when}.{layer}"])
        rows.append(row)
    return rows


def render_markdown(data: ReportData, epoch: int | None = None) -> str:
    """Every table, with a short header saying what each number is."""
    epoch = early_epoch(data) if epoch is None else epoch
    frame = trial_frame(data, epoch)  # every table below is a view of it
    mid = ", ".join(intermediate_layers(data.layers))
    parts = [
        f"# Tables: {', '.join(data.sweeps)}\n",
        "Written by `mixsweep report --markdown`. Mean ± sd over the completed trials of each cell "
        "(seeds pooled; n trials); failed = the cell's trials that failed (a non-finite loss). "
        "NL = per-layer nonlinearity (0 = affine, lower = more linear). "
        f"\"NL mid\" = each trial's mean NL over its intermediate layers ({mid}), then mean ± sd "
        f"over trials; logits and probs (softmax) are the output and are given apart. \"end\" = the "
        f"last measured epoch, \"epoch {epoch}\" = a fixed early epoch, \"at target\" = the first "
        "epoch at the target accuracy (trials that never reached it are left out). Epochs to "
        "target: median over completed and failed trials, counting never-reached (censored) trials "
        "as later than every observed epoch.\n",
        "## Summary per cell\n",
        _markdown(summary_rows(data, frame, epoch)),
    ]
    for when, title in (("end", "at the end of training"), ("early", f"at epoch {epoch}"),
                        ("target", "at matched accuracy (first epoch at target)")):
        parts += [f"\n## NL per layer {title}\n", _markdown(layer_rows(data, frame, when), data.layers)]
    return "\n".join(parts)
