"""``write_compare`` and ``mixsweep compare``: the files, and bad input as one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_contrast import synthetic

from mixsweep.compare import write_compare
from mixsweep.contrast import ContrastError
from mixsweep.store import SweepPaths, atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _store(root: Path, **kw) -> Path:
    """A run folder from ``synthetic``: results.csv as written (no spec.yaml) and each
    trial's metrics.jsonl."""
    data = synthetic(**kw)
    sp = SweepPaths(root / "syn")
    sp.root.mkdir(parents=True)
    atomic_write_text(sp.results, data.results.drop(columns="sweep").to_csv(index=False))
    for tid, g in data.nl.groupby("trial_id"):
        lines = [json.dumps({"epoch": int(ep), "test_acc": 0.9, "nl": dict(zip(e["layer"], e["nl"], strict=True))})
                 for ep, e in g.groupby("epoch")]
        path = sp.trial(str(tid)).metrics
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "\n".join(lines) + "\n")
    return sp.root


def test_write_compare_writes_the_table_and_the_forest(tmp_path):
    run = _store(tmp_path, shift={"sup": -0.1}, failed={("sup", 4)})
    out = tmp_path / "cmp"
    done = write_compare([run], "mode=sup:erm", out, png=False)
    assert {p.name for p in done.files} == {"compare.md", "compare.csv", "forest.html"}
    csv = pd.read_csv(out / "compare.csv")
    assert len(csv) == len(done.table) and (csv["failed A"] == 1).all()
    nl_end = csv[(csv["metric"] == "NL") & (csv["moment"] == "end")]
    assert (nl_end["verdict"] == "sup more linear").all() and (nl_end["n"] == 4).all()
    md = (out / "compare.md").read_text()
    assert "## NL, end (family of 10" in md and "## NL, epoch 5" in md and "## epochs to target" in md
    assert "| sup more linear |" in md and "failed A" in md
    html = (out / "forest.html").read_text()
    assert 'id="forest"' in html and 'id="forest_outcomes"' in html and "<script src=" not in html


def test_write_compare_rejects_a_file_as_out(tmp_path):
    run = _store(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ContrastError, match="is a file, not a folder"):
        write_compare([run], "mode=sup:erm", tmp_path / "f", png=False)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "mixsweep.cli", "compare", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_compare_and_its_bad_input(tmp_path):
    run = _store(tmp_path, shift={"sup": 0.2})
    ok = _cli(str(run), "--contrast", "mixup.mode=sup:erm", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "with a verdict" in ok.stdout and (tmp_path / "o" / "compare.md").is_file()
    for args, said in ((["--contrast", "colour=a:b"], "not a config axis"),
                       (["--contrast", "mode=sup:mt"], "no trial has mixup.mode = mt"),
                       (["--contrast", "mode"], "AXIS=A:B"),
                       (["--contrast", "mode=sup:erm", "--early-epoch", "3"], "--early-epoch 3")):
        bad = _cli(str(run), *args, "--out", str(tmp_path / "b"), cwd=tmp_path)
        assert bad.returncode == 2, bad.stderr
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and said in lines[0], bad.stderr
    one = _store(tmp_path / "one", seeds=(0,))
    bad = _cli(str(one), "--contrast", "mode=sup:erm", cwd=tmp_path)
    assert bad.returncode == 2 and "2 or more seeds" in bad.stderr and "Traceback" not in bad.stderr

