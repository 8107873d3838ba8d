"""The curve cache: load_results gives the frames of reading every metrics.jsonl, re-reading
only the files that changed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from mixsweep import store_curves, store_index
from mixsweep.expand import expand
from mixsweep.results import _cut_notes, frames, load_results
from mixsweep.spec import parse_spec
from mixsweep.store import SweepPaths, atomic_write_json, read_metrics, read_sweep

LAYERS = ["stem", "block1", "logits"]
OLD = time.time() - 60


def _age(folder: Path) -> None:
    for f in folder.iterdir():
        os.utime(f, (OLD, OLD))


def _metrics(tp, n: int, layers: list[str] = LAYERS, extra: dict | None = None) -> None:
    recs = [{"epoch": e, **(extra or {}), "test_acc": 0.5 + 0.01 * n + 0.001 * e,
             "nl": {x: 0.1 * n + e for x in layers}, "cos": dict.fromkeys(layers, 0.9)} for e in range(3)]
    tp.write_metrics(recs)


@pytest.fixture()
def sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SweepPaths, list]:
    """An 8-trial sweep (completed with a result.json that says fewer epochs than its
    metrics.jsonl, failed, cut short, running, pending), files a minute old; caches under
    tmp_path and made for sweeps of any size."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(store_index, "MIN_TRIALS", 1)
    spec = parse_spec({"name": "cur", "data": {"dataset": "digits"}, "train": {"epochs": 2},
                       "mixup": {"mode": ["erm", "mt"]}, "seeds": [0, 1, 2, 3]})
    sp = SweepPaths.of(tmp_path / "runs", spec.name)
    sp.write_spec(spec)
    trials = expand(spec)
    for n, cfg in enumerate(trials):
        tp = sp.trial(cfg.trial_id)
        tp.root.mkdir(parents=True)
        if n < 7:
            _metrics(tp, n)
        if n == 4:  # cut short: a line that is not JSON
            with open(tp.metrics, "a") as f:
                f.write('{"epoch": 3, "test_a\n')
        if n < 5:
            atomic_write_json(tp.result, {
                "trial_id": cfg.trial_id, "status": "failed" if n == 3 else "completed",
                "epochs_done": 1, "final_acc": 0.5, "reached_target": True, "epochs_to_target": 1})
        _age(tp.root)
    return sp, trials


def _plain(sp: SweepPaths):
    """What load_results gave before the cache: every metrics.jsonl read."""
    histories: dict = {}
    name, trials, notes = read_sweep(sp, histories=histories)
    kept, cut = {}, {}
    for tid, status in zip(trials["trial_id"], trials["status"], strict=True):
        records, why = histories[tid]
        if why and status != "unreadable":
            cut[tid] = why
        kept[tid] = records
    return (name, trials, *frames(kept), notes + _cut_notes(cut))


def _same(sp: SweepPaths) -> None:
    got = load_results(sp.root)
    name, trials, epochs, layers, notes = _plain(sp)
    assert got.name == name and got.notes == notes
    pd.testing.assert_frame_equal(got.trials, trials, check_exact=True)
    pd.testing.assert_frame_equal(got.epochs, epochs, check_exact=True)
    pd.testing.assert_frame_equal(got.layers, layers, check_exact=True)


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The trial folders whose metrics.jsonl the cache reads."""
    seen: list[str] = []

    def counting(path: Path):
        seen.append(path.parent.name)
        return read_metrics(path)

    monkeypatch.setattr(store_curves, "read_metrics", counting)
    return seen


def _meta(sp: SweepPaths) -> Path:
    path = store_index.index_path(sp.root)
    assert path is not None
    return path.with_name(path.stem + ".curves.json")


def test_cache_gives_the_same_frames_and_reads_only_changed_files(sweep, reads) -> None:
    sp, trials = sweep
    _same(sp)
    assert len(reads) == 8 and len(json.loads(_meta(sp).read_bytes())["trials"]) == 8
    assert load_results(sp.root).trials["epochs_done"].tolist()[:2] == [2, 2]  # metrics' last epoch
    reads.clear()
    _same(sp)
    assert reads == []  # every trial from the cache
    tp = sp.trial(trials[1].trial_id)  # rewritten with a new first column and values
    _metrics(tp, 9, extra={"lr": None, "warm": 1})
    _age(tp.root)
    new = sp.trial(trials[7].trial_id)  # the pending trial starts
    _metrics(new, 7)
    _age(new.root)
    reads.clear()
    _same(sp)
    assert sorted(reads) == sorted([trials[1].trial_id, trials[7].trial_id])


def test_other_layers_or_a_damaged_cache_read_everything_again(sweep, reads) -> None:
    sp, trials = sweep
    load_results(sp.root)
    tp = sp.trial(trials[0].trial_id)
    _metrics(tp, 0, layers=["block1", "stem"])  # another order of layers: no splice
    _age(tp.root)
    reads.clear()
    _same(sp)
    assert len(reads) == 8
    for f in _meta(sp).parent.glob("*.parquet"):
        f.write_bytes(b"garbage")
    reads.clear()
    _same(sp)
    assert len(reads) == 8
    _meta(sp).write_text("{not json")
    _same(sp)
    assert len(list(_meta(sp).parent.glob("*.parquet"))) == 2  # old files removed


def test_young_files_are_not_cached(sweep, reads) -> None:
    sp, trials = sweep
    tp = sp.trial(trials[2].trial_id)
    _metrics(tp, 2)  # written just now
    load_results(sp.root)
    reads.clear()
    _same(sp)
    assert reads == [trials[2].trial_id]
