"""The report's figures (plotly): one function per question, colours fixed per mode.

Every figure facets columns by dataset (and by sweep for scatter figures when
several sweeps are compared) and rows by ``data.by``; lines are the mean over
trials with a +-1 sd band; several sweeps on one line figure differ by dash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mixsweep.report_data import (
    ReportData,
    ReportError,
    axis_label,
    censored_median,
    distinct,
    truthy,
)

# Okabe-Ito (colour-blind safe); the same mode has the same colour in every figure.
MODE_COLORS = {"erm": "#000000", "sup": "#0072B2", "unsup": "#D55E00", "both": "#CC79A7",
               "mt": "#009E73"}
_EXTRA = ["#E69F00", "#56B4E9", "#F0E442", "#999999"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]
INIT_COLOR = "#9a9a9a"
FONT = dict(family="Helvetica, Arial, sans-serif", size=13, color="#222")


def mode_color(mode: str, modes: list[str]) -> str:
    if mode in MODE_COLORS:
        return MODE_COLORS[mode]
    return _EXTRA[[m for m in modes if m not in MODE_COLORS].index(mode) % len(_EXTRA)]


def _rgba(hex_color: str, a: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{a})"


def _fmt(v: Any) -> str:
    if isinstance(v, float) and np.isnan(v):
        return "—"
    return f"{v:g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- facets


def _with_cfg(data: ReportData, frame: pd.DataFrame) -> pd.DataFrame:
    """Attach the row-facet column (``row``) and the target accuracy to a per-trial frame."""
    cols = ["sweep", "trial_id", "train.target_accuracy", "train.epochs"]
    cols += [data.by] if data.by and data.by not in frame.columns else []
    res = data.done[[c for c in dict.fromkeys(cols) if c in data.done.columns]]
    out = frame.merge(res, on=["sweep", "trial_id"], how="inner", suffixes=("", "_r"))
    return _add_row(data, out)


def _labels(values: pd.Series, label: Any) -> list[str]:
    """``[label(v) for v in values]``, calling ``label`` once per distinct value (an object
    column, where 1, 1.0 and True would count as one value, is labelled value by value)."""
    if values.dtype == object:
        return [label(v) for v in values]
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    return np.array([label(v) for v in uniques], dtype=object)[codes].tolist()


def _dataset_rows(datasets: pd.Series, rows: pd.Series) -> list[str]:
    """``"<dataset> · <row>"`` (just the dataset where the row is ""), built once per pair."""
    if datasets.dtype == object or rows.dtype == object:
        return [f"{d}" + (f" · {r}" if r else "") for d, r in zip(datasets, rows, strict=True)]
    cd, ud = pd.factorize(datasets, use_na_sentinel=False)
    cr, ur = pd.factorize(rows, use_na_sentinel=False)
    n = max(len(ur), 1)
    pairs, inverse = np.unique(cd.astype(np.int64) * n + cr, return_inverse=True)
    labels = [f"{ud[p // n]}" + (f" · {ur[p % n]}" if ur[p % n] else "") for p in pairs]
    return np.array(labels, dtype=object)[inverse.reshape(-1)].tolist()


def _add_row(data: ReportData, frame: pd.DataFrame, skip: str | None = None) -> pd.DataFrame:
    frame = frame.copy()
    if data.by and data.by != skip:
        frame["row"] = _labels(frame[data.by], lambda v: f"{axis_label(data.by)} = {_fmt(v)}")
    else:
        frame["row"] = ""
    return frame


def _rows(frame: pd.DataFrame, data: ReportData) -> list[str]:
    if data.by and data.by in frame and frame["row"].ne("").any():
        order = frame.sort_values(data.by, na_position="first")["row"]
        return distinct(order)
    return [""]


def _grid(rows: list[str], cols: list[str], title: str, x_title: str, y_title: str,
          row_h: int = 300, shared_y: bool | str = False, spacing: float = 0.06) -> go.Figure:
    rows, cols = rows or [""], cols or [""]  # nothing to draw (no readable metrics): one empty panel
    fig = make_subplots(
        rows=len(rows), cols=len(cols), column_titles=cols if any(cols) else None,
        row_titles=rows if any(rows) else None, x_title=x_title, y_title=y_title,
        shared_yaxes=shared_y, horizontal_spacing=min(spacing, 0.5 / max(len(cols), 1)),
        vertical_spacing=min(0.1, 0.5 / max(len(rows), 1)),
    )
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=18)), template="plotly_white",
        font=FONT, height=140 + row_h * len(rows), margin=dict(l=80, r=170, t=90, b=70),
        legend=dict(title_text="mode", tracegroupgap=2, font=dict(size=13)),
    )
    # Row titles sit right of the plot: keep them clear of the legend.
    fig.for_each_annotation(lambda a: a.update(font=dict(size=14)))
    return fig


def _band(fig: go.Figure, x, mean, sd, color: str, group: str, r: int, c: int) -> None:
    lo, hi = np.asarray(mean - sd, float), np.asarray(mean + sd, float)
    ok = ~np.isnan(lo)
    if ok.sum() < 1:
        return
    xs = list(np.asarray(x)[ok])
    fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(hi[ok]) + list(lo[ok])[::-1], fill="toself", mode="lines",
                             fillcolor=_rgba(color, 0.14), line=dict(width=0), hoverinfo="skip",
                             showlegend=False, legendgroup=group, name=group + " band"), row=r, col=c)


def _legend_name(mode: str, sweep: str, data: ReportData) -> str:
    return mode if len(data.sweeps) == 1 else f"{mode} · {sweep}"


def _mean_lines(fig: go.Figure, data: ReportData, frame: pd.DataFrame, x: str, y: str,
                rows: list[str], cols: list[str], col_key: str, x_order: list | None = None) -> None:
    """Mean +- sd over trials, one line per (sweep, mode), in every panel."""
    shown: set[str] = set()
    for si, sweep in enumerate(data.sweeps):
        for mode in data.modes:
            name = _legend_name(mode, sweep, data)
            color = mode_color(mode, data.modes)
            sub = frame[(frame["sweep"] == sweep) & (frame["mixup.mode"] == mode)]
            # split once: each panel's rows, in frame order (what a boolean mask per panel gives)
            panels = dict(list(sub.groupby(["row", col_key] if col_key else ["row"], sort=False)))
            for (ri, row), (ci, col) in ((a, b) for a in enumerate(rows) for b in enumerate(cols)):
                g = panels.get((row, col) if col_key else (row,))
                if g is None or g.empty:
                    continue
                agg = g.groupby(x, sort=True)[y].agg(["mean", "std", "count"])
                if x_order is not None:
                    agg = agg.reindex([v for v in x_order if v in agg.index])
                _band(fig, agg.index, agg["mean"], agg["std"], color, name, ri + 1, ci + 1)
                fig.add_trace(go.Scatter(
                    x=list(agg.index), y=agg["mean"], mode="lines+markers", name=name, legendgroup=name,
                    showlegend=name not in shown, line=dict(color=color, width=2.2, dash=DASHES[si % 5]),
                    marker=dict(size=6), customdata=agg["count"],
                    hovertemplate=f"{name}<br>%{{x}}: %{{y:.3g}} (n=%{{customdata}})<extra></extra>",
                ), row=ri + 1, col=ci + 1)
                shown.add(name)


# --------------------------------------------------------------------------- the figures


def fig_profile(data: ReportData, which: str = "final") -> go.Figure:
    """1. NL per layer (network order) per mode: the study's central figure."""
    prefix = {"final": "nl.", "target": "nl_target."}[which]
    done = data.done
    if which == "target":
        done = done[[truthy(v) for v in done["reached_target"]]]
    cols_nl = [f"{prefix}{layer}" for layer in data.layers if f"{prefix}{layer}" in done]
    long = done.melt(id_vars=[c for c in ("sweep", "trial_id", "mixup.mode", "data.dataset", data.by)
                              if c and c in done],
                     value_vars=cols_nl, var_name="layer", value_name="nl").dropna(subset=["nl"])
    long["layer"] = long["layer"].str.removeprefix(prefix)
    long = _add_row(data, long)
    datasets = distinct(data.done["data.dataset"])
    init = _with_cfg(data, data.nl[data.nl["epoch"] == 0])
    rows = _rows(long if not long.empty else init, data) if not (long.empty and init.empty) else [""]
    title = ("Per-layer nonlinearity at the end of training" if which == "final"
             else "Per-layer nonlinearity at matched accuracy (first epoch at target)")
    fig = _grid(rows, datasets, title, "layer (input → output)", "nonlinearity NL (lower = more linear)",
                row_h=340, shared_y="rows")
    if long.empty:
        fig.add_annotation(text="no completed trial reached its target accuracy", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=1.02, font=dict(size=14, color="#a00"))
    # the network at init (epoch 0) as a grey reference
    for (ri, row), (ci, ds) in ((a, b) for a in enumerate(rows) for b in enumerate(datasets)):
        g = init[(init["row"] == row) & (init["data.dataset"] == ds)]
        if g.empty:
            continue
        here = set(distinct(g["layer"]))
        m = g.groupby("layer")["nl"].mean().reindex([x for x in data.layers if x in here])
        fig.add_trace(go.Scatter(x=list(m.index), y=m.values, mode="lines", name="at init (epoch 0)",
                                 legendgroup="init", showlegend=ri == 0 and ci == 0,
                                 line=dict(color=INIT_COLOR, dash="dot", width=1.8),
                                 hovertemplate="init %{x}: %{y:.3g}<extra></extra>"), row=ri + 1, col=ci + 1)
    _mean_lines(fig, data, long, "layer", "nl", rows, datasets, "data.dataset", x_order=data.layers)
    if len(data.sweeps) > 1:
        fig.update_layout(legend_title_text="mode · sweep")
    # each row shows its own layers (cnn depth may differ between rows), in network order
    for ri, row in enumerate(rows):
        present = set(distinct(long.loc[long["row"] == row, "layer"])) | set(distinct(init.loc[init["row"] == row, "layer"]))
        fig.update_xaxes(categoryorder="array", categoryarray=[x for x in data.layers if x in present],
                         row=ri + 1)
    return fig


def fig_nl_epochs(data: ReportData) -> go.Figure:
    """2. NL of each layer over epochs, per mode (rows: dataset x facet row)."""
    frame = _with_cfg(data, data.nl)
    frame["row"] = _dataset_rows(frame["data.dataset"], frame["row"])
    rows = distinct(frame.sort_values(["data.dataset"] + ([data.by] if data.by else []))["row"])
    seen = set(distinct(frame["layer"]))
    layers = [x for x in data.layers if x in seen]
    fig = _grid(rows or [""], layers, "Nonlinearity of each layer over training", "epoch",
                "nonlinearity NL", row_h=250, spacing=0.035)
    _mean_lines(fig, data, frame, "epoch", "nl", rows, layers, "layer")
    fig.update_yaxes(rangemode="tozero", tickformat=".2~g")
    return fig


def fig_acc_epochs(data: ReportData) -> go.Figure:
    """3. Test accuracy over epochs per mode, with the target accuracy dotted."""
    frame = _with_cfg(data, data.history[data.history["epoch"] >= 0])
    datasets = distinct(data.done["data.dataset"])
    rows = _rows(frame, data)
    fig = _grid(rows, datasets, "Test accuracy over training", "epoch", "test accuracy",
                row_h=300, shared_y="rows")
    _mean_lines(fig, data, frame, "epoch", "test_acc", rows, datasets, "data.dataset")
    for ci, ds in enumerate(datasets):
        t = data.done.loc[data.done["data.dataset"] == ds, "train.target_accuracy"].dropna()
        for ri in range(len(rows)):
            if len(t):
                fig.add_hline(y=float(t.iloc[0]), line=dict(color="#666", dash="dot", width=1),
                              annotation_text=f"target {float(t.iloc[0]):g}",
                              annotation_position="bottom right", row=ri + 1, col=ci + 1)
    return fig


def _panel_col(data: ReportData, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    multi = len(data.sweeps) > 1
    frame["panel"] = [f"{d} · {s}" if multi else str(d) for d, s in zip(frame["data.dataset"], frame["sweep"], strict=True)]
    return frame


def _category(v: Any, axis: str) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "no mixing (erm, mt)"
    short = {"mixup.k": "k", "mixup.alpha": "α"}.get(axis, axis)
    return f"{short} = {_fmt(v)}"


def fig_ett(data: ReportData, axis: str) -> go.Figure:
    """4. Epochs to target vs ``axis`` per mode: trials, medians, censored trials shown as such."""
    frame = _panel_col(data, _add_row(data, data.done, skip=axis))
    frame["cat"] = [_category(v, axis) for v in frame[axis]]
    cats = distinct(frame.sort_values(axis, na_position="first")["cat"])
    panels, rows = distinct(frame["panel"]), _rows(frame, data)
    budget = int(frame["train.epochs"].max())
    cens_y = budget + 1.2  # the "not reached" lane above the epoch budget: not an epoch
    fig = _grid(rows, panels, f"Epochs to target accuracy vs {axis_label(axis)}",
                axis_label(axis), "epochs to target", row_h=330, shared_y=True)
    modes = data.modes
    present = frame.groupby("cat")["mixup.mode"].agg(set).to_dict()
    width = 0.8 / max(len(v) for v in present.values())
    shown: set[str] = set()
    for mode in modes:
        color = mode_color(mode, modes)
        for (ri, row), (ci, panel) in ((a, b) for a in enumerate(rows) for b in enumerate(panels)):
            g = frame[(frame["mixup.mode"] == mode) & (frame["row"] == row) & (frame["panel"] == panel)]
            pts: dict[str, list] = {"rx": [], "ry": [], "cx": [], "cy": [], "ct": [], "mx": [], "my": [], "mt": []}
            for cat, gc in g.groupby("cat", sort=False):
                here = [m for m in modes if m in present[cat]]  # offsets among modes in this category
                x0 = cats.index(cat) + (here.index(mode) - (len(here) - 1) / 2) * width
                reached = np.array([truthy(v) for v in gc["reached_target"]])
                ys = gc.loc[reached, "epochs_to_target"].astype(float).to_numpy()
                ties = pd.Series(ys).groupby(ys).cumcount().to_numpy() if len(ys) else ys
                counts = pd.Series(ys).map(pd.Series(ys).value_counts()).to_numpy() if len(ys) else ys
                pts["rx"] += list(x0 + (ties - (counts - 1) / 2) * min(0.05, width / 4))
                pts["ry"] += list(ys)
                n_c = int((~reached).sum())
                pts["cx"] += list(x0 + (np.arange(n_c) - (n_c - 1) / 2) * min(0.05, width / 4))
                pts["cy"] += [cens_y] * n_c
                pts["ct"] += [f"not reached in {int(e)} epochs" for e in gc.loc[~reached, "epochs_done"]]
                med, txt = censored_median(gc["epochs_to_target"], gc["reached_target"])
                pts["mx"].append(x0)
                pts["my"].append(med if med is not None else cens_y)
                pts["mt"].append(f"median {txt} (n={len(gc)}, {n_c} censored)")
            rc = dict(row=ri + 1, col=ci + 1)
            first = mode not in shown
            fig.add_trace(go.Scatter(x=pts["rx"], y=pts["ry"], mode="markers", name=mode, legendgroup=mode,
                                     showlegend=first, marker=dict(color=color, size=8, opacity=0.75),
                                     hovertemplate=f"{mode}: reached at epoch %{{y}}<extra></extra>"), **rc)
            fig.add_trace(go.Scatter(x=pts["cx"], y=pts["cy"], mode="markers", name=f"{mode} censored",
                                     legendgroup=mode, showlegend=False, text=pts["ct"],
                                     marker=dict(color=color, size=10, symbol="triangle-up-open", line=dict(width=2)),
                                     hovertemplate=f"{mode}: censored, %{{text}}<extra></extra>"), **rc)
            fig.add_trace(go.Scatter(x=pts["mx"], y=pts["my"], mode="markers", name=f"{mode} median",
                                     legendgroup=mode, showlegend=False, text=pts["mt"],
                                     marker=dict(color=color, size=26, symbol="line-ew", line=dict(width=3, color=color)),
                                     hovertemplate=f"{mode}: %{{text}}<extra></extra>"), **rc)
            shown.add(mode)
    ticks = list(range(1, budget + 1, max(1, budget // 10)))
    fig.update_yaxes(range=[0, cens_y + 0.8], tickvals=ticks + [cens_y], ticktext=[str(t) for t in ticks] + ["not reached"])
    fig.update_xaxes(tickvals=list(range(len(cats))), ticktext=cats, range=[-0.6, len(cats) - 0.4])
    fig.update_layout(margin=dict(l=110))
    fig.for_each_annotation(lambda a: a.update(xshift=-40) if a.text == "epochs to target" else None)
    fig.add_hrect(y0=budget + 0.5, y1=cens_y + 0.8, fillcolor="#eeeeee", line_width=0, layer="below", row="all", col="all")
    # legend keys for the marker meaning (dummy traces with no data)
    for name, sym, size in (("trial reached target", "circle", 8), ("censored: never reached", "triangle-up-open", 10),
                            ("median (censoring-aware)", "line-ew", 18)):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, legendgroup="key",
                                 marker=dict(color="#555", size=size, symbol=sym, line=dict(width=2, color="#555"))))
    return fig


def fig_acc_fraction(data: ReportData) -> go.Figure:
    """5. Final accuracy vs labeled fraction per mode (mean +- sd over trials)."""
    axis = "data.labeled_fraction"
    frame = _panel_col(data, _add_row(data, data.done, skip=axis))
    panels, rows = distinct(frame["panel"]), _rows(frame, data)
    fig = _grid(rows, panels, "Final test accuracy vs labeled fraction", "labeled fraction (log scale)",
                "final test accuracy", row_h=330, shared_y=True)
    for mode in data.modes:
        color = mode_color(mode, data.modes)
        for (ri, row), (ci, panel) in ((a, b) for a in enumerate(rows) for b in enumerate(panels)):
            g = frame[(frame["mixup.mode"] == mode) & (frame["row"] == row) & (frame["panel"] == panel)]
            if g.empty:
                continue
            agg = g.groupby(axis)["final_acc"].agg(["mean", "std", "count"])
            fig.add_trace(go.Scatter(
                x=list(agg.index), y=agg["mean"], error_y=dict(array=agg["std"].fillna(0), thickness=1.5, width=5),
                mode="lines+markers", name=mode, legendgroup=mode, showlegend=ri == 0 and ci == 0,
                line=dict(color=color, width=2.2), marker=dict(size=8), customdata=agg["count"],
                hovertemplate=f"{mode}<br>fraction %{{x}}: %{{y:.3f}} (n=%{{customdata}})<extra></extra>",
            ), row=ri + 1, col=ci + 1)
    fracs = sorted(frame[axis].dropna().unique())
    fig.update_xaxes(type="log", tickvals=fracs, ticktext=[f"{f:g}" for f in fracs])
    return fig


CAPTIONS = {
    "profile": "One line per mode: mean over completed trials (seeds; k and alpha pooled within a mode "
               "unless <code>--by</code> splits them), band ±1 sd. Grey dotted: the same networks at init. "
               "Layers in network order; <code>stem_pre</code> is a sanity probe (≈0).",
    "profile_target": "As figure 1, but each trial's NL at the first epoch it reached its target accuracy "
                      "(trials that never reached it are left out): compares modes at equal accuracy.",
    "nl_epochs": "NL of each layer on measured epochs (epoch 0 = init), mean ±1 sd over trials per mode.",
    "acc_epochs": "Test accuracy per epoch, mean ±1 sd over trials per mode; dotted: target accuracy.",
    "ett_k": "Each dot is a trial (reached target); open triangles in the grey &ldquo;not reached&rdquo; lane are "
             "censored trials (never reached the target within their epochs; no epoch is made up). Bars: "
             "medians counting censored trials as later than every observed epoch; a median in the "
             "grey lane means more than half never reached the target.",
    "ett_alpha": "As figure 4, against the mixup alpha.",
    "acc_fraction": "Final test accuracy, mean ±1 sd over trials per mode (k, alpha pooled).",
}


FIGURES = {
    "profile": lambda d: fig_profile(d, "final"),
    "profile_target": lambda d: fig_profile(d, "target"),
    "nl_epochs": fig_nl_epochs,
    "acc_epochs": fig_acc_epochs,
    "ett_k": lambda d: fig_ett(d, "mixup.k"),
    "ett_alpha": lambda d: fig_ett(d, "mixup.alpha"),
    "acc_fraction": fig_acc_fraction,
}


def all_figures(data: ReportData, only: list[str] | None = None) -> tuple[dict[str, go.Figure], dict[str, str]]:
    """The report's figures (all, or the names in ``only``, in the report's order)."""
    unknown = sorted(set(only or []) - set(FIGURES))
    if unknown:
        raise ReportError(f"--figures: unknown figure {unknown[0]!r}; use {', '.join(FIGURES)}")
    figs = {name: make(data) for name, make in FIGURES.items() if not only or name in only}
    return figs, CAPTIONS


def write_pngs(figures: dict[str, go.Figure], out_dir: Path, width: int = 1400) -> list[Path]:
    """Each figure as DIR/<name>.png via kaleido (drives a local Chrome/Chromium)."""
    import plotly.io as pio

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png" for name in figures]
    figs = list(figures.values())
    try:
        pio.write_images(figs, paths, width=width, height=[f.layout.height for f in figs], scale=1)
    except Exception as err:  # kaleido missing, or no Chrome: say what to install, no traceback
        raise ReportError(f"--png: PNG export failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                          "it needs `pip install kaleido>=1` and Chrome/Chromium (apt install chromium, "
                          "or set BROWSER_PATH)") from None
    return paths
