"""The status row index: the same table as reading every trial folder, rebuilt where files change."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from mixsweep import store_index
from mixsweep.expand import expand
from mixsweep.spec import parse_spec
from mixsweep.store import SweepPaths, as_read, atomic_write_json, collect_rows, read_sweep

LAYERS = ["stem", "block1", "logits"]


@pytest.fixture()
def sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SweepPaths, list]:
    """A 6-trial sweep (completed, failed, running, pending), its files a minute old; the
    index kept under tmp_path and made for sweeps of any size."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(store_index, "MIN_TRIALS", 1)
    spec = parse_spec({"name": "idx", "data": {"dataset": "digits"}, "train": {"epochs": 2},
                       "mixup": {"mode": ["erm", "mt"]}, "seeds": [0, 1, 2]})
    sp = SweepPaths.of(tmp_path / "runs", spec.name)
    sp.write_spec(spec)
    trials = expand(spec)
    old = time.time() - 60
    for n, cfg in enumerate(trials):
        tp = sp.trial(cfg.trial_id)
        tp.root.mkdir(parents=True)
        if n < 5:
            tp.write_metrics([{"epoch": e, "test_acc": 0.5, "nl": dict.fromkeys(LAYERS, 0.1)} for e in range(3)])
        if n < 4:
            atomic_write_json(tp.result, {
                "trial_id": cfg.trial_id, "status": "failed" if n == 3 else "completed", "epochs_done": 2,
                "final_acc": 0.5 + 0.01 * n, "reached_target": n % 2 == 0,
                "epochs_to_target": 2 if n % 2 == 0 else None, "nonlinearity": dict.fromkeys(LAYERS, 0.2)})
        for f in tp.root.iterdir():
            os.utime(f, (old, old))
    return sp, trials


def _plain(sp: SweepPaths, trials: list) -> pd.DataFrame:
    """The table without any index: every trial folder read."""
    return as_read(collect_rows(sp, trials, curves=False))


def test_index_gives_the_same_table_and_follows_changed_files(sweep) -> None:
    sp, trials = sweep
    first = read_sweep(sp, curves=False)
    path = store_index.index_path(sp.root)
    assert path is not None and len(json.loads(path.read_bytes())["rows"]) == 6  # all cached
    assert not (set(os.listdir(sp.root)) - {"spec.yaml", "trials"})  # nothing written in the sweep
    pd.testing.assert_frame_equal(first[1], _plain(sp, trials), check_exact=True)
    assert read_sweep(sp, curves=False)[1].equals(first[1])  # from the index now
    # a finished trial's result.json rewritten in place, same size: ctime tells it apart
    tp = sp.trial(trials[0].trial_id)
    text = tp.result.read_text().replace('"final_acc": 0.5', '"final_acc": 0.7')
    tp.result.write_text(text)
    # a pending trial starts, a running one gets garbage in place of its metrics
    sp.trial(trials[5].trial_id).write_metrics([{"epoch": 0, "test_acc": 0.1}])
    sp.trial(trials[4].trial_id).metrics.write_text("{not json\n")
    _, rows, notes = read_sweep(sp, curves=False)
    pd.testing.assert_frame_equal(rows, _plain(sp, trials), check_exact=True)
    by_id = rows.set_index("trial_id")
    assert by_id.loc[trials[0].trial_id, "final_acc"] == 0.7
    assert by_id.loc[trials[5].trial_id, "status"] == "running"
    assert by_id.loc[trials[4].trial_id, "status"] == "unreadable" and notes


def test_index_ignored_when_damaged_or_spec_changes(sweep) -> None:
    sp, trials = sweep
    read_sweep(sp, curves=False)
    path = store_index.index_path(sp.root)
    path.write_bytes(b"\x00garbage")
    pd.testing.assert_frame_equal(read_sweep(sp, curves=False)[1], _plain(sp, trials), check_exact=True)
    # another spec: the cached grid is not used (3 trials now, none of the old folders)
    spec = parse_spec({"name": "idx", "data": {"dataset": "digits"}, "train": {"epochs": 2},
                       "mixup": {"mode": "sup"}, "seeds": [0, 1, 2]})
    sp.write_spec(spec)
    _, rows, notes = read_sweep(sp, curves=False)
    assert sorted(rows["trial_id"]) == sorted(c.trial_id for c in expand(spec))
    assert set(rows["status"]) == {"pending"} and any("not in spec.yaml" in n for n in notes)


def test_young_files_are_not_cached(sweep) -> None:
    sp, trials = sweep
    tp = sp.trial(trials[1].trial_id)
    now = time.time()
    os.utime(tp.result, (now, now))
    index = store_index.RowIndex(sp.root, sp.spec.read_bytes())
    assert index.set_grid("idx", [c.trial_id for c in trials], [c.flat() for c in trials])
    index.put(trials[1].trial_id, {"status": "completed", "epochs_done": 2}, result_only=True)
    index.put(trials[0].trial_id, {"status": "completed", "epochs_done": 2}, result_only=True)
    assert index.row(trials[1].trial_id) is None
    assert index.row(trials[0].trial_id) == {"status": "completed", "epochs_done": 2}
