"""Contrasts between two values of one axis: differences with simultaneous 95% intervals.

``contrast_table(data, "mixup.mode=sup:erm")`` compares arm A (sup) with arm B (erm) in
every cell of the other axes (the seed excluded), per layer and per moment of training
(NL at the end, at an early epoch, at matched accuracy), and for final accuracy and
epochs to target. Pure functions of a :class:`mixsweep.report.ReportData`; no I/O.

Method, and why:

* Paired by seed where both arms ran the same seeds (same seed = same init, labels and
  batches): a t-interval on the per-seed differences A - B, df = n - 1. It is exact for
  normal differences and close for roughly normal ones at n = 3..10. A bootstrap is not
  used: with 3 seeds it has at most 10 distinct resamples and its intervals are far too
  narrow (it ignores the t quantile's small-sample widening).
* Unpaired (no common seeds, or a seed twice in one arm): Welch's interval on the two
  means, Welch-Satterthwaite df.
* Multiplicity: Bonferroni-adjusted simultaneous intervals within each family, one
  family per (metric, moment) over all its cells x layers: each interval is at level
  1 - 0.05 / m. Bonferroni holds under any dependence (the layers of one network are
  strongly correlated) and, unlike Holm, gives intervals, so the verdict follows from
  the interval alone.
* Epochs to target, censoring-aware: a trial that never reached the target (or failed)
  counts as ``train.epochs + 1``; the contrast is then the difference of the restricted
  mean epochs to target (the mean of min(T, budget + 1)), a well-defined estimand that
  treats not-reached as worse than any reach, never drops it.
* Failed trials (a non-finite loss) have no NL or accuracy: they are counted per arm
  per cell (``failed A``/``failed B``), never dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mixsweep.report_data import (
    ReportData,
    ReportError,
    axis_label,
    config_axes,
    fmt_cfg,
    resolve_axis,
    truthy,
)
from mixsweep.report_tables import SANITY_LAYERS, early_epoch, trial_frame

ALPHA = 0.05
MID = "mid"  # each trial's mean NL over its intermediate layers (report_tables' "NL mid")
ETT = "epochs to target"
ACC = "final acc"


class ContrastError(ReportError):
    """A contrast the runs cannot answer (reported as one line, exit 2)."""


@dataclass(frozen=True)
class Contrast:
    """``axis`` (a results.csv column) compared at value ``a`` minus value ``b``."""

    axis: str
    a: str
    b: str

    def __str__(self) -> str:
        return f"{self.axis}={self.a}:{self.b}"

    @property
    def label(self) -> str:
        """How verdicts name arm A: a mode by itself ("sup"), a number with its axis ("k=4")."""
        return self.a if self.a[:1].isalpha() else f"{self.axis.rsplit('.', 1)[-1]}={self.a}"


def parse_contrast(text: str, results: pd.DataFrame) -> Contrast:
    """``"mixup.mode=sup:erm"`` (axis aliases as for ``--by``), checked against the trials."""
    axis, sep, values = text.partition("=")
    a, colon, b = values.partition(":")
    if not sep or not colon or not axis.strip() or not a.strip() or not b.strip():
        raise ContrastError(f"--contrast {text!r}: write AXIS=A:B, e.g. mixup.mode=sup:erm")
    try:
        col = resolve_axis(axis.strip(), results, "--contrast")
    except ReportError as err:
        raise ContrastError(str(err)) from None
    if col == "seed":
        raise ContrastError("--contrast seed: seeds are the replicates, not an axis to contrast")
    seen = {fmt_cfg(v) for v in results[col]}
    lower = {s.lower(): s for s in seen}
    picked = []
    for v in (a.strip(), b.strip()):
        if v.lower() not in lower:
            raise ContrastError(f"--contrast {text!r}: no trial has {col} = {v}; values: {', '.join(sorted(seen))}")
        picked.append(lower[v.lower()])
    if picked[0] == picked[1]:
        raise ContrastError(f"--contrast {text!r}: A and B are the same value")
    return Contrast(col, picked[0], picked[1])


# --------------------------------------------------------------------------- intervals


def paired_stats(diffs: np.ndarray) -> tuple[float, float, float]:
    """(mean, standard error, df) of the per-seed differences (t-interval, df = n - 1)."""
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else math.nan
    se = float(np.std(diffs, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return mean, se, float(n - 1)


def welch_stats(xa: np.ndarray, xb: np.ndarray) -> tuple[float, float, float]:
    """(mean A - mean B, standard error, Welch-Satterthwaite df)."""
    na, nb = len(xa), len(xb)
    mean = float(np.mean(xa) - np.mean(xb)) if na and nb else math.nan
    if na < 2 or nb < 2:
        return mean, math.nan, math.nan
    va, vb = np.var(xa, ddof=1) / na, np.var(xb, ddof=1) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return mean, 0.0, float(na + nb - 2)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return mean, se, float(df)


def interval(mean: float, se: float, df: float, alpha: float) -> tuple[float, float]:
    """Two-sided 1 - alpha t-interval; (nan, nan) when there is no standard error (fewer than
    2 values, or values all equal: a spread of 0 estimates nothing at n = 3..10)."""
    if not (math.isfinite(se) and math.isfinite(df)) or df < 1 or se <= 0:
        return math.nan, math.nan
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return mean - half, mean + half


# --------------------------------------------------------------------------- per-trial values


def trial_values(data: ReportData, epoch: int | None) -> pd.DataFrame:
    """One row per completed or failed trial: ``end.L``/``early.L``/``target.L`` NL (NaN for
    failed), ``final_acc``, and ``ett``, the epochs to target with not-reached and failed
    counted as ``train.epochs + 1`` (``censored`` says which)."""
    frame = trial_frame(data, epoch).reset_index(drop=True)  # completed and failed trials
    failed_mask = frame["status"].eq("failed")
    nl_cols = [c for c in frame.columns if c.split(".", 1)[0] in ("end", "early", "target")]
    frame.loc[failed_mask, nl_cols] = math.nan  # a diverged network's NL is no measurement
    budget = pd.to_numeric(frame.get("train.epochs"), errors="coerce")
    ett = pd.to_numeric(frame["epochs_to_target"], errors="coerce")
    reached = frame["reached_target"].map(truthy) & ett.notna() & ~failed_mask
    frame["censored"] = ~reached
    frame["ett"] = ett.where(reached, budget + 1)
    frame["final_acc"] = pd.to_numeric(frame["final_acc"], errors="coerce").where(~failed_mask)
    return frame


# --------------------------------------------------------------------------- cells


def _missing(v: Any) -> bool:
    return fmt_cfg(v) == "—"


def cells(frame: pd.DataFrame, c: Contrast) -> list[tuple[dict[str, str], pd.DataFrame, pd.DataFrame]]:
    """(cell label, A rows, B rows) per cell of the other axes. An axis an arm ignores (all
    missing in it, e.g. ``mixup.k`` of erm) matches every value of the other arm."""
    arm_a, arm_b = (frame[frame[c.axis].map(fmt_cfg) == v] for v in (c.a, c.b))
    both = pd.concat([arm_a, arm_b])
    axes = [x for x in config_axes(both) if x != c.axis]
    if "sweep" in axes and not set(arm_a["sweep"]) & set(arm_b["sweep"]):
        axes.remove("sweep")  # each arm in its own sweep: the sweep is the contrast itself
    keys_a = [x for x in axes if not arm_a[x].map(_missing).all()]
    keys_b = [x for x in axes if not arm_b[x].map(_missing).all()]
    ga = {k: g for k, g in _groups(arm_a, keys_a)}
    gb = {k: g for k, g in _groups(arm_b, keys_b)}
    out = []
    for ka, rows_a in ga.items():
        for kb, rows_b in gb.items():
            la, lb = dict(zip(keys_a, ka, strict=True)), dict(zip(keys_b, kb, strict=True))
            if any(la[x] != lb[x] for x in set(la) & set(lb)):
                continue
            label = {axis_label(x): la.get(x, lb.get(x, "—")) for x in axes}
            out.append((label, rows_a, rows_b))
    return out


def _groups(arm: pd.DataFrame, keys: list[str]):
    if not keys:
        yield (), arm
        return
    labels = [arm[k].map(fmt_cfg).rename(k) for k in keys]
    for key, g in arm.groupby(labels, sort=False):
        yield (key if isinstance(key, tuple) else (key,)), g


def _paired(rows_a: pd.DataFrame, rows_b: pd.DataFrame) -> bool:
    """Both arms ran common seeds, each seed once per arm."""
    if "seed" not in rows_a or rows_a["seed"].duplicated().any() or rows_b["seed"].duplicated().any():
        return False
    return len(set(rows_a["seed"]) & set(rows_b["seed"])) >= 2


def _one(rows_a: pd.DataFrame, rows_b: pd.DataFrame, col: str, paired: bool) -> dict[str, Any]:
    """The raw contrast of one column: n, means, diff, se, df (the interval comes later)."""
    if paired:
        va = rows_a.set_index("seed")[col].astype(float)
        vb = rows_b.set_index("seed")[col].astype(float)
        d = (va - vb).dropna()  # seeds run in both arms with a value in both
        mean, se, df = paired_stats(d.to_numpy())
        ma, mb = va.loc[d.index].mean(), vb.loc[d.index].mean()
        n: int | str = len(d)  # paired: seeds; Welch: "a+b"
    else:
        xa, xb = (r[col].astype(float).dropna().to_numpy() for r in (rows_a, rows_b))
        mean, se, df = welch_stats(xa, xb)
        ma, mb = (float(np.mean(x)) if len(x) else math.nan for x in (xa, xb))
        n = f"{len(xa)}+{len(xb)}"
    return {"n": n, "mean A": ma, "mean B": mb, "diff": mean, "se": se, "df": df}


def _moments(epoch: int | None) -> list[tuple[str, str]]:
    out = [("end", "end")]
    out += [("early", f"epoch {epoch}")] if epoch is not None else []
    return out + [("target", "at target")]


def layer_choice(data: ReportData, only: list[str] | None = None) -> list[str]:
    """The layers compared: every probe layer and ``mid`` (the sanity probe left out), or
    ``only`` those named; an unknown name raises :class:`ContrastError` listing the known."""
    known = [x for x in data.layers if x not in SANITY_LAYERS] + [MID]
    if not only:
        return known
    bad = [x for x in only if x not in known]
    if bad:
        raise ContrastError(f"--layers: no layer {', '.join(map(repr, bad))} in these runs; "
                            f"layers: {', '.join(known)}")
    return [x for x in known if x in only]


def raw_rows(data: ReportData, c: Contrast, epoch: int | None,
             layers: list[str] | None = None) -> list[dict[str, Any]]:
    """Every (cell, metric, moment, layer) contrast before the multiplicity adjustment."""
    frame = trial_values(data, epoch)
    layers = layer_choice(data, layers)
    rows = []
    for label, rows_a, rows_b in cells(frame, c):
        paired = _paired(rows_a, rows_b)
        common = {
            "pairing": "paired" if paired else "Welch",
            "failed A": int(rows_a["status"].eq("failed").sum()),
            "failed B": int(rows_b["status"].eq("failed").sum()),
        }
        for when, moment in _moments(epoch):
            for layer in layers:
                col = f"{when}.{layer}"
                if col not in frame or (rows_a[col].isna().all() and rows_b[col].isna().all()):
                    continue
                rows.append({**label, "metric": "NL", "moment": moment, "layer": layer, **common,
                             **_one(rows_a, rows_b, col, paired)})
        rows.append({**label, "metric": ACC, "moment": "end", "layer": "—", **common,
                     **_one(rows_a, rows_b, "final_acc", paired)})
        rows.append({**label, "metric": ETT, "moment": "restricted mean", "layer": "—", **common,
                     **_one(rows_a, rows_b, "ett", paired),
                     "censored A": int(rows_a["censored"].sum()), "censored B": int(rows_b["censored"].sum())})
    return rows


# --------------------------------------------------------------------------- verdicts


# what A - B below zero / above zero means: lower NL is more linear, higher accuracy better
_WORDS = {"NL": ("more linear", "less linear"), ACC: ("less accurate", "more accurate"),
          ETT: ("faster to target", "slower to target")}


def verdict(metric: str, lo: float, hi: float, a: str) -> str:
    """From the adjusted interval only: below zero / above zero / straddling (or none)."""
    below, above = _WORDS[metric]
    if hi < 0:
        return f"{a} {below}"
    if lo > 0:
        return f"{a} {above}"
    return "no difference shown" if math.isfinite(lo) else "no interval"


def adjust(rows: list[dict[str, Any]], c: Contrast, alpha: float = ALPHA) -> pd.DataFrame:
    """Bonferroni per family (metric, moment): level 1 - alpha / m over its m intervals."""
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    has_ci = table["se"].map(lambda s: math.isfinite(s)) & (table["df"] >= 1)
    table["family size"] = has_ci.groupby([table["metric"], table["moment"]]).transform("sum").astype(int)
    lows, highs, levels, words = [], [], [], []
    for metric, diff, se, df, m in zip(table["metric"], table["diff"], table["se"], table["df"],
                                       table["family size"], strict=True):
        level = alpha / max(int(m), 1)
        lo, hi = interval(diff, se, df, level)
        lows.append(lo)
        highs.append(hi)
        levels.append(1 - level)
        words.append(verdict(metric, lo, hi, c.label))
    table["CI low"], table["CI high"], table["level"], table["verdict"] = lows, highs, levels, words
    return table


def contrast_table(data: ReportData, contrast: str, epoch: int | None = None,
                   alpha: float = ALPHA, layers: list[str] | None = None) -> tuple[Contrast, pd.DataFrame]:
    """The contrast's table: one row per cell x metric x moment x layer, with the
    Bonferroni-adjusted interval and the verdict. ``epoch``: the early epoch (default
    ``linearity.every``). ``layers``: compare only these (e.g. ``["mid", "probs"]``, the
    endpoints declared before looking): a smaller family, so narrower intervals.
    Raises :class:`ContrastError` when nothing can be compared."""
    c = parse_contrast(contrast, data.results)
    epoch = early_epoch(data) if epoch is None else epoch
    measured = {int(e) for e in data.nl["epoch"]}
    if epoch is not None and epoch not in measured:
        shown = ", ".join(map(str, sorted(measured)[:20])) or "none"
        raise ContrastError(f"--early-epoch {epoch}: no trial measured NL at that epoch; measured: {shown}")
    rows = raw_rows(data, c, epoch, layers)
    if not rows:
        raise ContrastError(f"--contrast {c}: no cell of the other axes holds both {c.a} and {c.b} trials")
    table = adjust(rows, c, alpha)
    if not (table["se"].map(math.isfinite)).any():
        raise ContrastError(f"--contrast {c}: no cell has 2 or more seeds with results in both arms; "
                            "no interval can be computed (run more seeds)")
    return c, table
