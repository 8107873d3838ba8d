"""A cache of a sweep's parsed curves, so a repeated ``report`` re-reads only what changed.

Beside the row index (:mod:`mixsweep.store_index`, same cache folder, same name
stem) a sweep of ``store_index.MIN_TRIALS`` trials or more keeps the epoch and layer frames
that ``results.frames`` built from its metrics.jsonl files (two Parquet files),
and per trial the file's stat signature, why reading it stopped early, its last
epoch and the shape of its records (scalar keys, layers). A trial whose
metrics.jsonl still has its signature takes its rows from the cached frames;
the others are read again and spliced in, so the frames are the ones ``frames``
builds from every file. Where a splice could order columns or layers otherwise
(a trial whose layers differ from the rest), everything is read again. The cache
is a cache: unreadable, damaged, of another version or not writable, it is
ignored (and rebuilt).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from mixsweep import store_index
from mixsweep.store_index import RACY_NS, Sig, _stat, index_path
from mixsweep.store_io import atomic_write_text, read_metrics

VERSION = 1
Records = list[dict[str, Any]]
Frames = Callable[[dict[str, Records]], tuple[pd.DataFrame, pd.DataFrame]]
_LAYER_KEYS = ("nl", "cos")
_UNCACHEABLE: Sig = ["?"]  # a signature no stat returns: the file could not be stat-ed


def _code_key() -> str:
    """The modules that read and shape the curves, and pandas: another version, another cache."""
    return f"{pd.__version__};" + store_index.code_key("results.py", "store_io.py", "store_curves.py")


def scalar_keys(records: Records) -> list[str]:
    """The epochs frame's columns of these records, in order of first appearance."""
    return list(dict.fromkeys(k for r in records for k, v in r.items()
                              if not isinstance(v, dict) and k not in _LAYER_KEYS))


def layer_keys(records: Records) -> list[list[str]]:
    """The layers of the nl maps and of the cos maps, each in order of first appearance."""
    return [list(dict.fromkeys(x for r in records for x in (r.get(k) or {}))) for k in _LAYER_KEYS]


def _merged(shapes: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(k for s in shapes for k in s))


class CurveCache:
    """The curves of one sweep folder: ``read`` each trial, then ``frames``, then ``save``."""

    def __init__(self, root: Path) -> None:
        index = index_path(root)
        self.meta = None if index is None else index.with_name(index.stem + ".curves.json")
        self.trials = root / "trials"
        self.key = _code_key()
        self.started = time.time_ns()
        self.cached: dict[str, list[Any]] = {}   # tid -> [sig, why, last, eshape, lshape]
        self.shapes: list[list[Any]] = []
        self.token = ""
        self.hits: dict[str, list[Any]] = {}
        self.fresh: dict[str, tuple[Records, str | None, Sig | None]] = {}
        try:
            if self.meta is None:
                raise OSError("no cache folder")
            raw = json.loads(self.meta.read_bytes())
            if raw.get("version") == VERSION and raw.get("key") == self.key:
                self.cached, self.shapes, self.token = raw["trials"], raw["shapes"], raw["token"]
                if not isinstance(self.token, str) or not self.token.isalnum():
                    raise ValueError("a token that is not a name")
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self.cached, self.shapes, self.token = {}, [], ""

    def _sig(self, tid: str) -> Sig | None | list[str]:
        try:
            return _stat(os.path.join(self.trials, tid, "metrics.jsonl"))
        except OSError:
            return _UNCACHEABLE

    def read(self, tid: str) -> tuple[int, str | None]:
        """(the trial's last recorded epoch or 0, why its metrics.jsonl was read only in part)."""
        if tid in self.hits:
            entry = self.hits[tid]
            return entry[2], entry[1]
        if tid in self.fresh:
            records, why, _ = self.fresh[tid]
            return (records[-1]["epoch"] if records else 0), why
        sig = self._sig(tid)
        kept = self.cached.get(tid)
        if kept is not None and sig is not _UNCACHEABLE and kept[0] == sig:
            self.hits[tid] = kept
            return kept[2], kept[1]
        records, why = read_metrics(self.trials / tid / "metrics.jsonl")
        self.fresh[tid] = (records, why, sig)
        return (records[-1]["epoch"] if records else 0), why

    def last_epoch(self, tid: str) -> int:
        """``read``'s last epoch (read_sweep's ``epochs_done``)."""
        return self.read(tid)[0]

    def _eshape(self, tid: str) -> list[str]:
        return self.shapes[self.hits[tid][3]] if tid in self.hits else scalar_keys(self.fresh[tid][0])

    def _lshape(self, tid: str) -> list[list[str]]:
        return self.shapes[self.hits[tid][4]] if tid in self.hits else layer_keys(self.fresh[tid][0])

    def _splice(self, order: list[str], build: Frames) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """The frames from the cached rows of the hits and those built from the rest; None
        where that might not be what ``build`` makes of every file."""
        layers = [s for t in order for s in self._lshape(t) if s]
        if any(s != layers[0] for s in layers):  # one layer list, for nl and cos alike
            return None
        base = self.meta.with_name(f"{self.meta.name.removesuffix('.curves.json')}.{self.token}")  # type: ignore[union-attr]
        try:
            old_e = pd.read_parquet(f"{base}.epochs.parquet")
            old_l = pd.read_parquet(f"{base}.layers.parquet")
        except Exception:  # noqa: BLE001 (damaged or missing: pyarrow raises many kinds)
            return None
        new_e, new_l = build({t: self.fresh[t][0] for t in order if t in self.fresh})
        rank: dict[str, int] = {}
        for i, t in enumerate(order):
            rank.setdefault(t, i)
        parts = []
        for old, new in ((old_e, new_e), (old_l, new_l)):
            if "trial_id" not in old.columns:
                return None
            old = old[old["trial_id"].isin(self.hits)]
            both = [f for f in (old, new) if len(f)]
            frame = pd.concat(both, ignore_index=True) if len(both) > 1 else both[0] if both else new
            pos = frame["trial_id"].map(rank).to_numpy()
            parts.append(frame.take(pos.argsort(kind="stable")).reset_index(drop=True))
        epochs, layers_ = parts
        cols = ["trial_id", *_merged([self._eshape(t) for t in order])]
        if set(cols) != set(epochs.columns):
            return None
        epochs = epochs[cols]
        for c in cols[1:]:  # as from_records types a column of every trial's values
            if epochs[c].dtype == object:
                epochs[c] = pd.Series(epochs[c].tolist(), index=epochs.index)
        return epochs, layers_

    def frames(self, order: list[str], build: Frames) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``build`` (results.frames) of the curves of ``order`` (every trial ``read``)."""
        for tid in order:
            self.read(tid)
        if self.hits and self.meta is not None:
            spliced = self._splice(order, build)
            if spliced is not None:
                self._save(order, *spliced)
                return spliced
            for tid in list(self.hits):  # read every file again
                del self.hits[tid]
                self.fresh[tid] = (*read_metrics(self.trials / tid / "metrics.jsonl"), self._sig(tid))
        epochs, layers = build({t: self.fresh[t][0] for t in order})
        self._save(order, epochs, layers)
        return epochs, layers

    def _save(self, order: list[str], epochs: pd.DataFrame, layers: pd.DataFrame) -> None:
        """Keep the frames and the entries of files old enough to be told apart from a later
        write (a folder not writable: skipped)."""
        if self.meta is None or len(order) < store_index.MIN_TRIALS:
            return
        if not self.fresh and set(self.hits) == set(self.cached) and len(self.hits) == len(order):
            return  # nothing changed
        young = self.started - RACY_NS
        shapes: dict[str, int] = {}
        entries = {}

        def shape_id(s: Any) -> int:
            return shapes.setdefault(json.dumps(s), len(shapes))

        for tid in order:
            if tid in self.hits:
                _, why, last, e, l_ = self.hits[tid]
                entries[tid] = [self.hits[tid][0], why, last, shape_id(self.shapes[e]),
                                shape_id(self.shapes[l_])]
                continue
            records, why, sig = self.fresh[tid]
            if sig is _UNCACHEABLE or (sig is not None and sig[2] > young):
                continue
            entries[tid] = [sig, why, records[-1]["epoch"] if records else 0,
                            shape_id(scalar_keys(records)), shape_id(layer_keys(records))]
        token = secrets.token_hex(8)
        base = self.meta.with_name(f"{self.meta.name.removesuffix('.curves.json')}.{token}")
        raw = {"version": VERSION, "key": self.key, "token": token, "trials": entries,
               "shapes": [json.loads(s) for s in shapes]}
        try:
            self.meta.parent.mkdir(parents=True, exist_ok=True)
            epochs.to_parquet(f"{base}.epochs.parquet", index=False)
            layers.to_parquet(f"{base}.layers.parquet", index=False)
            atomic_write_text(self.meta, json.dumps(raw, separators=(",", ":")))
        except Exception:  # noqa: BLE001 (not writable, a frame Parquet cannot hold: no cache)
            for kind in ("epochs", "layers"):
                Path(f"{base}.{kind}.parquet").unlink(missing_ok=True)
            return
        stem = self.meta.name.removesuffix(".curves.json")
        for f in self.meta.parent.glob(f"{stem}.*.parquet"):  # the last ones, and any orphans
            if not f.name.startswith(f"{stem}.{token}."):
                try:
                    f.unlink()
                except OSError:
                    pass
