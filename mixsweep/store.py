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

from collections.abc import Iterable
from pathlib import Path
from typing import Any

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


def collect_rows(sweep: SweepPaths, trials: Iterable[Any],
                 histories: dict[str, tuple[list[dict[str, Any]], str | None]] | None = None,
                 *, curves: bool = True) -> list[dict[str, Any]]:
    """Rows for the given TrialConfigs (every expanded trial exactly once), from their folders.

    A result.json that is there but is not the trial's valid record (garbage, wrong types,
    another trial's) makes the row ``unreadable``, its reason saying why; a relaunch runs
    such a trial again from its checkpoint. ``histories``, when given, receives each
    trial's (epoch records, why reading stopped) as read. ``curves=False`` (status) skips
    metrics.jsonl where result.json is valid: ``epochs_done`` then comes from it."""
    rows = []
    for cfg in trials:
        tid = cfg.trial_id  # a hash of the config: computed once
        tp = sweep.trial(tid)
        result, why = tp.read_result_checked(tid)
        if result and not curves and histories is None:
            done = result.get("epochs_done")
            epochs = done if isinstance(done, int) else 0
            rows.append(result_row(tid, cfg.flat(), result, epochs, result["status"]))
            continue
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
        rows.append(result_row(tid, cfg.flat(), result, epochs, status))
    return rows


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
               *, curves: bool = True) -> tuple[str, Any, list[str]]:
    """(sweep name, the results table as it stands now, notes on what could not be read).

    The table is rebuilt from the trial folders (the source of truth): results.csv is
    rewritten by each launch, and a job killed outright (scancel, a node failure) can leave
    it behind its trials. Trials whose files cannot be read are rows with status
    ``unreadable``. When spec.yaml cannot be read as a sweep (another version's store,
    garbage), results.csv is read as written. Same dtypes as read_results (CSV round trip).
    Raises StoreError when neither can be read. ``histories`` and ``curves``: as for
    ``collect_rows``.
    """
    import io

    import pandas as pd

    from mixsweep.expand import expand
    from mixsweep.spec_errors import SpecError
    from mixsweep.spec_yaml import load_spec

    notes: list[str] = []
    try:
        spec = load_spec(sweep.spec)
        trials = expand(spec)
    except SpecError as err:
        first = (str(err).splitlines() or ["?"])[0]
        frame = _csv_as_written(sweep, notes, first.replace(f"{sweep.spec}: ", ""))
        return sweep.root.name, frame, notes
    rows = collect_rows(sweep, trials, histories, curves=curves)
    notes += _unreadable_notes(rows, sweep.spec)
    if spec.name != sweep.root.name:
        notes.append(f"spec.yaml is sweep {spec.name!r}, in folder {sweep.root.name!r} "
                     "(a moved folder, or another sweep's spec.yaml)")
    if sweep.trials.is_dir():
        ids = {r["trial_id"] for r in rows}
        others = [p.name for p in sweep.trials.iterdir() if p.name not in ids and not p.name.startswith(".")]
        if others:
            notes.append(f"{len(others)} trial folder{'s' if len(others) > 1 else ''} under "
                         f"{sweep.trials} {'are' if len(others) > 1 else 'is'} not in spec.yaml "
                         "(left from an earlier version of the sweep file?): not shown")
    frame = pd.DataFrame(rows)
    return spec.name, pd.read_csv(io.StringIO(frame.to_csv(index=False)), dtype={"trial_id": str}), notes
