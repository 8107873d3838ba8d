"""`mixsweep --help`, `status` and `launch --dry-run` run without importing torch (issue 13:
they took ~3 s, nearly all of it torch's import)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixsweep.spec_yaml import load_spec
from mixsweep.store import SweepPaths


def _imported(args: list[str], cwd: Path) -> set[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "mixsweep.cli", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {ln.rsplit("|", 1)[1].strip() for ln in proc.stderr.splitlines()
            if ln.startswith("import time:") and "|" in ln}


@pytest.mark.parametrize("verb", ["help", "status", "dry-run"])
def test_host_commands_do_not_import_torch(verb: str, repo: Path, tmp_path: Path) -> None:
    spec = load_spec(repo / "sweeps" / "quickstart.yaml")
    SweepPaths.of(tmp_path / "runs", spec.name).write_spec(spec)
    args = {"help": ["--help"],
            "status": ["status", spec.name, "--runs-dir", str(tmp_path / "runs")],
            "dry-run": ["launch", str(repo / "sweeps" / "quickstart.yaml"), "--dry-run"]}[verb]
    mods = _imported(args, tmp_path)
    assert "mixsweep.spec" in mods and "typer" in mods
    assert not {m for m in mods if m == "torch" or m.startswith("torch.")}, verb
    assert "ray" not in mods and "wandb" not in mods
