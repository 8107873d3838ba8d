"""Compare sweeps: results store -> one self-contained HTML report (+ PNGs, + a W&B report).

Reads only the local store (``runs/<sweep>/spec.yaml``, ``results.csv``,
``trials/*/metrics.jsonl``), never a web API. The HTML embeds plotly.js, so it
opens without a network. Figures live in :mod:`mixsweep.report_figures`, the
W&B report in :mod:`mixsweep.report_wandb`.

Censoring: a trial that never reached its target accuracy has no
epochs-to-target. Medians treat it as "later than every observed epoch"
(exact for a fixed epoch budget) and say "not reached" when more than half
are censored; figures show such trials as censored, never at a made-up epoch.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mixsweep.names import MODES
from mixsweep.store import StoreError, SweepPaths, atomic_write_text, read_metrics, read_sweep

# Short names accepted by ``--by`` (any results.csv config column works too).
AXIS_ALIASES = {
    "k": "mixup.k", "alpha": "mixup.alpha", "mode": "mixup.mode",
    "fraction": "data.labeled_fraction", "labeled_fraction": "data.labeled_fraction",
    "dataset": "data.dataset", "arch": "model.arch", "epochs": "train.epochs",
    "depth": "model.depth", "batchnorm": "model.batchnorm", "weight": "mixup.unsup_weight",
    "labels": "data.num_labels", "num_labels": "data.num_labels",
}
DEFAULT_BY = "data.labeled_fraction"
AXIS_LABELS = {
    "mixup.k": "k (points mixed)", "mixup.alpha": "alpha (Dirichlet)",
    "data.labeled_fraction": "labeled fraction", "data.dataset": "dataset",
    "mixup.mode": "mode", "model.arch": "architecture", "model.depth": "depth (conv layers)",
    "model.batchnorm": "BatchNorm", "mixup.unsup_weight": "consistency weight",
    "data.num_labels": "labels",
}


class ReportError(ValueError):
    """A run dir or option the report cannot use (reported as one line, exit 2)."""


@dataclass
class ReportData:
    """Every sweep's tables, concatenated, with a ``sweep`` column."""

    sweeps: list[str]
    specs: dict[str, dict[str, Any]]
    results: pd.DataFrame   # one row per trial (all statuses)
    history: pd.DataFrame   # one row per (trial, epoch): test_acc, ...
    nl: pd.DataFrame        # one row per (trial, measured epoch, layer): nl
    layers: list[str]       # the model's probe order (network order, not alphabetical)
    by: str | None = None   # facet-row axis
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> pd.DataFrame:
        return self.results[self.results["status"] == "completed"]

    @property
    def modes(self) -> list[str]:
        seen = set(self.results["mixup.mode"])
        return [m for m in MODES if m in seen] + sorted(seen - set(MODES))


def layer_order(arch: str | None, seen: list[str], depth: int = 4) -> list[str]:
    """Layers in network order: the model's ``probe_layers`` (stored JSON sorts keys);
    ``depth``: the deepest cnn among the trials (its layers include every shallower one's)."""
    order: list[str] = []
    if arch:
        try:
            from mixsweep.models import build_model

            order = list(build_model(arch, 3, 10, 32, width=4, depth=depth).probe_layers)
        except ValueError:  # an arch this version does not know: keep the order seen
            order = []
    return [x for x in order if x in seen] + [x for x in seen if x not in order]


def _read_spec(sp: SweepPaths) -> dict[str, Any]:
    """spec.yaml as a plain mapping (for the name and the spec differences); {} if unreadable."""
    try:
        raw = yaml.safe_load(sp.spec.read_bytes().decode())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return {}  # read_sweep says why in its note
    return raw if isinstance(raw, dict) else {}


def _load_one(run_dir: Path) -> tuple[str, dict[str, Any], pd.DataFrame, list[dict], list[dict], list[str]]:
    sp = SweepPaths(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory (give runs/<sweep>)")
    if not sp.results.is_file():
        raise ReportError(f"{run_dir}: no results.csv (not a sweep folder, or not launched yet)")
    spec = _read_spec(sp)
    try:
        _, results, notes = read_sweep(sp)
    except StoreError as err:
        raise ReportError(str(err)) from None
    missing = {"trial_id", "status", "mixup.mode", "data.dataset"} - set(results.columns)
    if missing:
        raise ReportError(f"{run_dir}/results.csv: missing columns {', '.join(sorted(missing))}")
    name = spec.get("name") if isinstance(spec.get("name"), str) and spec.get("name") else run_dir.name
    hist, nl, cut = [], [], {}
    for tid, status in zip(results["trial_id"], results["status"], strict=True):
        records, why = read_metrics(sp.trial(str(tid)).metrics)
        if why and status != "unreadable":  # an unreadable trial has its note already
            cut.setdefault(re.sub(r" line \d+", "", why), []).append(str(tid))
        for rec in records:
            hist.append({"trial_id": tid, **{k: v for k, v in rec.items() if not isinstance(v, dict)}})
            for layer, v in (rec.get("nl") or {}).items():
                nl.append({"trial_id": tid, "epoch": rec["epoch"], "layer": layer, "nl": v})
    for why, ids in cut.items():
        which = f"{len(ids)} trial{'s' if len(ids) > 1 else ''} ({', '.join(ids[:5])}" \
                f"{' and more' if len(ids) > 5 else ''})"
        notes.append(f"{why}, from that line on, in {which}: their curves end before it"
                     if why.startswith("metrics.jsonl:") else f"{why} in {which}: no curves for them")
    return name, spec, results, hist, nl, [f"{run_dir}: {n}" for n in notes]


def select(results: pd.DataFrame, where: list[str]) -> pd.DataFrame:
    """Keep the trials whose config matches every ``KEY=VALUE`` (aliases as for --by;
    values as the tables print them: ``fraction=1``, ``batchnorm=true``, ``k=none``;
    ``weight=10,none``: any of them)."""
    for cond in where:
        key, sep, value = cond.partition("=")
        if not sep or not key.strip():
            raise ReportError(f"--where {cond!r}: write KEY=VALUE, e.g. fraction=0.1")
        col = resolve_axis(key.strip(), results, "--where")
        wants = {w.strip().lower() for w in value.split(",")}
        wants |= {"—"} if wants & {"none", "null"} else set()
        keep = [_fmt_cfg(v).lower() in wants for v in results[col]]
        if not any(keep):
            seen = ", ".join(sorted({_fmt_cfg(v) for v in results[col]}))
            raise ReportError(f"--where {cond!r}: no trial has {col} = {value.strip()}; values: {seen}")
        results = results[keep]
    return results


def load(run_dirs: list[Path], by: str | None = DEFAULT_BY, where: list[str] | None = None) -> ReportData:
    """Read every sweep's store; ``by`` names the axis of facet rows (or None);
    ``where`` keeps only the trials matching each ``KEY=VALUE``."""
    if not run_dirs:
        raise ReportError("give at least one run dir (runs/<sweep>)")
    sweeps, specs, res, hist, nls, notes = [], {}, [], [], [], []
    for d in run_dirs:
        name, spec, results, h, n, said = _load_one(Path(d))
        notes += said
        if name in specs:
            raise ReportError(f"{d}: sweep {name!r} given twice")
        sweeps.append(name)
        specs[name] = spec
        keep = ["trial_id", "mixup.mode", "data.dataset"]
        res.append(results.assign(sweep=name))
        meta = results[keep].assign(sweep=name)
        if h:
            hist.append(pd.DataFrame(h).merge(meta, on="trial_id"))
        if n:
            nls.append(pd.DataFrame(n).merge(meta, on="trial_id"))
    results = pd.concat(res, ignore_index=True)
    if where:
        results = select(results, where).reset_index(drop=True)
        kept = set(zip(results["sweep"], results["trial_id"], strict=True))
        hist = [h[[k in kept for k in zip(h["sweep"], h["trial_id"], strict=True)]] for h in hist]
        nls = [n[[k in kept for k in zip(n["sweep"], n["trial_id"], strict=True)]] for n in nls]
        hist, nls = [h for h in hist if len(h)], [n for n in nls if len(n)]
    meta = ["mixup.mode", "data.dataset", "sweep"]  # no metrics.jsonl readable: empty, same columns
    history = pd.concat(hist, ignore_index=True) if hist else pd.DataFrame(columns=["trial_id", "epoch", "test_acc", *meta])
    nl = pd.concat(nls, ignore_index=True) if nls else pd.DataFrame(columns=["trial_id", "epoch", "layer", "nl", *meta])
    seen = [c[3:] for c in results.columns if c.startswith("nl.")]
    seen += [x for x in dict.fromkeys(nl["layer"]) if x not in seen]
    arch = results["model.arch"].dropna().iloc[0] if "model.arch" in results and results["model.arch"].notna().any() else None
    depth = int(results["model.depth"].max()) if "model.depth" in results and results["model.depth"].notna().any() else 4
    data = ReportData(sweeps, specs, results, history, nl, layer_order(arch, seen, depth), notes=notes)
    data.by = resolve_axis(by, results) if by else None
    return data


def resolve_axis(by: str, results: pd.DataFrame, option: str = "--by") -> str:
    col = AXIS_ALIASES.get(by, by)
    if col not in results.columns or col in ("trial_id", "status") or col.startswith(("nl", "cos.")):
        short = ", ".join(sorted(AXIS_ALIASES))
        raise ReportError(f"{option} {by!r}: not a config axis; use one of {short} or a results.csv config column")
    return col


def axis_label(col: str) -> str:
    return AXIS_LABELS.get(col, col)


# --------------------------------------------------------------------------- summaries


def censored_median(epochs: pd.Series, reached: pd.Series) -> tuple[float | None, str]:
    """Median epochs-to-target with censored trials counted as later than any observed.

    Returns (median or None when it is censored, a short text such as "4", "4.5",
    "not reached", "—").
    """
    n = len(epochs)
    if n == 0:
        return None, "—"
    obs = sorted(float(e) for e, r in zip(epochs, reached, strict=True) if _truthy(r) and pd.notna(e))
    n_cens = n - len(obs)
    # sorted sample: the observed epochs, then the censored ones (all > every observed)
    lo, hi = (n - 1) // 2, n // 2
    if hi >= len(obs):
        return None, "not reached"
    med = (obs[lo] + obs[hi]) / 2
    return med, f"{med:g}" + (f" ({n_cens} cens.)" if n_cens else "")


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() == "true"
    return bool(v) and not (isinstance(v, float) and math.isnan(v))


def config_axes(results: pd.DataFrame) -> list[str]:
    """Config columns that vary across the given trials (seed excluded)."""
    cols = [c for c in results.columns if c.split(".")[0] in ("data", "model", "train", "mixup", "linearity")]
    cols = [c for c in cols if results[c].astype(str).nunique() > 1]
    first = ["sweep", "data.dataset", "mixup.mode", "mixup.k", "mixup.alpha", "data.labeled_fraction"]
    multi = ["sweep"] if results["sweep"].nunique() > 1 else []
    return multi + [c for c in first[1:] if c in cols] + [c for c in cols if c not in first]


def cell_table(data: ReportData) -> pd.DataFrame:
    """One row per config cell (seeds pooled) of completed trials."""
    done = data.done.copy()
    keys = config_axes(done) or ["data.dataset"]
    rows = []
    mode_rank = {m: i for i, m in enumerate(data.modes)}
    for key, g in done.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = {axis_label(k) if k != "sweep" else "sweep": _fmt_cfg(v) for k, v in zip(keys, key, strict=True)}
        acc = g["final_acc"].astype(float)
        _, med = censored_median(g["epochs_to_target"], g["reached_target"])
        reached = sum(_truthy(r) for r in g["reached_target"])
        row.update({
            "n seeds": int(g["seed"].nunique()) if "seed" in g else len(g),
            "final acc": f"{acc.mean():.3f} ± {acc.std(ddof=1):.3f}" if len(g) > 1 else f"{acc.mean():.3f}",
            "median epochs to target": med,
            "reached target": f"{reached}/{len(g)}",
        })
        for layer in data.layers:
            col = f"nl.{layer}"
            row[f"NL {layer}"] = float(g[col].mean()) if col in g else float("nan")
        row["_sort"] = (mode_rank.get(g["mixup.mode"].iloc[0], 99),)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    first = [c for c in table.columns if c in ("sweep", "dataset", "labeled fraction")]
    table = table.sort_values(first + ["_sort"], kind="stable") if first else table.sort_values("_sort", kind="stable")
    return table.drop(columns="_sort").reset_index(drop=True)


def _fmt_cfg(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


def spec_diff(specs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Spec keys whose value differs between sweeps: one row per key, one column per sweep."""
    flat = {name: _flatten(s) for name, s in specs.items()}
    keys = list(dict.fromkeys(k for f in flat.values() for k in f))
    rows = []
    for key in keys:
        vals = [flat[n].get(key, "(absent)") for n in flat]
        if len({yaml.safe_dump(v) for v in vals}) > 1:
            rows.append({"key": key, **{n: _fmt_spec(v) for n, v in zip(flat, vals, strict=True)}})
    return pd.DataFrame(rows, columns=["key", *flat])


def _fmt_spec(v: Any) -> str:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    return v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


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


def render_html(data: ReportData, figures: dict[str, Any], captions: dict[str, str]) -> str:
    """The report page: every figure with its caption, the cells table, the spec diff."""
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
        parts.append(f'<h2>{i}. {html.escape(fig.layout.title.text or key)}</h2>')
        parts.append(f'<p class="cap">{captions.get(key, "")}</p><div class="figure">{div}</div>')
    parts.append(f"<h2>{len(figures) + 1}. Cells (seeds pooled)</h2>")
    parts.append('<p class="cap">Completed trials per config cell. Median epochs to target counts '
                 "censored trials (never reached) as later than every observed epoch; "
                 "&ldquo;not reached&rdquo; when more than half are censored. NL columns: "
                 "final NL (last measured epoch), shaded per column, darker = less linear.</p>")
    parts.append(_table_html(cell_table(data)))
    if len(data.sweeps) > 1:
        diff = spec_diff(data.specs)
        parts.append(f"<h2>{len(figures) + 2}. Spec differences between sweeps</h2>")
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
                 where: list[str] | None = None, only: list[str] | None = None) -> Built:
    """Write the HTML report (and PNGs / the Markdown tables / the W&B report when asked);
    ``where`` selects trials (``KEY=VALUE``), ``only`` names the figures to draw."""
    from mixsweep import report_figures, report_tables

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
    atomic_write_text(Path(out), render_html(data, figures, captions))
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
