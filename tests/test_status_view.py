"""`mixsweep status`: the report's epochs-to-target rule, failed trials shown, 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixsweep.expand import expand
from mixsweep.report_data import censored_median
from mixsweep.spec import parse_spec
from mixsweep.spec_yaml import load_yaml
from mixsweep.status_view import cell_rows
from mixsweep.store import SweepPaths, atomic_write_json, collect_rows, read_sweep, write_results

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["stem_pre", "stem", "block1", "pool", "logits", "probs"]


def _outcome(cfg) -> tuple[str, int | None]:
    """(status, epoch it reached the target or None): one cell is made to tell the rules apart."""
    if cfg.mixup.mode == "erm" and cfg.data.labeled_fraction == 0.1:
        return {0: ("completed", 1), 1: ("completed", 2), 2: ("failed", None)}[cfg.seed]
    return "completed", 2 if cfg.seed != 1 else None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 cells (4 modes, k in {2, 3} for sup/unsup, 2 fractions) x 3 seeds, written the way
    run_trial and the driver write them; one erm cell has a failed trial."""
    raw = load_yaml(REPO / "sweeps" / "quickstart.yaml")
    raw["train"]["epochs"] = 2
    raw["seeds"] = [0, 1, 2]
    spec = parse_spec(raw)
    sp = SweepPaths.of(tmp_path_factory.mktemp("runs"), spec.name)
    sp.write_spec(spec)
    trials = expand(spec)
    for n, cfg in enumerate(trials):
        tp = sp.trial(cfg.trial_id)
        status, hit = _outcome(cfg)
        atomic_write_json(tp.config, {"trial_id": cfg.trial_id, **cfg.model_dump(mode="json")})
        hist = [{"epoch": e, "step": 10 * e, "test_acc": 0.5 + 0.001 * n, "nl": dict.fromkeys(LAYERS, 0.2)}
                for e in range(3)]
        tp.write_metrics(hist)
        atomic_write_json(tp.result, {
            "trial_id": cfg.trial_id, "status": status,
            "reason": "non-finite loss at epoch 2" if status == "failed" else None,
            "epochs_done": 2, "final_acc": 0.5 + 0.001 * n, "reached_target": hit is not None,
            "epochs_to_target": hit, "nonlinearity": dict.fromkeys(LAYERS, 0.2)})
    write_results(sp, collect_rows(sp, trials))
    return sp.root


def test_status_cells_follow_the_report_rule_and_count_failures(run_dir: Path) -> None:
    _, rows, _ = read_sweep(SweepPaths(run_dir))
    _, cells = cell_rows(rows)
    assert len(cells) == 12
    cell = cells[(cells["mixup.mode"] == "erm") & (cells["data.labeled_fraction"] == 0.1)].iloc[0]
    # reached at 1 and 2, one failed (never reached): the report's median is 2, not 1.5
    assert cell["ett"] == censored_median([1, 2, None], [True, True, False])[1] == "2 (1 cens.)"
    assert (cell["reached"], cell["failed"], cell["seeds"]) == ("2/3", 1, 2)
    # other cells: 2 reached at epoch 2, one censored -> "2 (1 cens.)"; no failures
    assert set(cells["failed"]) == {0, 1} and int(cells["failed"].sum()) == 1


def test_status_is_readable_at_80_columns(run_dir: Path) -> None:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "mixsweep.cli", "status", str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(x) for x in lines) <= 80, proc.stdout
    header = next(x for x in lines if "seeds" in x)
    for head in ("fraction", "mode", "k", "alpha", "seeds", "acc", "epochs→target", "reached", "failed"):
        assert head in header.split(), (head, header)  # whole, not cut to "epochs…"
    assert "…" not in proc.stdout
    assert "35 completed, 1 failed / 36 trials" in proc.stdout
    assert "every trial: dataset digits, arch cnn\n" in proc.stdout  # alpha varies: none for erm, mt
    assert "the 10 best of 12 cells" in " ".join(lines)  # what is left out is said
