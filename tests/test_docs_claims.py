"""The numbers and quoted messages of README.md and docs/method.md, checked against the code:
the CLI's messages for non-UTF-8 and empty sweep files, the "not reached" median rule,
the training a kill redoes (checkpoint_seconds plus one epoch), what NL = 1 means, and
which dtype the NL probe computes in."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
METHOD = (REPO / "docs" / "method.md").read_text(encoding="utf-8")


def _censored_median():
    """``censored_median`` wherever the report's data helpers live (report or report_data)."""
    try:
        from mixsweep.report_data import censored_median  # type: ignore[import-not-found]
    except ImportError:
        from mixsweep.report_data import censored_median
    return censored_median


def _readme_message(row_start: str) -> re.Pattern[str]:
    """The quoted one-line message of the README Reliability row that starts with ``row_start``,
    as a pattern: FILE is the path, N a number, ``...`` anything."""
    rows = [line for line in README.splitlines() if line.startswith(f"| {row_start}")]
    assert len(rows) == 1, f"README has {len(rows)} rows starting with {row_start!r}"
    quoted = re.findall(r"`([^`]*)`", rows[0].split("|")[2])
    assert len(quoted) == 1, rows[0]
    parts = re.split(r"(FILE|\.\.\.|\bN\b)", quoted[0])
    special = {"FILE": r"(?P<file>\S+)", "...": ".*", "N": r"\d+"}
    return re.compile("".join(special.get(p, re.escape(p)) for p in parts))


@pytest.mark.parametrize(
    ("row", "content"),
    [
        ("a file that is not UTF-8", b"name: x\n\xff\xfe oops\n"),
        ("an empty file", b""),
        ("an empty file", b"# only a comment\n\n"),
        ("YAML tags", b"name: !!python/object/apply:os.system [echo]\n"),
        ("YAML tags", b"name: x\nname: y\n"),
    ],
)
def test_readme_sweep_file_messages_are_the_cli_lines(
    row: str, content: bytes, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_bytes(content)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "mixsweep.cli", "launch", str(sweep), "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, lines)
    assert lines[0].startswith("error: "), lines
    m = _readme_message(row).fullmatch(lines[0].removeprefix("error: "))
    assert m is not None, (row, lines[0])
    assert m.group("file") == str(sweep)
    assert not (tmp_path / "runs").exists()


def test_median_rule_as_the_docs_state_it() -> None:
    """Not reached exactly when at least ceil(n/2) of n are censored; else the usual median."""
    censored_median = _censored_median()
    for n in range(1, 9):
        for n_cens in range(n + 1):
            obs = [float(e) for e in range(3, 3 + n - n_cens)]
            epochs = pd.Series(obs + [None] * n_cens, dtype=object)
            reached = pd.Series([True] * len(obs) + [False] * n_cens)
            med, text = censored_median(epochs, reached)
            if n_cens >= math.ceil(n / 2):
                assert (med, text) == (None, "not reached"), (n, n_cens, med, text)
            else:
                want = (obs[(n - 1) // 2] + obs[n // 2]) / 2
                assert med == want, (n, n_cens, med, want)
    # the docs' own example: 4 trials, 2 censored
    med, text = censored_median(pd.Series([5.0, 7.0, None, None], dtype=object),
                                pd.Series([True, True, False, False]))
    assert (med, text) == (None, "not reached")
    assert "⌈n/2⌉" in README and "2 of 4" in README
    assert "⌈n/2⌉" in METHOD and "4 trials with 2 censored" in METHOD


def test_a_kill_redoes_less_than_checkpoint_seconds_plus_one_epoch(
    trial_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a clock that moves ``epoch_s`` per epoch, checkpoints are written at the end of the
    first epoch ``checkpoint_seconds`` after the last one; the training a kill just before a
    checkpoint loses is more than ``checkpoint_seconds`` but less than that plus one epoch."""
    from mixsweep import trial as trial_mod

    every_s, epoch_s, epochs = 60.0, 25.0, 8
    clock = [1000.0]
    monkeypatch.setattr(trial_mod, "time",
                        SimpleNamespace(perf_counter=trial_mod.time.perf_counter,
                                        monotonic=lambda: clock[0]))
    out = tmp_path / "t"
    saved: list[float] = []  # clock times of the checkpoints, trial start first

    def report(rec: dict[str, Any]) -> None:
        ck_path = out / "checkpoint.pt"
        if ck_path.is_file():
            ck = torch.load(ck_path, map_location="cpu", weights_only=True)
            if ck["history"][-1]["epoch"] == rec["epoch"]:
                saved.append(clock[0])
        clock[0] += epoch_s  # the next epoch takes epoch_s

    saved.append(clock[0])
    cfg = trial_cfg(train={"epochs": epochs, "checkpoint_seconds": every_s},
                    linearity={"probes": 16, "every": 100})
    res = trial_mod.run_trial(cfg, out, report)
    assert res["status"] == "completed"
    # 60 s, 25 s epochs: epochs 3 and 6 (75 s apart), and the last epoch, 8
    assert [round((t - 1000.0) / epoch_s) for t in saved] == [0, 3, 6, 8]
    lost = max(b - a for a, b in zip(saved, saved[1:], strict=False))
    assert every_s < lost < every_s + epoch_s
    assert "less than `checkpoint_seconds` plus one epoch" in README


def test_nl_one_is_half_the_snapping_error() -> None:
    """sum_j l_j ||h(mix) - h(x_j)||^2 = ||r||^2 + s, so NL = 1 (||r||^2 = s) is half of it."""
    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 5):
        ends = torch.randn(k, 7, generator=g, dtype=torch.float64)
        lam = torch.rand(k, generator=g, dtype=torch.float64)
        lam /= lam.sum()
        h_mix = torch.randn(7, generator=g, dtype=torch.float64)
        m = (lam[:, None] * ends).sum(0)
        r2 = ((h_mix - m) ** 2).sum()
        s = (lam * ((ends - m) ** 2).sum(1)).sum()
        snap = (lam * ((h_mix - ends) ** 2).sum(1)).sum()
        assert torch.isclose(snap, r2 + s)
    assert "half the snapping error" in METHOD


class _Wiggle(nn.Module):
    """h(x) = sin(50 x): far from linear along any path; records the dtypes it is run in."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dtypes.add(x.dtype)
        return torch.sin(50 * x)


def test_nl_has_no_upper_bound_and_the_network_runs_in_float32() -> None:
    from mixsweep.linearity import layer_stats

    model = _Wiggle()
    probes = torch.rand(256, 6, generator=torch.Generator().manual_seed(1))
    stats = layer_stats(model, probes, layers={"h": "output"}, k=2, alpha=1.0, seed=0)
    assert stats["nl"]["h"] > 2  # about 5 for independent outputs with uniform weights
    assert model.dtypes == {torch.float32}  # only the probed outputs are cast to float64


def test_version_license_and_changelog_agree() -> None:
    import mixsweep

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["version"] == mixsweep.__version__
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    newest = re.search(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.M)
    assert newest is not None and newest.group(1) == mixsweep.__version__
    assert project["license"] == "Apache-2.0"
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "Copyright 2026 the mixsweep authors" in license_text
    assert (REPO / "mixsweep" / "py.typed").is_file()
