"""The results store: one object owns every path of a sweep; atomic writes.

    runs/<sweep>/
      spec.yaml              the sweep file as validated (resolved defaults)
      results.csv            one row per trial id: config + final metrics + status
      trials/<trial_id>/
        config.json          the resolved TrialConfig
        metrics.jsonl        one line per epoch (epoch 0 = at init)
        checkpoint.pt        the last finished epoch (resume point)
        result.json          the final record (status completed | failed)
      slurm/                 job.sbatch, job id, logs (SLURM launches)

The files' reading and writing live in :mod:`mixsweep.store_io`, the paths in
:mod:`mixsweep.store_paths`; this module builds the results table from them and
re-exports both, so ``from mixsweep.store import SweepPaths, atomic_write_text``
keeps working.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mixsweep.store_index import RowIndex
from mixsweep.store_io import (
    RESULT_NUMBERS,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    epoch_record_problem,
    read_json,
    read_json_checked,
    read_jsonl,
    read_metrics,
    result_problem,
    unreadable,
)
from mixsweep.store_paths import SweepLocked, SweepPaths, TrialPaths

__all__ = [
    "STATUS_ORDER", "StoreError", "SweepLocked", "SweepPaths", "TrialPaths", "atomic_torch_save",
    "atomic_write_json", "atomic_write_text", "collect_rows", "current_results", "epoch_record_problem",
    "read_json", "read_json_checked", "read_jsonl", "read_metrics", "read_results", "read_sweep",
    "result_problem", "result_row", "write_results",
]

# --------------------------------------------------------------------------- the results table

STATUS_ORDER = ("completed", "failed", "error", "running", "pending", "unreadable")


class StoreError(RuntimeError):
    """A sweep folder that cannot be read at all; the message says what to do next."""


def result_row(trial_id: str, config: dict[str, Any], result: dict[str, Any] | None,
               epochs_done: int, status: str) -> dict[str, Any]:
    """One results-table row: config columns, status, final metrics, NL per layer."""
    row: dict[str, Any] = {"trial_id": trial_id, "status": status, "epochs_done": epochs_done}
    row.update(config)
    r = result or {}
    row["reason"] = r.get("reason")
    for key in ("final_acc", "best_acc", "target_accuracy", "reached_target", "epochs_to_target",
                "steps_to_target", "seconds_to_target", "train_seconds", "wall_seconds", "nl_epoch"):
        row[key] = r.get(key)
    for prefix, key in (("nl", "nonlinearity"), ("cos", "cosine"), ("nl_target", "nl_at_target")):
        for layer, v in (r.get(key) or {}).items():
            row[f"{prefix}.{layer}"] = v
    return row


def _trial_row(sweep: SweepPaths, tid: str, config: dict[str, Any],
               histories: dict[str, tuple[list[dict[str, Any]], str | None]] | None,
               curves: bool) -> tuple[dict[str, Any], bool]:
    """(the row of trial ``tid`` from its folder, whether it came from result.json alone)."""
    tp = sweep.trial(tid)
    result, why = tp.read_result_checked(tid)
    if result and not curves and histories is None:
        done = result.get("epochs_done")
        epochs = done if isinstance(done, int) else 0
        return result_row(tid, config, result, epochs, result["status"]), True
    history, metrics_why = read_metrics(tp.metrics)
    if histories is not None:
        histories[tid] = (history, metrics_why)
    epochs = history[-1]["epoch"] if history else 0
    if result:
        status = result["status"]
    elif why or metrics_why:
        status, result = "unreadable", {"reason": why or metrics_why}
    else:
        error, error_why = read_json_checked(tp.error)
        if error is not None or error_why:  # crashed past max_failures in Ray; re-runs on relaunch
            text = error.get("error") if isinstance(error, dict) else None
            text = text if isinstance(text, str) else error_why or "error.json holds no error text"
            status, result = "error", {"reason": text}
        else:
            status = "running" if history else "pending"
    return result_row(tid, config, result, epochs, status), False


def collect_rows(sweep: SweepPaths, trials: Iterable[Any],
                 histories: dict[str, tuple[list[dict[str, Any]], str | None]] | None = None,
                 *, curves: bool = True) -> list[dict[str, Any]]:
    """Rows for the given TrialConfigs (every expanded trial exactly once), from their folders.

    A result.json that is there but is not the trial's valid record (garbage, wrong types,
    another trial's) makes the row ``unreadable``, its reason saying why; a relaunch runs
    such a trial again from its checkpoint. ``histories``, when given, receives each
    trial's (epoch records, why reading stopped) as read. ``curves=False`` (status) skips
    metrics.jsonl where result.json is valid: ``epochs_done`` then comes from it."""
    # cfg.trial_id: a hash of the config, computed once per config
    return [_trial_row(sweep, cfg.trial_id, cfg.flat(), histories, curves)[0] for cfg in trials]


def _grid(sweep: SweepPaths, cached: bool) -> tuple[str, list[str], list[dict[str, Any]], RowIndex | None]:
    """(sweep name, trial ids, flat configs, the row index when ``cached``): from the index
    while spec.yaml is unchanged, else expanded from it (SpecError if it is not a sweep)."""
    from mixsweep.expand import expand
    from mixsweep.spec_yaml import load_spec

    try:
        before = sweep.spec.read_bytes() if cached else None
    except OSError:  # load_spec says why
        before = None
    index = RowIndex(sweep.root, before) if before is not None else None
    if index is not None and index.grid is not None:
        return (*index.grid, index)
    spec = load_spec(sweep.spec)
    trials = expand(spec)
    ids, configs = [c.trial_id for c in trials], [c.flat() for c in trials]
    if index is not None:
        try:
            same = sweep.spec.read_bytes() == before  # not replaced while it was read
        except OSError:
            same = False
        uniform = all(list(c) == list(configs[0]) for c in configs)
        if not (same and uniform and index.set_grid(spec.name, ids, configs)):
            index = None
    return spec.name, ids, configs, index


def _rows(sweep: SweepPaths, ids: list[str], configs: list[dict[str, Any]], index: RowIndex | None,
          histories: dict[str, tuple[list[dict[str, Any]], str | None]] | None,
          curves: bool, epochs_done: Callable[[str], int] | None = None) -> list[dict[str, Any]]:
    """collect_rows over ids and flat configs, taking the index's rows still current;
    ``epochs_done`` (see ``read_sweep``) patches the finished trials' rows."""
    rows = []
    for tid, config in zip(ids, configs, strict=True):
        fields = index.row(tid) if index is not None else None
        if fields is None:
            row, result_only = _trial_row(sweep, tid, config, histories, curves)
            if index is not None:
                index.put(tid, {k: v for k, v in row.items() if k != "trial_id" and k not in config},
                          result_only)
        else:  # the same keys in the same order as result_row makes them
            row = {"trial_id": tid, "status": fields.pop("status"),
                   "epochs_done": fields.pop("epochs_done"), **config, **fields}
        if epochs_done is not None and row["status"] in ("completed", "failed"):
            row = {**row, "epochs_done": epochs_done(tid)}  # a copy: the index keeps its row
        rows.append(row)
    if index is not None:
        index.save()
    return rows


def _native(values: list[Any]) -> Any:
    """A column as read_csv would type it, for the kinds it parses the same way every time
    (missing, booleans, numbers); None for the others (text, mixed): those go through CSV."""
    import numpy as np

    kinds = {type(v) for v in values}
    nan = float("nan")
    if kinds <= {type(None)}:
        return np.full(len(values), nan)
    if kinds <= {int, float, type(None)} and (float in kinds or type(None) in kinds):
        return np.array([nan if v is None else v for v in values], dtype=np.float64)
    if kinds == {int} and all(-(2**63) <= v < 2**63 for v in values):
        return np.array(values, dtype=np.int64)
    if kinds == {bool}:
        return np.array(values, dtype=bool)
    if kinds == {bool, type(None)}:
        return np.array([nan if v is None else v for v in values], dtype=object)
    return None


def as_read(rows: list[dict[str, Any]]):
    """The rows as a DataFrame with the dtypes read_results gives (a CSV round trip). Columns
    of missing values, booleans and numbers are built directly, as read_csv types them;
    the others make the round trip (through the csv module, much faster than to_csv)."""
    import csv
    import io

    import pandas as pd

    cols = list(dict.fromkeys(k for r in rows for k in r))
    direct = {}
    for c in cols:
        arr = _native([r.get(c) for r in rows]) if c != "trial_id" else None
        if arr is not None:
            direct[c] = arr
    text = [c for c in cols if c not in direct]
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(text)
    out.writerows([r.get(k) for k in text] for r in rows)
    buf.seek(0)
    read = pd.read_csv(buf, dtype={"trial_id": str})
    if not direct:
        return read
    return pd.DataFrame({c: direct[c] if c in direct else read[c] for c in cols})


def write_results(sweep: SweepPaths, rows: list[dict[str, Any]]) -> None:
    """results.csv, atomically: one row per trial id."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    atomic_write_text(sweep.results, frame.to_csv(index=False))


def read_results(sweep: SweepPaths):
    """The results table as a pandas DataFrame (raises FileNotFoundError if absent)."""
    import pandas as pd

    return pd.read_csv(sweep.results, dtype={"trial_id": str})


def current_results(sweep: SweepPaths):
    """The results table as it stands now, rebuilt from the trial folders (see ``read_sweep``)."""
    return read_sweep(sweep)[1]


def _csv_as_written(sweep: SweepPaths, notes: list[str], why_not_spec: str):
    """results.csv as the last launch wrote it, its number columns checked (StoreError if
    it cannot be read either)."""
    import pandas as pd

    def fail(why: str) -> StoreError:
        return StoreError(f"{sweep.root}: spec.yaml is not a sweep file ({why_not_spec}) and "
                          f"results.csv {why}: nothing to show; relaunch the sweep file "
                          "(mixsweep launch FILE) to rewrite spec.yaml: finished trials are kept")

    try:
        frame = pd.read_csv(sweep.results, dtype={"trial_id": str})
    except FileNotFoundError:
        raise fail("is missing") from None
    except OSError as err:
        raise fail(f"cannot be read ({unreadable(sweep.results, err)})") from None
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise fail(f"is not a results table ({type(err).__name__})") from None
    missing = {"trial_id", "status"} - set(frame.columns)
    if missing:
        raise fail(f"has no {' or '.join(sorted(missing))} column")
    # a boolean Series, not a list: an empty list would select no columns
    sane = frame["trial_id"].map(lambda t: isinstance(t, str) and bool(t) and "/" not in t
                                 and not t.startswith(".")).astype(bool)
    frame = frame.loc[sane].reset_index(drop=True)
    for col in [c for c in frame.columns if c in RESULT_NUMBERS or c.startswith(("nl.", "cos.", "nl_target."))]:
        values = pd.to_numeric(frame[col], errors="coerce")
        if (values.isna() & frame[col].notna()).any():
            notes.append(f"results.csv: column {col} holds values that are not numbers "
                         "(left out)")
        frame[col] = values
    notes.append(f"spec.yaml is not a sweep file ({why_not_spec}): showing results.csv as the "
                 "last launch wrote it")
    return frame


def _unreadable_notes(rows: list[dict[str, Any]], spec_file: Path) -> list[str]:
    """One line per distinct reason a trial could not be read, naming its trials."""
    by_reason: dict[str, list[str]] = {}
    for r in rows:
        if r["status"] == "unreadable":
            by_reason.setdefault(str(r["reason"]), []).append(r["trial_id"])
    notes = []
    for reason, ids in by_reason.items():
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        them = "them" if len(ids) > 1 else "it"
        # a file or folder of the wrong kind stays in the relaunch's way; garbage is replaced
        fix = "move it away, then " if "not a folder" in reason or "a folder, not" in reason else ""
        notes.append(f"unreadable: {len(ids)} trial{'s' if len(ids) > 1 else ''} ({shown}): "
                     f"{reason}; {fix}a relaunch (mixsweep launch {spec_file}) runs {them} again "
                     "from the last checkpoint")
    return notes


def read_sweep(sweep: SweepPaths,
               histories: dict[str, tuple[list[dict[str, Any]], str | None]] | None = None,
               *, curves: bool = True,
               epochs_done: Callable[[str], int] | None = None) -> tuple[str, Any, list[str]]:
    """(sweep name, the results table as it stands now, notes on what could not be read).

    The table is rebuilt from the trial folders (the source of truth): results.csv is
    rewritten by each launch, and a job killed outright (scancel, a node failure) can leave
    it behind its trials. Trials whose files cannot be read are rows with status
    ``unreadable``. When spec.yaml cannot be read as a sweep (another version's store,
    garbage), results.csv is read as written. Same dtypes as read_results (CSV round trip).
    Raises StoreError when neither can be read. ``histories`` and ``curves``: as for
    ``collect_rows``. ``epochs_done`` (with ``curves=False``): the last epoch in a trial's
    metrics.jsonl (0 if none), asked of completed and failed trials only, whose rows then
    read as with ``curves=True`` while still coming from the row index (the report's rows).
    """
    from mixsweep.spec_errors import SpecError

    notes: list[str] = []
    try:
        name, ids, configs, index = _grid(sweep, cached=not curves and histories is None)
    except SpecError as err:
        first = (str(err).splitlines() or ["?"])[0]
        frame = _csv_as_written(sweep, notes, first.replace(f"{sweep.spec}: ", ""))
        return sweep.root.name, frame, notes
    rows = _rows(sweep, ids, configs, index, histories, curves, epochs_done)
    notes += _unreadable_notes(rows, sweep.spec)
    if name != sweep.root.name:
        notes.append(f"spec.yaml is sweep {name!r}, in folder {sweep.root.name!r} "
                     "(a moved folder, or another sweep's spec.yaml)")
    if sweep.trials.is_dir():
        known = set(ids)
        others = [n for n in os.listdir(sweep.trials) if n not in known and not n.startswith(".")]
        if others:
            notes.append(f"{len(others)} trial folder{'s' if len(others) > 1 else ''} under "
                         f"{sweep.trials} {'are' if len(others) > 1 else 'is'} not in spec.yaml "
                         "(left from an earlier version of the sweep file?): not shown")
    return name, as_read(rows), notes
