"""The forest plot of a contrast: one row per cell and layer, the adjusted interval as a bar,
zero marked; one panel per moment (NL) or per outcome (accuracy, epochs to target)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mixsweep.contrast import ACC, ETT
from mixsweep.report_figures import FONT

_COLORS = {"below": "#0072B2", "above": "#D55E00", "none": "#7a7a7a"}  # Okabe-Ito


def cell_columns(table: pd.DataFrame) -> list[str]:
    """The cell's own columns (the other axes), in the table's order."""
    first = list(table.columns).index("metric")
    return list(table.columns[:first])


def _row_label(r: pd.Series, cols: list[str]) -> str:
    cell = ", ".join(f"{c} {r[c]}" for c in cols) or "all"
    return cell if r["layer"] == "—" else f"{cell} · {r['layer']}"


def forest(table: pd.DataFrame, families: list[tuple[str, str]], title: str) -> go.Figure:
    """One panel per (metric, moment) family; rows shared across panels."""
    cols = cell_columns(table)
    parts = [table[(table["metric"] == m) & (table["moment"] == w)] for m, w in families]
    labels = list(dict.fromkeys(_row_label(r, cols) for p in parts for _, r in p.iterrows()))
    fig = make_subplots(rows=1, cols=len(families), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[f"{m}, {w}" if m != ETT else m for m, w in families])
    for i, part in enumerate(parts, 1):
        for _, r in part.iterrows():
            lo, hi = r["CI low"], r["CI high"]
            if not (math.isfinite(lo) and math.isfinite(hi)):
                continue
            side = "below" if hi < 0 else "above" if lo > 0 else "none"
            y = _row_label(r, cols)
            fig.add_trace(go.Scatter(
                x=[lo, hi], y=[y, y], mode="lines", line=dict(color=_COLORS[side], width=5),
                showlegend=False, hovertemplate=f"{y}<br>{r['verdict']}<br>[%{{x:.3g}}]<extra></extra>",
            ), row=1, col=i)
            fig.add_trace(go.Scatter(
                x=[r["diff"]], y=[y], mode="markers", marker=dict(color="#000", size=7, symbol="line-ns-open"),
                showlegend=False, hovertemplate=f"{y}<br>diff %{{x:.3g}}, n {r['n']}<extra></extra>",
            ), row=1, col=i)
        fig.add_vline(x=0, line=dict(color="#222", width=1, dash="dash"), row=1, col=i)
    fig.update_yaxes(categoryorder="array", categoryarray=labels[::-1], automargin=True)
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", font=dict(size=17)),
                      template="plotly_white", font=FONT, height=160 + 22 * max(len(labels), 1),
                      margin=dict(l=40, r=30, t=90, b=60))
    return fig


def figures(table: pd.DataFrame, contrast: str, a: str) -> dict[str, go.Figure]:
    """``forest`` (NL, one panel per moment) and ``forest_outcomes`` (accuracy, epochs to target)."""
    moments = list(dict.fromkeys(table.loc[table["metric"] == "NL", "moment"]))
    def sub(metric_rows: pd.DataFrame) -> str:
        level = metric_rows["level"].min() if len(metric_rows) else 0.95
        return (f"<br><sup>{contrast}: difference {a} − other, Bonferroni-adjusted intervals (level "
                f"{level:.4f} or more); blue: below zero, orange: above</sup>")

    out = {}
    if moments:
        out["forest"] = forest(table, [("NL", m) for m in moments],
                               f"NL difference (below zero = {a} more linear)" + sub(table[table["metric"] == "NL"]))
    out["forest_outcomes"] = forest(table, [(ACC, "end"), (ETT, "restricted mean")],
                                    "Final accuracy and epochs to target (restricted mean)"
                                    + sub(table[table["metric"] != "NL"]))
    return out
