"""`mixsweep trial` end to end in a subprocess: a summary on success; bad files are one
line on stderr with exit code 2 and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from mixsweep.spec_yaml import load_trial

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.update(WANDB_MODE="offline", RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, "-m", "mixsweep.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


SMALL = {
    "data": {"dataset": "digits"},
    "model": {"arch": "cnn", "width": 4},
    "train": {"epochs": 1, "target_accuracy": 0.5, "device": "cpu"},
    "mixup": {"mode": "sup", "k": 3, "alpha": 1.0},
    "linearity": {"probes": 16},
}


def check_summary(
    proc: subprocess.CompletedProcess[str], out: Path, trial_id: str, epochs: int
) -> None:
    assert proc.returncode == 0, proc.stderr
    assert f"trial {trial_id}" in proc.stdout
    assert "final_acc" in proc.stdout and "epochs_to_target" in proc.stdout
    assert "NL stem_pre" in proc.stdout and "completed" in proc.stdout
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "completed" and res["trial_id"] == trial_id
    assert res["epochs_done"] == epochs
    assert len((out / "metrics.jsonl").read_text().splitlines()) == epochs + 1


def test_trial_runs_and_prints_summary(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "small.yaml", SMALL)
    _, cfg = load_trial(cfg_file)
    proc = cli("trial", str(cfg_file), "--out", str(tmp_path / "out"), cwd=tmp_path)
    check_summary(proc, tmp_path / "out", cfg.trial_id, epochs=1)
    assert "epoch   1" in proc.stdout


def test_shipped_trial_file(tmp_path: Path) -> None:
    cfg_file = REPO / "sweeps" / "trial_digits.yaml"
    _, cfg = load_trial(cfg_file)
    proc = cli("trial", str(cfg_file), "--out", str(tmp_path / "out"), cwd=tmp_path, timeout=600)
    check_summary(proc, tmp_path / "out", cfg.trial_id, epochs=cfg.train.epochs)


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_key_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", {**SMALL, "train": {**SMALL["train"], "epoch": 3}})
    proc = cli("trial", str(bad), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_user_error(proc, "train: unknown key 'epoch'", "did you mean 'epochs'?")
    assert not (tmp_path / "out").exists()


def test_several_values_for_one_key_exits_2(tmp_path: Path) -> None:
    bad = write(tmp_path / "grid.yaml", {**SMALL, "mixup": {"mode": "sup", "k": [2, 3]}})
    proc = cli("trial", str(bad), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_user_error(proc, "one value per key", "mixup.k")


def test_missing_file_and_missing_data_exit_2(tmp_path: Path) -> None:
    proc = cli("trial", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert_user_error(proc, "nope.yaml", "no such file")
    data_root = tmp_path / "empty"
    cfg = write(
        tmp_path / "c10.yaml", {**SMALL, "data": {"dataset": "cifar10", "root": str(data_root)}}
    )
    proc = cli("trial", str(cfg), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_user_error(proc, str(data_root / "cifar-10-batches-py"), "data.download")
