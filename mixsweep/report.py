"""Compare sweeps: results store -> one self-contained HTML report (+ PNGs, + a W&B report).

Reads only the local store (``runs/<sweep>/spec.yaml``, ``results.csv``,
``trials/*/metrics.jsonl``), never a web API. The HTML embeds plotly.js, so it
opens without a network. This module only puts the report together: the data
model and its shared helpers live in :mod:`mixsweep.report_data` (censoring
rules there), figures in :mod:`mixsweep.report_figures`, the Markdown tables
in :mod:`mixsweep.report_tables`, the W&B report in :mod:`mixsweep.report_wandb`.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mixsweep import report_figures, report_tables
from mixsweep.report_data import (
    DEFAULT_BY,
    ReportData,
    ReportError,
    axis_label,
    cell_table,
    load,
    spec_diff,
)
from mixsweep.store import atomic_write_text

__all__ = ["Built", "ReportError", "load", "render_html", "write_report"]  # load: the report's reader


# --------------------------------------------------------------------------- HTML


def _table_html(table: pd.DataFrame, heat_prefix: str = "NL ") -> str:
    """A plain HTML table; NL columns shaded per column (darker = less linear)."""
    if table.empty:
        return "<p>No completed trials.</p>"
    heads = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    ranges = {c: (table[c].min(), table[c].max()) for c in table.columns if str(c).startswith(heat_prefix)}
    body = []
    for _, row in table.iterrows():
        cells = []
        for c in table.columns:
            v = row[c]
            if c in ranges:
                lo, hi = ranges[c]
                t = 0.0 if not (hi > lo) or pd.isna(v) else (v - lo) / (hi - lo)
                txt = "—" if pd.isna(v) else f"{v:.3g}"
                cells.append(f'<td class="num" style="background:rgba(213,94,0,{0.08 + 0.5 * t:.2f})">{txt}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="tablewrap"><table class="cells"><thead><tr>{heads}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px 32px;color:#222}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:32px 0 4px;border-bottom:1px solid #ddd;padding-bottom:4px}
p.meta,p.cap{color:#555;margin:4px 0 8px;max-width:1100px;line-height:1.45}
.figure{margin:0 0 8px} table.cells{border-collapse:collapse;font-size:13px}
table.cells th,table.cells td{border:1px solid #ddd;padding:3px 7px;text-align:left;white-space:nowrap}
table.cells th{background:#f4f4f4;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums}
.tablewrap{overflow-x:auto;max-width:100%}
"""


@dataclass
class Built:
    """What ``write_report`` produced."""

    html: Path
    figures: dict[str, Any]
    pngs: list[Path] = field(default_factory=list)
    wandb: str | None = None  # a line saying where the W&B report went
    markdown: Path | None = None  # the tables of numbers (--markdown)
    notes: list[str] = field(default_factory=list)  # what could not be read (left out)


def contrast_view(table: pd.DataFrame) -> pd.DataFrame:
    """The contrast table as shown: cells, what was compared, the interval and the verdict."""
    from mixsweep.contrast_plot import cell_columns

    keep = [*cell_columns(table), "metric", "moment", "layer", "n", "diff", "CI low", "CI high",
            "verdict", "failed A", "failed B"]
    view = table[[c for c in keep if c in table.columns]].copy()
    for col in ("diff", "CI low", "CI high"):
        view[col] = view[col].map(lambda v: "—" if pd.isna(v) else f"{v:+.3g}")
    return view


def render_html(data: ReportData, figures: dict[str, Any], captions: dict[str, str],
                contrast: tuple[str, pd.DataFrame] | None = None) -> str:
    """The report page: every figure with its caption, the cells table, the spec diff, and
    the contrast's table of intervals when one was asked for."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    statuses = data.results["status"].value_counts().to_dict()
    status_txt = ", ".join(f"{n} {s}" for s, n in statuses.items())
    names = ", ".join(html.escape(s) for s in data.sweeps)
    parts = [
        f"<h1>mixsweep report: {names}</h1>",
        f'<p class="meta">{len(data.results)} trials ({html.escape(status_txt)}); '
        f"figures use completed trials. Generated {dt.datetime.now():%Y-%m-%d %H:%M}. "
        "NL = per-layer nonlinearity along interpolation paths (0 = affine; lower = more linear). "
        + (f"Facet rows: {html.escape(axis_label(data.by))}. " if data.by else "")
        + ("Sweeps are told apart by line dash and panel titles; colours always mean the mode."
           if len(data.sweeps) > 1 else "") + "</p>",
    ]
    for note in data.notes:
        parts.append(f'<p class="meta">{html.escape(note)}</p>')
    for i, (key, fig) in enumerate(figures.items(), 1):
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{key}",
                          default_width="100%", config={"displaylogo": False, "responsive": True})
        heading = (fig.layout.title.text or key).split("<br>")[0]  # a subtitle stays in the figure
        parts.append(f'<h2>{i}. {html.escape(heading)}</h2>')
        parts.append(f'<p class="cap">{captions.get(key, "")}</p><div class="figure">{div}</div>')
    parts.append(f"<h2>{len(figures) + 1}. Cells (seeds pooled)</h2>")
    parts.append('<p class="cap">Finished trials per config cell: accuracy and NL over the completed ones; '
                 "failed trials (a non-finite loss) are counted in the failed column and, when they "
                 "never reached the target, as censored. Median epochs to target counts "
                 "censored trials (never reached) as later than every observed epoch; "
                 "&ldquo;not reached&rdquo; when more than half are censored. NL columns: "
                 "final NL (last measured epoch), shaded per column, darker = less linear.</p>")
    parts.append(_table_html(cell_table(data)))
    n = len(figures) + 2
    if contrast is not None:
        name, table = contrast
        parts.append(f"<h2>{n}. Contrast {html.escape(name)}</h2>")
        parts.append('<p class="cap">A minus B per cell of the other axes, paired by seed where '
                     "the arms ran the same seeds (t-interval on the per-seed differences; else "
                     "Welch). Intervals are Bonferroni-adjusted over each family (one metric at one "
                     "moment: all its cells and layers); the verdict follows from the interval "
                     "only. Failed trials are counted per arm and, for epochs to target, as never "
                     "reached (restricted mean of min(epochs, budget + 1)). The forest plots above "
                     "show the same intervals.</p>")
        parts.append(_table_html(contrast_view(table)))
        n += 1
    if len(data.sweeps) > 1:
        diff = spec_diff(data.specs)
        parts.append(f"<h2>{n}. Spec differences between sweeps</h2>")
        parts.append(_table_html(diff) if not diff.empty else "<p>The specs are identical.</p>")
    title = "mixsweep report: " + names
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head>"
            f"<body>{''.join(parts)}</body></html>")


def _in_the_way(path: Path) -> Path | None:
    """A file where ``path`` needs a folder above it (the nearest existing parent)."""
    parent = next((p for p in path.parents if p.exists()), None)
    return parent if parent is not None and not parent.is_dir() else None


def _check_file_path(path: Path, option: str) -> None:
    if path.is_dir():
        raise ReportError(f"{option} {path} is a folder: give a file name, e.g. {path / 'report.html'}"
                          if option == "--out" else f"{option} {path} is a folder: give a file name")
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise ReportError(f"{option} {path} is not a regular file: give another file name")
    blocker = _in_the_way(path)
    if blocker is not None:
        raise ReportError(f"{option} {path}: {blocker} is a file, not a folder: give another path")


def _check_folder_path(path: Path, option: str) -> None:
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise ReportError(f"{option} {path} is a file, not a folder: give a folder for the PNGs")
    blocker = _in_the_way(path)
    if blocker is not None:
        raise ReportError(f"{option} {path}: {blocker} is a file, not a folder: give another path")


def write_report(run_dirs: list[Path], out: Path, *, by: str | None = DEFAULT_BY,
                 png_dir: Path | None = None, wandb: bool = False,
                 markdown: Path | None = None, early_epoch: int | None = None,
                 where: list[str] | None = None, only: list[str] | None = None,
                 contrast: str | None = None, contrast_layers: list[str] | None = None) -> Built:
    """Write the HTML report (and PNGs / the Markdown tables / the W&B report when asked);
    ``where`` selects trials (``KEY=VALUE``), ``only`` names the figures to draw;
    ``contrast`` (``AXIS=A:B``, as in ``mixsweep compare``) adds its section and forest plots,
    over ``contrast_layers`` only when given."""
    _check_file_path(Path(out), "--out")  # before any work: a wrong path costs nothing
    if markdown is not None:
        _check_file_path(Path(markdown), "--markdown")
    if png_dir is not None:
        _check_folder_path(Path(png_dir), "--png")
    data = load([Path(d) for d in run_dirs], by=by, where=where)
    if data.done.empty:
        why = f" ({data.notes[0]})" if data.notes else ""
        raise ReportError("no completed trials in " + ", ".join(str(d) for d in run_dirs) + why)
    measured = sorted({int(e) for e in data.nl["epoch"]})
    if markdown is not None and early_epoch is not None and early_epoch not in measured:
        shown = ", ".join(map(str, measured[:20])) + (", ..." if len(measured) > 20 else "")
        raise ReportError(f"--early-epoch {early_epoch}: no trial measured NL at that epoch; "
                          f"measured: {shown or 'none'}")
    figures, captions = report_figures.all_figures(data, only)
    section = None
    if contrast is not None:
        from mixsweep import contrast_plot
        from mixsweep.contrast import contrast_table

        c, table = contrast_table(data, contrast, early_epoch, layers=contrast_layers)
        for key, fig in contrast_plot.figures(table, str(c), c.label).items():
            figures[f"contrast_{key}"] = fig
            captions[f"contrast_{key}"] = (f"Contrast {html.escape(str(c))}: one row per cell (and "
                                           "layer), the adjusted interval as a bar, zero marked.")
        section = (str(c), table)
    atomic_write_text(Path(out), render_html(data, figures, captions, section))
    built = Built(Path(out), figures, notes=list(data.notes))
    if markdown is not None:
        atomic_write_text(Path(markdown), report_tables.render_markdown(data, early_epoch))
        built.markdown = Path(markdown)
    if png_dir is not None:
        built.pngs = report_figures.write_pngs(figures, Path(png_dir))
    if wandb:
        from mixsweep import report_wandb

        built.wandb = report_wandb.publish(data, Path(out))
    return built
