"""FFCV: prepare writes .beton files; the loader reads back the memory loader's batches."""

from __future__ import annotations

import sys

import pytest
import torch
from typer.testing import CliRunner

from mixsweep.cli import app
from mixsweep.data.datasets import load_dataset, synthetic
from mixsweep.data.ffcv_loader import FfcvUnavailable, ffcv_available, prepare, require_ffcv
from mixsweep.data.loaders import make_loader
from mixsweep.data.split import labeled_split

needs_ffcv = pytest.mark.skipif(not ffcv_available(), reason="ffcv cannot be imported here "
                                "(pip install 'mixsweep[ffcv]' with its apt packages)")
CPU = torch.device("cpu")


@needs_ffcv
@pytest.mark.parametrize("name", ["synthetic", "digits"])  # 3-channel and 1-channel
def test_prepare_and_read_round_trip(tmp_path, name):
    data = synthetic(n_train=150, n_test=30, size=8) if name == "synthetic" else load_dataset("digits")
    written = prepare(data, tmp_path)
    assert sorted(p.name for p in written.values()) == ["test.beton", "train.beton"]
    split = labeled_split(data.train_y, 0.3, seed=0)
    for augment in (False, True):
        kw = {"augment": augment, "unlabeled": True, "seed": 3}
        mem = list(make_loader("memory", data, split, 64, CPU, **kw).epoch(1))
        ff = list(make_loader("ffcv", data, split, 64, CPU, ffcv_dir=tmp_path, **kw).epoch(1))
        assert len(mem) == len(ff) > 1
        for a, b in zip(mem, ff, strict=True):
            assert torch.equal(a.y, b.y)
            assert torch.equal(a.x, b.x)  # same pixels and, by design, the same crop/flip draws
            assert torch.equal(a.xu, b.xu)


@needs_ffcv
def test_stale_or_missing_beton_is_a_clear_error(tmp_path):
    from mixsweep.data import DataError

    data = synthetic(n_train=50, n_test=10, size=8)
    split = labeled_split(data.train_y, 1.0, 0)
    with pytest.raises(DataError, match="mixsweep data prepare synthetic --format ffcv"):
        make_loader("ffcv", data, split, 16, CPU, augment=True, unlabeled=False, seed=0,
                    ffcv_dir=tmp_path)
    prepare(synthetic(n_train=40, n_test=10, size=8), tmp_path)
    with pytest.raises(DataError, match="re-run mixsweep data prepare"):
        make_loader("ffcv", data, split, 16, CPU, augment=True, unlabeled=False, seed=0,
                    ffcv_dir=tmp_path)


def test_missing_ffcv_names_the_extra_and_apt_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "ffcv", None)  # import ffcv -> ImportError
    with pytest.raises(FfcvUnavailable) as err:
        require_ffcv()
    msg = str(err.value)
    assert "pip install 'mixsweep[ffcv]'" in msg
    assert "libopencv-dev" in msg and "libturbojpeg0-dev" in msg and "pkg-config" in msg
    assert "\n" not in msg


def test_cli_prepare_without_ffcv_exits_2(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ffcv", None)
    res = CliRunner().invoke(app, ["data", "prepare", "digits", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "mixsweep[ffcv]" in res.output and "Traceback" not in res.output


def test_cli_prepare_bad_format_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["data", "prepare", "digits", "--format", "tfrecord"])
    assert res.exit_code == 2 and "allowed: ffcv" in res.output


@needs_ffcv
def test_cli_prepare_writes_files(tmp_path):
    res = CliRunner().invoke(app, ["data", "prepare", "digits", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "train.beton").stat().st_size > 1437 * 64


@needs_ffcv
def test_ffcv_threads_follow_the_trial_not_the_node(tmp_path, trial_cfg):
    """FFCV's threads are the trial's share (make_loader's num_workers; in a trial
    ``torch.get_num_threads()``, which tune.py sets to cpus_per_trial), not every core."""
    from mixsweep.data.base import default_workers
    from mixsweep.engine import Engine

    data = synthetic(n_train=64, n_test=16, size=8)
    prepare(data, tmp_path)
    split = labeled_split(data.train_y, 0.5, 0)
    kw = {"augment": True, "unlabeled": True, "seed": 0, "ffcv_dir": tmp_path}
    ld = make_loader("ffcv", data, split, 16, CPU, num_workers=1, **kw)
    assert [x.num_workers for x in ld.loaders] == [1, 1]
    ld = make_loader("ffcv", data, split, 16, CPU, **kw)
    assert [x.num_workers for x in ld.loaders] == [default_workers()] * 2
    cfg = trial_cfg(data={"loader": "ffcv", "ffcv_dir": str(tmp_path)}, model={"width": 4},
                    train={"batch_size": 16}, linearity={"probes": 8})
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        eng = Engine(cfg, CPU, data=data)
    finally:
        torch.set_num_threads(threads)
    assert [x.num_workers for x in eng.loader.loaders] == [1]
