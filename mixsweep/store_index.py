"""A cache that lets ``status`` skip what has not changed since it last looked.

The index of a sweep folder lives in the user's cache folder
(``$XDG_CACHE_HOME/mixsweep/status/``, ``~/.cache`` by default; named by a hash
of the folder's path), never in the sweep folder: status and report only read
it. Only sweeps of ``MIN_TRIALS`` trials or more get one. It holds the expanded grid (trial ids and flat configs,
keyed by a hash of spec.yaml's bytes and of the code that expands it) and, per
trial, the results-table row last built from its files together with those
files' stat signatures (inode, size, mtime, ctime). A row is used only while
every signature still matches; anything else (a file written, replaced, removed,
chmod-ed, a folder in a file's place) rebuilds that row from the files, which
stay the source of truth. Rows of files written in the last few seconds are not
cached (a write within one timestamp tick could keep size and mtime). The index
is a cache: unreadable, of another version or not writable, it is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from mixsweep.store_io import atomic_write_text

VERSION = 1
MIN_TRIALS = 500  # smaller sweeps read fast enough without one
RACY_NS = 3_000_000_000  # files younger than this (vs. the clock) are not cached
RESULT_ONLY = ("result.json",)  # a valid final record: the row needs nothing else
ALL_FILES = ("result.json", "metrics.jsonl", "error.json")
Sig = list[Any]


def code_key(*modules: str) -> str:
    """Size and mtime of these modules of the package: a cache made by other code is stale."""
    here = Path(__file__).parent
    parts = []
    for name in modules:
        try:
            st = (here / name).stat()
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:-")
    return ";".join(parts)


def _code_key() -> str:
    """The modules that parse and expand a spec: a changed schema invalidates the cached grid."""
    return code_key("spec.py", "expand.py", "spec_yaml.py", "names.py", "store.py")


def index_path(root: Path) -> Path | None:
    """Where the index of sweep folder ``root`` is kept (None: no home folder to keep it in)."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:32]
    except (OSError, RuntimeError):
        return None
    return base / "mixsweep" / "status" / f"{key}.json"


def _stat(path: str) -> Sig | None:
    """[inode, size, mtime, ctime] of a file, None if missing; OSError otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class RowIndex:
    """The index of one sweep folder, read once; ``save`` writes it back if it changed."""

    def __init__(self, root: Path, spec_bytes: bytes) -> None:
        self.path = index_path(root)
        self.trials = str(root / "trials")
        self.key = hashlib.sha256(spec_bytes + _code_key().encode()).hexdigest()
        self.started = time.time_ns()
        self.changed = False
        self.grid: tuple[str, list[str], list[dict[str, Any]]] | None = None
        self.rows: dict[str, list[Any]] = {}
        self.shapes: list[list[str]] = []
        self._shape_ids: dict[tuple[str, ...], int] = {}
        try:
            if self.path is None:
                raise OSError("no cache folder")
            raw = json.loads(self.path.read_bytes())
            if raw.get("version") == VERSION and raw.get("key") == self.key:
                self.grid = raw["name"], raw["ids"], _configs(raw["config"], len(raw["ids"]))
                self.rows, self.shapes = raw["rows"], raw["shapes"]
                self._shape_ids = {tuple(s): i for i, s in enumerate(self.shapes)}
        except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError):
            self.grid, self.rows, self.shapes, self._shape_ids = None, {}, [], {}

    def set_grid(self, name: str, ids: list[str], configs: list[dict[str, Any]]) -> bool:
        """Start the index over for this grid; False (no index) for a sweep under MIN_TRIALS."""
        if len(ids) < MIN_TRIALS:
            return False
        self.grid = name, ids, configs
        self.rows, self.shapes, self._shape_ids = {}, [], {}
        self.changed = True
        return True

    def _sigs(self, tid: str, files: tuple[str, ...]) -> list[Sig | None] | None:
        folder = os.path.join(self.trials, tid)
        try:
            return [_stat(os.path.join(folder, f)) for f in files]
        except OSError:  # not a folder, no permission, ...: never cached
            return None

    def row(self, tid: str) -> dict[str, Any] | None:
        """The cached row fields of ``tid`` (everything but its config), if still current."""
        entry = self.rows.get(tid)
        if entry is None:
            return None
        sigs, shape, values = entry
        if self._sigs(tid, RESULT_ONLY if len(sigs) == 1 else ALL_FILES) != sigs:
            return None
        return dict(zip(self.shapes[shape], values, strict=True))

    def put(self, tid: str, fields: dict[str, Any], result_only: bool) -> None:
        """Cache a freshly built row (``fields``: the row without its config), unless its
        files are too young to be told apart from a later write."""
        sigs = self._sigs(tid, RESULT_ONLY if result_only else ALL_FILES)
        young = self.started - RACY_NS
        if sigs is None or any(s is not None and s[2] > young for s in sigs):  # mtime: a write
            if self.rows.pop(tid, None) is not None:
                self.changed = True
            return
        keys = tuple(fields)
        shape = self._shape_ids.get(keys)
        if shape is None:
            shape = self._shape_ids[keys] = len(self.shapes)
            self.shapes.append(list(keys))
        self.rows[tid] = [sigs, shape, list(fields.values())]
        self.changed = True

    def save(self) -> None:
        """Write the index if anything changed (atomically; a folder not writable: skipped)."""
        if not self.changed or self.grid is None or self.path is None:
            return
        name, ids, configs = self.grid
        keep = set(ids)
        rows = {t: r for t, r in self.rows.items() if t in keep}
        raw = {"version": VERSION, "key": self.key, "name": name, "ids": ids,
               "config": _columns(configs), "shapes": self.shapes, "rows": rows}
        try:
            atomic_write_text(self.path, json.dumps(raw, separators=(",", ":"), default=str))
        except OSError:
            pass


def _columns(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat configs column-wise: a value said once where every trial has it."""
    keys = list(configs[0]) if configs else []
    const, vary = {}, {}
    for k in keys:
        col = [c.get(k) for c in configs]
        if all(v == col[0] and type(v) is type(col[0]) for v in col):
            const[k] = col[0]
        else:
            vary[k] = col
    return {"keys": keys, "const": const, "vary": vary}


def _configs(cols: dict[str, Any], n: int) -> list[dict[str, Any]]:
    keys, const, vary = cols["keys"], cols["const"], cols["vary"]
    if any(len(v) != n for v in vary.values()):
        raise ValueError("config columns of another length")
    return [{k: const[k] if k in const else vary[k][i] for k in keys} for i in range(n)]
