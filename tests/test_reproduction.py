"""A two-trial slice of the small study (sweeps/paper/small/) and what the write-up needs from it.

docs/reproduction.md is built from ``mixsweep report --markdown`` over the small sweeps: NL
per layer at the end, at a fixed early epoch and at matched accuracy, the softmax apart.
This runs two real trials of the Q1 sweep, unchanged (depth 8, the deepest cnn), and checks
that their per-layer output carries all of that.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mixsweep.expand import expand
from mixsweep.models import build_model
from mixsweep.report import load, write_report
from mixsweep.report_tables import intermediate_layers, render_markdown, trial_frame
from mixsweep.spec_yaml import load_spec
from mixsweep.store import SweepPaths, atomic_write_text, collect_rows, read_jsonl, write_results
from mixsweep.trial import run_trial

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "sweeps" / "paper" / "small"


def test_small_sweeps_are_the_documented_size() -> None:
    counts = {p.stem: len(expand(load_spec(p))) for p in sorted(SMALL.glob("*.yaml"))}
    # q1_adaptive: the worst case (every cell to max seeds); round 1 is q1_supervised
    assert counts == {"q1_adaptive": 192, "q1_supervised": 72, "q2_unsupervised": 126, "q3_k_points": 42}
    for p in SMALL.glob("*.yaml"):
        assert f"{counts[p.stem]} trials" in p.read_text()  # the header comment says so


@pytest.fixture(scope="module")
def slice_store(tmp_path_factory) -> Path:
    import torch

    spec = load_spec(SMALL / "q1_supervised.yaml")
    trials = [t for t in expand(spec) if t.model.depth == 8 and t.model.batchnorm
              and t.data.labeled_fraction == 1.0 and t.seed == 0]
    assert sorted(t.mixup.mode for t in trials) == ["erm", "sup"]
    sp = SweepPaths.of(tmp_path_factory.mktemp("runs"), spec.name)
    atomic_write_text(sp.spec, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cfg in trials:
            run_trial(cfg, sp.trial(cfg.trial_id).root)
    finally:
        torch.set_num_threads(threads)
    write_results(sp, collect_rows(sp, trials))
    return sp.root


def test_slice_records_every_layer_at_init_early_end_and_target(slice_store: Path) -> None:
    layers = list(build_model("cnn", 1, 10, 8, depth=8).probe_layers)
    assert layers[2:9] == [f"block{i}" for i in range(1, 8)]
    sp = SweepPaths(slice_store)
    dirs = sorted(p for p in sp.trials.iterdir())
    assert len(dirs) == 2
    for d in dirs:
        hist = read_jsonl(d / "metrics.jsonl")
        measured = [r["epoch"] for r in hist if "nl" in r]
        assert measured[:2] == [0, 5] and measured[-1] == 30  # init, the early epoch, the end
        for r in hist:
            if "nl" in r:
                assert list(r["nl"]) == sorted(layers) or set(r["nl"]) == set(layers)
                assert all(math.isfinite(v) and v >= 0 for v in r["nl"].values())
                assert r["nl"]["stem_pre"] < 1e-6  # the sanity probe: a linear map
    data = load([slice_store], by="model.depth")
    assert data.layers == layers  # network order, the deepest cnn's blocks included
    assert set(data.done["mixup.mode"]) == {"erm", "sup"}
    frame = trial_frame(data, 5)
    for when in ("end", "early"):
        assert frame[[f"{when}.{x}" for x in layers]].notna().all().all()
        mid = frame[[f"{when}.{x}" for x in intermediate_layers(layers)]].mean(axis=1)
        assert (frame[f"{when}.mid"] - mid).abs().max() < 1e-12
    reached = frame[frame["reached_target"].astype(str) == "True"]
    assert len(reached) >= 1  # both reach 0.97 on digits within 30 epochs in practice
    assert reached[[f"target.{x}" for x in layers]].notna().all().all()


def test_slice_tables_and_report(slice_store: Path, tmp_path: Path) -> None:
    md = tmp_path / "tables.md"
    built = write_report([slice_store], tmp_path / "r.html", by="model.depth", markdown=md)
    assert built.markdown == md and built.html.is_file()
    text = md.read_text()
    assert "## Summary per cell" in text and "## NL per layer at epoch 5" in text
    assert "## NL per layer at matched accuracy" in text
    summary = text.split("## Summary per cell")[1].split("## NL per layer")[0]
    header = summary.strip().splitlines()[0]
    for col in ("mode", "n", "final acc", "NL mid, end", "NL mid, epoch 5", "NL probs, end"):
        assert f"| {col} |" in header
    rows = [ln for ln in summary.strip().splitlines()[2:] if ln.startswith("|")]
    assert [r.split("|")[1].strip() for r in rows] == ["erm", "sup"]  # one row per mode, erm first
    per_layer = text.split("## NL per layer at the end of training")[1].split("##")[0]
    assert "block7" in per_layer and "probs" in per_layer
    assert render_markdown(load([slice_store], by=None), 10).count("epoch 10") >= 2


def test_where_and_figures_select(slice_store: Path, tmp_path: Path) -> None:
    built = write_report([slice_store], tmp_path / "r.html", by="depth", where=["mode=sup"],
                         only=["profile"], markdown=tmp_path / "t.md")
    assert list(built.figures) == ["profile"]
    summary = (tmp_path / "t.md").read_text().split("## Summary per cell")[1].split("##")[0]
    assert "| sup |" in summary and "| erm |" not in summary
    assert set(load([slice_store], where=["mode=erm,sup", "batchnorm=true", "k=2,none"]).done["mixup.mode"]) == {"erm", "sup"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--where", "batchnorm=maybe"], "error: --where 'batchnorm=maybe': no trial has model.batchnorm = maybe; values: False, True"),
        (["--where", "nokey"], "error: --where 'nokey': write KEY=VALUE"),
        (["--where", "colour=red"], "error: --where 'colour': not a config axis"),
        (["--figures", "profile,nope"], "error: --figures: unknown figure 'nope'"),
    ],
)
def test_bad_report_selection_is_one_line_exit_2(slice_store: Path, tmp_path: Path, args: list[str],
                                                 message: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mixsweep.cli", "report", str(slice_store),
                           "--out", str(tmp_path / "r.html"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_write_up_verdicts_are_the_compare_files() -> None:
    """docs/reproduction.md's verdict blocks are what docs/reproduction/verdicts.py writes from
    the committed compare.csv files (made by ``mixsweep compare``): no number typed by hand."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("verdicts", REPO / "docs" / "reproduction" / "verdicts.py")
    assert spec is not None and spec.loader is not None
    verdicts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verdicts)
    text = (REPO / "docs" / "reproduction.md").read_text(encoding="utf-8")
    again, found = verdicts.fill(text)
    assert found == 5 and again == text  # 4 compare blocks and the adaptive run's
    for name in ("q1_sup_erm", "q2_unsup_erm", "q2_unsup_mt", "q3_k4_k2"):
        assert f"<!-- compare:{name} " in text
        assert (REPO / "docs" / "reproduction" / name / "compare.md").is_file()
    assert "<!-- adaptive:q1_adaptive " in text
