"""``mixsweep compare``: a contrast's table (Markdown + CSV) and forest plot (HTML + PNG).

Reads the run folders with :func:`mixsweep.report.load`, computes the contrast with
:mod:`mixsweep.contrast`, draws it with :mod:`mixsweep.contrast_plot`, and writes
``compare.md``, ``compare.csv``, ``forest.html`` (and ``forest.png``,
``forest_outcomes.png`` when kaleido and Chrome are there) into one folder, atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mixsweep.contrast import ACC, ALPHA, ETT, Contrast, ContrastError, contrast_table
from mixsweep.report_data import ReportError, fmt_cfg, load
from mixsweep.store import atomic_write_text

_SHOWN = ["layer", "n", "pairing", "mean A", "mean B", "diff", "CI low", "CI high", "verdict",
          "failed A", "failed B"]


@dataclass
class Compared:
    """What ``write_compare`` produced."""

    contrast: Contrast
    table: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _num(v: object) -> str:
    return "—" if isinstance(v, float) and not math.isfinite(v) else f"{v:.4g}" if isinstance(v, float) else str(v)


def render_markdown(table: pd.DataFrame, c: Contrast, sweeps: list[str], notes: list[str]) -> str:
    """One Markdown table per family (metric, moment), with what every number is."""
    from mixsweep.contrast_plot import cell_columns

    cells = cell_columns(table)
    parts = [
        f"# Contrast {c.axis} = {c.a} − {c.b}: {', '.join(sweeps)}\n",
        f"Written by `mixsweep compare`. diff = mean of ({c.a} − {c.b}); per seed when the arms ran "
        "the same seeds (paired t-interval on the per-seed differences, df = n − 1), else Welch's "
        "interval (n = trials A + B). Intervals are Bonferroni-adjusted simultaneous intervals over "
        f"each family (one metric at one moment, all its cells x layers): level 1 − {ALPHA}/m. "
        "The verdict follows from that interval only. NL: lower = more linear; \"mid\" = each "
        "trial's mean over its intermediate layers; the sanity probe (stem_pre) is left out. "
        f"{ETT}: the restricted mean of min(epochs to target, budget + 1), a trial that never "
        "reached the target or failed counting as budget + 1. Failed trials (non-finite loss) "
        "have no NL or accuracy: failed A/B counts them per cell.\n",
    ]
    parts += [f"- note: {n}\n" for n in notes]
    for (metric, moment), g in table.groupby(["metric", "moment"], sort=False):
        m, level = int(g["family size"].iloc[0]), float(g["level"].iloc[0])
        parts.append(f"\n## {metric}, {moment} (family of {m}, each interval at {level:.4f})\n")
        cols = cells + [x for x in _SHOWN if not (x == "layer" and metric in (ACC, ETT))]
        cols += ["censored A", "censored B"] if metric == ETT else []
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(_num(r[x]) for x in cols) + " |" for _, r in g.iterrows()]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _write_html(path: Path, figs: dict, title: str) -> None:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    divs = "".join(pio.to_html(f, full_html=False, include_plotlyjs=False, div_id=k,
                               config={"displaylogo": False}) for k, f in figs.items())
    atomic_write_text(path, f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                            f"<script>{get_plotlyjs()}</script></head><body>{divs}</body></html>")


def _not_finished(data, c: Contrast) -> list[str]:
    res = data.results[data.results[c.axis].map(fmt_cfg).isin([c.a, c.b])]
    left = res[~res["status"].isin(["completed", "failed"])]
    if left.empty:
        return []
    counts = ", ".join(f"{n} {s}" for s, n in left["status"].value_counts().items())
    return [f"{len(left)} trials not finished ({counts}): left out of every interval"]


def write_compare(run_dirs: list[Path], contrast: str, out_dir: Path, *, early_epoch: int | None = None,
                  png: bool = True, layers: list[str] | None = None) -> Compared:
    """Write compare.md, compare.csv, forest.html (+ PNGs) into ``out_dir``; return the table.
    Raises :class:`ReportError` (or its :class:`ContrastError`) for input it cannot use."""
    from mixsweep import contrast_plot

    out_dir = Path(out_dir)
    if (out_dir.exists() or out_dir.is_symlink()) and not out_dir.is_dir():
        raise ContrastError(f"--out {out_dir} is a file, not a folder: give a folder for the outputs")
    data = load([Path(d) for d in run_dirs], by=None)  # a ReportError says what is wrong
    c, table = contrast_table(data, contrast, early_epoch, layers=layers)
    notes = list(data.notes) + _not_finished(data, c)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = Compared(c, table, notes=notes)
    md, csv, html = out_dir / "compare.md", out_dir / "compare.csv", out_dir / "forest.html"
    atomic_write_text(md, render_markdown(table, c, data.sweeps, notes))
    atomic_write_text(csv, table.to_csv(index=False))
    figs = contrast_plot.figures(table, str(c), c.label)
    _write_html(html, figs, f"mixsweep compare {c}")
    done.files += [md, csv, html]
    if png:
        from mixsweep.report_figures import write_pngs

        try:
            done.files += write_pngs(figs, out_dir, width=1200)
        except ReportError as err:  # no kaleido/Chrome: the HTML holds the same figures
            done.notes.append(str(err).replace("--png: ", "PNG skipped: "))
    return done
