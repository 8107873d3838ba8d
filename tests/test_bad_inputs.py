"""The bad-input corpus: every broken sweep file in tests/bad_inputs/ and every broken CLI call
below is refused before a trial or job starts: exit code 2, one ``error:`` line per problem
naming the key, no traceback, nothing written under runs/, no shell value ever executed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mixsweep import slurm, tune
from mixsweep.cli import app

CORPUS = Path(__file__).parent / "bad_inputs"
FILES = sorted(CORPUS.glob("*.yaml"))
REPO = Path(__file__).resolve().parents[1]


def expected(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("# expect: "), f"{path.name} names no expected message"
    return first.removeprefix("# expect: ")


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Fail the test if a sweep or a SLURM job would start; run in an empty folder."""

    def started(*_a, **_k):
        raise AssertionError("a sweep or job started from bad input")

    monkeypatch.setattr(tune, "run_sweep", started)
    monkeypatch.setattr(slurm, "submit", started)
    monkeypatch.setattr(slurm, "_run", started, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(args: list[str], cwd: Path) -> list[str]:
    result = CliRunner().invoke(app, args)
    out = result.output
    assert result.exit_code == 2, (args, result.exit_code, out, result.exception)
    assert "Traceback" not in out and not isinstance(result.exception, AssertionError), out
    assert not (cwd / "runs").exists() and not (cwd / "PWNED").exists()
    return [line for line in out.splitlines() if line.strip()]


def test_corpus_is_large_enough() -> None:
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_bad_sweep_file(path: Path, nothing_starts: Path) -> None:
    for args in (["launch", str(path)], ["launch", str(path), "--dry-run"]):
        lines = refused(args, nothing_starts)
        assert all(line.startswith("error: ") for line in lines), lines
        assert len(lines) == 1, lines  # each file has one problem
        assert expected(path) in lines[0], lines


def test_several_problems_give_one_line_each(nothing_starts: Path) -> None:
    bad = nothing_starts / "many.yaml"
    bad.write_text(yaml.safe_dump({"mixup": {"kk": 2, "alpha": -1}, "train": {"epochs": 0}}))
    lines = refused(["launch", str(bad)], nothing_starts)
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert any("mixup: unknown key 'kk'" in x for x in lines)
    assert any("mixup.alpha[0]" in x for x in lines) and any("train.epochs[0]" in x for x in lines)


def _large(tmp: Path) -> Path:  # 1200 trials: over LARGE_SWEEP, under MAX_GRID
    path = tmp / "large.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": [0.01 * (i + 1) for i in range(40)]},
                                    "seeds": list(range(30))}))
    return path


def _fifo(tmp: Path) -> Path:
    path = tmp / "fifo.yaml"
    os.mkfifo(path)
    return path


def _grid_trial(tmp: Path) -> Path:
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump({"mixup": {"mode": "sup", "k": [2, 3]}}))
    return path


def _ok(tmp: Path) -> Path:
    path = tmp / "ok.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 1}}))
    return path


def _loop(tmp: Path) -> Path:
    path = tmp / "loop.yaml"
    path.symlink_to(path.name)
    return path


# (id, argv builder, the text the error line must hold)
CALLS = [
    ("missing_file", lambda t: ["launch", str(t / "nope.yaml")], "nope.yaml: no such file"),
    ("directory", lambda t: ["launch", str(t)], "is a directory, not a YAML file"),
    ("fifo", lambda t: ["launch", str(_fifo(t))], "fifo.yaml: not a regular file"),
    ("huge_without_yes", lambda t: ["launch", str(_large(t))], "1200 trials is more than 1000"),
    ("wandb_mode", lambda t: ["launch", str(_ok(t)), "--wandb", "upload"], "--wandb must be offline, online or disabled"),
    ("max_concurrent_zero", lambda t: ["launch", str(_ok(t)), "--max-concurrent", "0"], "'--max-concurrent'"),
    ("unknown_option", lambda t: ["launch", str(_ok(t)), "--retries", "3"], "No such option: --retries"),
    ("status_unknown_sweep", lambda t: ["status", "nosuch"], "no sweep 'nosuch'"),
    ("cancel_unknown_sweep", lambda t: ["cancel", "nosuch"], "no sweep 'nosuch'"),
    ("sync_unknown_sweep", lambda t: ["sync", "nosuch"], "no sweep 'nosuch'"),
    ("trial_with_grid", lambda t: ["trial", str(_grid_trial(t))], "these keys have several: mixup.k"),
    ("trial_directory", lambda t: ["trial", str(t)], "is a directory, not a YAML file"),
    ("bench_part", lambda t: ["bench", "--only", "gpu2"], "unknown bench part(s) gpu2"),
    ("data_format", lambda t: ["data", "prepare", "digits", "--format", "tfrecord"], "unknown --format 'tfrecord'"),
    ("report_not_a_sweep", lambda t: ["report", str(t / "nosuch")], "nosuch"),
    ("missing_argument", lambda t: ["status"], "Missing argument 'name'. (see: "),
    ("unknown_verb", lambda t: ["lunch"], "No such command 'lunch'"),
    ("not_a_number", lambda t: ["status", "x", "--watch", "soon"], "Invalid value for '--watch'"),
    ("join_timeout_nan", lambda t: ["launch", str(_ok(t)), "--join-timeout", "nan"], "'--join-timeout': nan is not a number of seconds"),
    ("name_too_long", lambda t: ["trial", "n" * 300], "cannot open the sweep file: File name too long"),
    ("symlink_loop", lambda t: ["launch", str(_loop(t))], "Too many levels of symbolic links"),
]


@pytest.mark.parametrize(("build", "text"), [c[1:] for c in CALLS], ids=[c[0] for c in CALLS])
def test_bad_cli_call(build, text: str, nothing_starts: Path) -> None:
    lines = refused(build(nothing_starts), nothing_starts)
    assert any(text in line for line in lines), lines
    # one plain line, typer's own usage errors (bad option values, unknown options) included
    assert len(lines) == 1 and lines[0].startswith("error: "), lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(nothing_starts: Path) -> None:
    path = _ok(nothing_starts)
    path.chmod(0)
    lines = refused(["launch", str(path)], nothing_starts)
    assert lines == [f"error: {path}: permission denied (cannot read the file)"]


def test_huge_grid_runs_with_yes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = {}

    def fake(spec, trials, **_k):
        seen["n"] = len(trials)
        return tune.SweepOutcome(len(trials), len(trials), 0, 0, 0, 0.0)

    monkeypatch.setattr(tune, "run_sweep", fake)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["launch", str(_large(tmp_path)), "--yes"])
    assert result.exit_code == 0, result.output
    assert seen == {"n": 1200}


def test_subprocess_no_traceback_and_nothing_executed(tmp_path: Path) -> None:
    """The same refusals from a real process: stderr holds the one line, stdout nothing."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    for name in ("slurm_partition_shell", "yaml_python_tag", "yaml_alias_bomb"):
        proc = subprocess.run([sys.executable, "-m", "mixsweep.cli", "launch",
                               str(CORPUS / f"{name}.yaml")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
        assert expected(CORPUS / f"{name}.yaml") in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no runs/, no PWNED


def test_aliases_in_normal_use_still_load(tmp_path: Path) -> None:
    from mixsweep.expand import expand
    from mixsweep.spec_yaml import load_spec

    path = tmp_path / "reuse.yaml"
    path.write_text("train: {epochs: 1}\nmixup: {mode: sup, k: &ks [2, 3]}\n"
                    "linearity: {k: 2}\nseeds: &s [0, 1]\ndescription: reuse\n")
    assert len(expand(load_spec(path))) == 4
