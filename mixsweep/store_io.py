"""The store's files, written and read safely: atomic writes, JSON and JSON-lines reads
that say why a file cannot be used, and the checks of a trial's records (epoch lines in
metrics.jsonl, the final record in result.json). No paths here: see ``store_paths``."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def file_mode() -> int:
    """The mode new files get under the user's umask (mkstemp would make them 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Temp file in the same folder, fsynced, renamed over ``path``, folder fsynced: a crash
    at any point leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, file_mode())  # mkstemp makes 0600; results follow the user's umask
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


def unreadable(path: Path, err: OSError) -> str:
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
        return None, unreadable(path, err)
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
        return [], unreadable(path, err)
    out: list[dict[str, Any]] = []
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
RESULT_NUMBERS = ("final_acc", "best_acc", "target_accuracy", "seconds_to_target",
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
    for key in RESULT_NUMBERS:
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
