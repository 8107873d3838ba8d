"""The report's data model and the helpers every view of it shares.

``load`` reads sweep folders (through :func:`mixsweep.results.load_results`)
into one :class:`ReportData`; the figures, the tables and the W&B report are
views of it, as is ``status``'s table (``censored_median``, ``fmt_cfg``).

Censoring: a trial that never reached its target accuracy has no
epochs-to-target. Medians treat it as "later than every observed epoch"
(exact for a fixed epoch budget) and say "not reached" when more than half
are censored. A failed trial (a non-finite loss) that never reached the
target is censored too: leaving it out would make a mode that diverges more
often look faster. Tables show each cell's failed trials beside it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mixsweep.names import MODES
from mixsweep.results import load_results
from mixsweep.store import StoreError, SweepPaths

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


FINISHED = ("completed", "failed")
_LAYER_RANK = {"stem_pre": (0, 0), "stem": (1, 0), "pool": (3, 0), "logits": (4, 0), "probs": (5, 0)}


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
    def finished(self) -> pd.DataFrame:
        """Completed and failed trials: the ones epochs-to-target and the tables count."""
        return self.results[self.results["status"].isin(FINISHED)]

    @property
    def modes(self) -> list[str]:
        seen = set(self.results["mixup.mode"])
        return [m for m in MODES if m in seen] + sorted(seen - set(MODES))


def layer_order(seen: list[str]) -> list[str]:
    """Layers in network order (every model's ``probe_layers`` order: stem_pre, stem, the
    numbered blocks or stages, pool, logits, probs); names of no known kind keep the order
    seen, after them. Needs no model (no torch import)."""
    def rank(name: str) -> tuple[int, int] | None:
        m = re.fullmatch(r"(?:block|layer)(\d+)", name)
        return (2, int(m.group(1))) if m else _LAYER_RANK.get(name)

    known = sorted((x for x in seen if rank(x) is not None), key=lambda x: rank(x) or (9, 0))
    return known + [x for x in seen if rank(x) is None]


def _read_spec(sp: SweepPaths) -> dict[str, Any]:
    """spec.yaml as a plain mapping (for the name and the spec differences); {} if unreadable."""
    try:
        raw = yaml.safe_load(sp.spec.read_bytes().decode())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return {}  # read_sweep says why in its note
    return raw if isinstance(raw, dict) else {}


def _load_one(run_dir: Path) -> tuple[str, dict[str, Any], pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    sp = SweepPaths(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory (give runs/<sweep>)")
    if not sp.results.is_file():
        raise ReportError(f"{run_dir}: no results.csv (not a sweep folder, or not launched yet)")
    spec = _read_spec(sp)
    try:
        res = load_results(run_dir)
    except StoreError as err:
        raise ReportError(str(err)) from None
    missing = {"trial_id", "status", "mixup.mode", "data.dataset"} - set(res.trials.columns)
    if missing:
        raise ReportError(f"{run_dir}/results.csv: missing columns {', '.join(sorted(missing))}")
    given = spec.get("name")
    name = given if isinstance(given, str) and given else run_dir.name
    nl = res.layers.dropna(subset=["nl"])[["trial_id", "epoch", "layer", "nl"]] if len(res.layers) else res.layers
    return name, spec, res.trials, res.epochs, nl, [f"{run_dir}: {n}" for n in res.notes]


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
        shown = results[col].map(fmt_cfg)
        keep = shown.str.lower().isin(wants).to_numpy()
        if not any(keep):
            seen = ", ".join(sorted(set(shown)))
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
        res.append(results.assign(sweep=name))
        meta = results[["trial_id", "mixup.mode", "data.dataset"]].assign(sweep=name)
        if len(h):
            hist.append(h.merge(meta, on="trial_id"))
        if len(n):
            nls.append(n.merge(meta, on="trial_id"))
    results = pd.concat(res, ignore_index=True)
    if where:
        results = select(results, where).reset_index(drop=True)
        kept = pd.MultiIndex.from_frame(results[["sweep", "trial_id"]])
        hist = [h[pd.MultiIndex.from_frame(h[["sweep", "trial_id"]]).isin(kept)] for h in hist]
        nls = [n[pd.MultiIndex.from_frame(n[["sweep", "trial_id"]]).isin(kept)] for n in nls]
        hist, nls = [h for h in hist if len(h)], [n for n in nls if len(n)]
    meta = ["mixup.mode", "data.dataset", "sweep"]  # no metrics.jsonl readable: empty, same columns
    history = pd.concat(hist, ignore_index=True) if hist else pd.DataFrame(columns=["trial_id", "epoch", "test_acc", *meta])
    nl = pd.concat(nls, ignore_index=True) if nls else pd.DataFrame(columns=["trial_id", "epoch", "layer", "nl", *meta])
    seen = [c[3:] for c in results.columns if c.startswith("nl.")]
    seen += [x for x in distinct(nl["layer"]) if x not in seen]
    data = ReportData(sweeps, specs, results, history, nl, layer_order(seen), notes=notes)
    data.by = resolve_axis(by, results) if by else None
    return data


def resolve_axis(by: str, results: pd.DataFrame, option: str = "--by") -> str:
    """The results column an axis name (alias or column) stands for; ReportError if none."""
    col = AXIS_ALIASES.get(by, by)
    if col not in results.columns or col in ("trial_id", "status") or col.startswith(("nl", "cos.")):
        short = ", ".join(sorted(AXIS_ALIASES))
        raise ReportError(f"{option} {by!r}: not a config axis; use one of {short} or a results.csv config column")
    return col


def axis_label(col: str) -> str:
    """The axis's name as tables and figures print it."""
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
    obs = sorted(float(e) for e, r in zip(epochs, reached, strict=True) if truthy(r) and pd.notna(e))
    n_cens = n - len(obs)
    # sorted sample: the observed epochs, then the censored ones (all > every observed)
    lo, hi = (n - 1) // 2, n // 2
    if hi >= len(obs):
        return None, "not reached"
    med = (obs[lo] + obs[hi]) / 2
    return med, f"{med:g}" + (f" ({n_cens} cens.)" if n_cens else "")


def truthy(v: Any) -> bool:
    """A results.csv boolean (True, "True", "true") as a bool; NaN and None are False."""
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


def reach(trials: pd.DataFrame) -> tuple[float | None, str, int, int]:
    """Epochs to target over the finished trials given (completed and failed; a failed trial
    that never reached the target is censored): (median or None, its text, how many reached,
    how many finished). One rule for the report, its tables and ``status``."""
    fin = trials[trials["status"].isin(FINISHED)]
    med, txt = censored_median(fin["epochs_to_target"], fin["reached_target"])
    return med, txt, sum(truthy(r) for r in fin["reached_target"]), len(fin)


def acc_text(acc: pd.Series) -> str:
    """Mean ± sd of the accuracies given ("—" when none)."""
    acc = pd.to_numeric(acc, errors="coerce").dropna()
    if acc.empty:
        return "—"
    return f"{acc.mean():.3f} ± {acc.std(ddof=1):.3f}" if len(acc) > 1 else f"{acc.mean():.3f}"


def cell_table(data: ReportData) -> pd.DataFrame:
    """One row per config cell (seeds pooled) of finished trials: accuracy and NL over the
    completed ones, epochs to target over completed and failed, the failed counted."""
    finished = data.finished
    keys = config_axes(finished) or ["data.dataset"]
    rows = []
    mode_rank = {m: i for i, m in enumerate(data.modes)}
    for key, g in finished.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = {axis_label(k) if k != "sweep" else "sweep": fmt_cfg(v) for k, v in zip(keys, key, strict=True)}
        ok = g[g["status"] == "completed"]
        _, med, reached, n = reach(g)
        row.update({
            "n seeds": int(ok["seed"].nunique()) if "seed" in ok else len(ok),
            "final acc": acc_text(ok["final_acc"]),
            "median epochs to target": med,
            "reached target": f"{reached}/{n}",
            "failed": int((g["status"] == "failed").sum()),
        })
        for layer in data.layers:
            col = f"nl.{layer}"
            row[f"NL {layer}"] = float(ok[col].mean()) if col in ok and len(ok) else float("nan")
        row["_sort"] = (mode_rank.get(g["mixup.mode"].iloc[0], 99),)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    first = [c for c in table.columns if c in ("sweep", "dataset", "labeled fraction")]
    table = table.sort_values(first + ["_sort"], kind="stable") if first else table.sort_values("_sort", kind="stable")
    return table.drop(columns="_sort").reset_index(drop=True)


def distinct(values: pd.Series) -> list[Any]:
    """``list(dict.fromkeys(values))``: the values in order of first appearance; for a text
    column without iterating it in Python (slow for pandas' Arrow-backed strings)."""
    if pd.api.types.is_string_dtype(values.dtype) and values.dtype != object:
        return list(values.unique())
    return list(dict.fromkeys(values))


def fmt_cfg(v: Any) -> str:
    """A config value as tables print it: "—" for none, 1.0 as "1"."""
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
