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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class SweepLocked(RuntimeError):
    """Another launch holds the sweep's lock."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:  # type: ignore[no-untyped-def]
    """Temp file in the same folder, fsynced, renamed over ``path``, folder fsynced: a crash
    at any point leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _umask_mode())  # mkstemp makes 0600; results follow the user's umask
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + rename: readers never see half a file."""
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    # key order kept: layer dicts are in network order
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # here: status and launch --dry-run import this module without torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def _unreadable(path: Path, err: OSError) -> str:
    """Why a file of the store cannot be read, in a few words naming it."""
    if err.errno == errno.EISDIR:
        return f"{path.name} is a folder, not a file"
    if err.errno == errno.ENOTDIR:  # a file where a folder of the path should be
        culprit = next((p for p in path.parents if p.exists()), path.parent)
        return f"{culprit.name} is a file, not a folder"
    return f"{path.name}: {err.strerror or type(err).__name__}"


def read_json_checked(path: Path) -> tuple[Any | None, str | None]:
    """(the JSON object, None); (None, None) when the file is missing; (None, why) when it
    is there but cannot be read (not JSON, cut short, not UTF-8, a folder, no permission)."""
    try:
        return json.loads(path.read_bytes().decode()), None
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, _unreadable(path, err)
    except ValueError:  # bad JSON or bad UTF-8
        return None, f"{path.name} is not JSON"


def read_json(path: Path) -> Any | None:
    """A JSON file's object; None if it is missing or cannot be read (not whole JSON, garbage,
    a folder)."""
    return read_json_checked(path)[0]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), type(v).__name__)


def _layer_map_problem(key: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        return f"{key} is {_kind(v)}, not a map of layer -> number"
    bad = next((layer for layer, x in v.items() if x is not None and not _number(x)), None)
    return None if bad is None else f"{key}.{bad} is {v[bad]!r}, not a number"


def epoch_record_problem(rec: Any) -> str | None:
    """Why a metrics.jsonl record is not an epoch record (None if it is one): an object with an
    integer ``epoch``, numbers (or null) for its scalars, layer -> number maps for nl and cos."""
    if not isinstance(rec, dict):
        return f"{_kind(rec)}, not an epoch record"
    epoch = rec.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return f"epoch is {epoch!r}, not a whole number"
    for key, v in rec.items():
        if isinstance(v, dict) or key in ("nl", "cos"):
            problem = _layer_map_problem(key, v)
            if problem:
                return problem
        elif v is not None and not _number(v):
            return f"{key} is {v!r}, not a number"
    return None


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The epoch records of a metrics.jsonl and why reading stopped early (None when it read
    it all). A line that is not a whole epoch record (a write cut short, garbage, wrong
    types) ends the read: what follows it cannot be trusted either."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], None
    except OSError as err:
        return [], _unreadable(path, err)
    out = []
    for n, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            return out, f"{path.name} line {n} is not JSON"
        problem = epoch_record_problem(rec)
        if problem:
            return out, f"{path.name} line {n}: {problem}"
        out.append(rec)
    return out, None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a JSON-lines file, up to the first line that is not one (see
    ``read_metrics``)."""
    return read_metrics(path)[0]


# result.json: keys whose values the results table and the reports compute with
_RESULT_NUMBERS = ("final_acc", "best_acc", "target_accuracy", "seconds_to_target",
                   "train_seconds", "wall_seconds", "epochs_done", "epochs_to_target",
                   "steps_to_target", "nl_epoch")
_RESULT_LAYER_MAPS = ("nonlinearity", "cosine", "nl_at_target")


def result_problem(result: Any, trial_id: str) -> str | None:
    """Why ``result`` (a result.json's object) is not trial ``trial_id``'s final record, or None."""
    if not isinstance(result, dict):
        return f"result.json holds {_kind(result)}, not a result record"
    if result.get("trial_id") != trial_id:
        return f"result.json is for trial {result.get('trial_id')!r}, not {trial_id}"
    status = result.get("status")
    if status not in ("completed", "failed"):
        return f"result.json: status {status!r} is neither completed nor failed"
    if status == "completed" and "final_acc" not in result:
        return "result.json: a completed trial without final_acc"
    for key in _RESULT_NUMBERS:
        v = result.get(key)
        if v is not None and not _number(v):
            return f"result.json: {key} is {v!r}, not a number"
    if result.get("reached_target") not in (None, True, False):
        return f"result.json: reached_target is {result['reached_target']!r}, not true/false"
    if result.get("reason") is not None and not isinstance(result["reason"], str):
        return f"result.json: reason is {_kind(result['reason'])}, not text"
    for key in _RESULT_LAYER_MAPS:
        problem = _layer_map_problem(key, result.get(key))
        if problem:
            return f"result.json: {problem}"
    return None


@dataclass(frozen=True)
class TrialPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def error(self) -> Path:
        """Ray's last error for a trial that crashed past max_failures."""
        return self.root / "error.json"

    def read_result(self, trial_id: str) -> dict[str, Any] | None:
        """The final record, if this folder holds a valid one for ``trial_id`` (else None: the
        trial runs again, from its checkpoint)."""
        return self.read_result_checked(trial_id)[0]

    def read_result_checked(self, trial_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the final record, None), (None, None) when there is none yet, or (None, why) when
        result.json is there but is not a valid record for ``trial_id``."""
        result, why = read_json_checked(self.result)
        if result is None:
            return None, why
        why = result_problem(result, trial_id)
        return (None, why) if why else (result, None)

    def write_metrics(self, history: Iterable[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in history))


@dataclass(frozen=True)
class SweepPaths:
    root: Path  # runs/<sweep>

    @classmethod
    def of(cls, runs_dir: str | Path, name: str) -> SweepPaths:
        return cls(Path(runs_dir) / name)

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def results(self) -> Path:
        return self.root / "results.csv"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def rounds(self) -> Path:
        """rounds.json: an adaptive sweep's rounds, decisions and open cells (mixsweep.adaptive)."""
        return self.root / "rounds.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the sweep's lock (flock: the kernel drops it when the process dies, even by
        SIGKILL, so no stale lock outlives a killed launch). Raises SweepLocked if held."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, _umask_mode())
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise SweepLocked(f"sweep {self.root.name!r} is already running (launch pid {holder} "
                                  f"holds {self.lock_file}); wait for it or stop it first") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def sweep_id(self) -> str:
        """A random id for this sweep folder, made once and kept: unique per sweep, the same
        for every relaunch of it (the W&B run ids start with it)."""
        path = self.root / "sweep_id"
        try:  # garbage (not text, a wrong length) is replaced by a new id below
            current = path.read_bytes().decode(errors="replace").strip() if path.is_file() else ""
        except OSError:
            current = ""
        if len(current) == 8 and current.isascii() and current.isalnum():
            return current
        new = secrets.token_hex(4)
        atomic_write_text(path, new + "\n")
        return new

    def write_spec(self, spec: Any) -> None:
        """spec.yaml: the validated sweep (a SweepSpec), what a requeued job re-reads."""
        import yaml

        atomic_write_text(self.spec, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))

    def trial(self, trial_id: str) -> TrialPaths:
        return TrialPaths(self.trials / trial_id)


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


def collect_rows(sweep: SweepPaths, trials: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows for the given TrialConfigs (every expanded trial exactly once), from their folders.

    A result.json that is there but is not the trial's valid record (garbage, wrong types,
    another trial's) makes the row ``unreadable``, its reason saying why; a relaunch runs
    such a trial again from its checkpoint."""
    rows = []
    for cfg in trials:
        tp = sweep.trial(cfg.trial_id)
        result, why = tp.read_result_checked(cfg.trial_id)
        history, metrics_why = read_metrics(tp.metrics)
        epochs = history[-1]["epoch"] if history else 0
        error, error_why = read_json_checked(tp.error)
        if result:
            status = result["status"]
        elif why or metrics_why:
            status, result = "unreadable", {"reason": why or metrics_why}
        elif error is not None or error_why:  # crashed past max_failures in Ray; re-runs on relaunch
            text = error.get("error") if isinstance(error, dict) else None
            text = text if isinstance(text, str) else error_why or "error.json holds no error text"
            status, result = "error", {"reason": text}
        else:
            status = "running" if history else "pending"
        rows.append(result_row(cfg.trial_id, cfg.flat(), result, epochs, status))
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
        raise fail(f"cannot be read ({_unreadable(sweep.results, err)})") from None
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise fail(f"is not a results table ({type(err).__name__})") from None
    missing = {"trial_id", "status"} - set(frame.columns)
    if missing:
        raise fail(f"has no {' or '.join(sorted(missing))} column")
    # a boolean Series, not a list: an empty list would select no columns
    sane = frame["trial_id"].map(lambda t: isinstance(t, str) and bool(t) and "/" not in t
                                 and not t.startswith(".")).astype(bool)
    frame = frame.loc[sane].reset_index(drop=True)
    for col in [c for c in frame.columns if c in _RESULT_NUMBERS or c.startswith(("nl.", "cos.", "nl_target."))]:
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


def read_sweep(sweep: SweepPaths) -> tuple[str, Any, list[str]]:
    """(sweep name, the results table as it stands now, notes on what could not be read).

    The table is rebuilt from the trial folders (the source of truth): results.csv is
    rewritten by each launch, and a job killed outright (scancel, a node failure) can leave
    it behind its trials. Trials whose files cannot be read are rows with status
    ``unreadable``. When spec.yaml cannot be read as a sweep (another version's store,
    garbage), results.csv is read as written. Same dtypes as read_results (CSV round trip).
    Raises StoreError when neither can be read.
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
    rows = collect_rows(sweep, trials)
    notes += _unreadable_notes(rows, sweep.spec)
    if spec.name != sweep.root.name:
        notes.append(f"spec.yaml is sweep {spec.name!r}, in folder {sweep.root.name!r} "
                     "(a moved folder, or another sweep's spec.yaml)")
    if sweep.trials.is_dir():
        ids = {t.trial_id for t in trials}
        others = [p.name for p in sweep.trials.iterdir() if p.name not in ids and not p.name.startswith(".")]
        if others:
            notes.append(f"{len(others)} trial folder{'s' if len(others) > 1 else ''} under "
                         f"{sweep.trials} {'are' if len(others) > 1 else 'is'} not in spec.yaml "
                         "(left from an earlier version of the sweep file?): not shown")
    frame = pd.DataFrame(rows)
    return spec.name, pd.read_csv(io.StringIO(frame.to_csv(index=False)), dtype={"trial_id": str}), notes
