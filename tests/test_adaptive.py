"""Adaptive seeds: the sweep-file schema, the rounds with a fake runner (only open cells get
seeds, rounds.json, resume after a kill, the dry run's worst case) and one real small run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mixsweep.adaptive import adaptive_lines, plan_cells, run_rounds
from mixsweep.expand import expand
from mixsweep.launch import launch
from mixsweep.sequential import AT_MAX, DECIDED_LESS, OPEN
from mixsweep.spec import SweepSpec, TrialConfig, parse_spec
from mixsweep.spec_errors import SpecError
from mixsweep.store import SweepPaths, atomic_write_json, collect_rows, write_results

UNTIL = {"contrast": "mixup.mode=sup:erm", "metric": "nl_mid", "at": "end"}


def raw_spec(tmp: Path, **seeds: Any) -> dict[str, Any]:
    return {
        "name": "adapt", "runs_dir": str(tmp / "runs"),
        "data": {"dataset": "digits", "labeled_fraction": [0.1, 1.0]},
        "model": {"arch": "cnn", "width": 4, "depth": [2, 4]},
        "train": {"epochs": 1, "batch_size": 64, "device": "cpu"},
        "mixup": {"mode": ["erm", "sup"], "k": 2},
        "seeds": {"start": 3, "max": 7, "step": 2, "until": UNTIL, **seeds},
    }


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return info.value.problems


# --------------------------------------------------------------------------- the schema


def test_a_valid_adaptive_spec_and_its_seeds(tmp_path: Path) -> None:
    spec = parse_spec(raw_spec(tmp_path))
    assert spec.adaptive is not None and spec.adaptive.until.metric == "nl_mid"
    assert spec.seed_list == list(range(7))
    fixed = parse_spec({**raw_spec(tmp_path), "seeds": [0, 1, 2]})
    assert fixed.adaptive is None and fixed.seed_list == [0, 1, 2]


@pytest.mark.parametrize(("seeds", "start", "words"), [
    ({"start": 1}, "seeds.start", "greater than or equal to 2"),
    ({"start": 5, "max": 4}, "seeds", "max 4 is below start 5"),
    ({"max": 1000}, "seeds.max", "less than or equal to 100"),
    ({"step": 0}, "seeds.step", "greater than or equal to 1"),
    ({"start": True}, "seeds.start", "not true/false"),
    ({"until": {**UNTIL, "metric": "loss"}}, "seeds.until", "metric 'loss'"),
    ({"until": {**UNTIL, "at": "late"}}, "seeds.until.at", "'end', 'early' or 'target'"),
    ({"until": {**UNTIL, "metric": "acc", "at": "early"}}, "seeds.until", "at the end only"),
    ({"until": {**UNTIL, "alpha": 0.7}}, "seeds.until.alpha", "less than 0.5"),
    ({"until": {**UNTIL, "precision": 0}}, "seeds.until.precision", "greater than 0"),
    ({"until": {**UNTIL, "colour": 1}}, "seeds.until", "unknown key 'colour'"),
    ({"untl": UNTIL}, "seeds", "did you mean 'until'"),
    ({"until": {**UNTIL, "contrast": "mode=sup:erm"}}, "seeds.until", "SECTION.KEY=A:B"),
    ({"until": {**UNTIL, "contrast": "mixup.mode=mt:erm"}}, "seeds.until.contrast",
     "no value mt"),
    ({"until": {**UNTIL, "contrast": "model.width=4:8"}}, "seeds.until.contrast",
     "not an axis of the grid"),
    ({"until": {**UNTIL, "contrast": "mixup.mode=sup:sup"}}, "seeds.until.contrast", "same value"),
    ({"until": {**UNTIL, "contrast": "model.colour=a:b"}}, "seeds.until.contrast",
     "not a key of the sweep"),
])
def test_bad_adaptive_seeds_give_one_line_naming_the_key(tmp_path: Path, seeds: dict[str, Any],
                                                         start: str, words: str) -> None:
    lines = problems(raw_spec(tmp_path, **seeds))
    assert len(lines) == 1, lines
    assert lines[0].startswith(start + ":") and words in lines[0], lines
    assert "\n" not in lines[0]


def test_until_is_required_and_allowed_keys_are_named(tmp_path: Path) -> None:
    raw = raw_spec(tmp_path)
    raw["seeds"] = {"start": 3, "max": 5}
    assert problems(raw) == ["seeds.until: Field required"]
    raw["seeds"] = {"start": 3, "max": 5, "until": {**UNTIL, "x": 1}}
    (line,) = problems(raw)
    assert "allowed: contrast, metric, at, precision, alpha" in line


def test_adaptive_trials_are_the_fixed_design_to_max(tmp_path: Path) -> None:
    adaptive = expand(parse_spec(raw_spec(tmp_path)))
    fixed = expand(parse_spec({**raw_spec(tmp_path), "seeds": list(range(7))}))
    assert [t.trial_id for t in adaptive] == [t.trial_id for t in fixed]
    assert len(adaptive) == 4 * 2 * 7


def test_a_wrong_layer_is_refused_before_anything_runs(tmp_path: Path) -> None:
    spec = parse_spec(raw_spec(tmp_path, until={**UNTIL, "metric": "nl_block9"}))
    with pytest.raises(SpecError, match="no layer block9"):
        launch(spec, dry_run=True)


def test_the_spec_survives_spec_yaml_and_slurm(tmp_path: Path) -> None:
    import yaml

    from mixsweep.slurm import sbatch_script

    spec = parse_spec({**raw_spec(tmp_path), "slurm": {"time": "10"}})
    again = parse_spec(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json"))))
    assert again == spec
    assert "mixsweep.cli launch" in sbatch_script(spec)


# --------------------------------------------------------------------------- a fake runner


# the true sup - erm effect on NL per cell (labeled_fraction, depth): two clear, two none
EFFECT = {(0.1, 2): -0.3, (1.0, 2): -0.3, (0.1, 4): 0.0, (1.0, 4): 0.0}


def _noise(t: TrialConfig, scale: float) -> float:
    h = int(hashlib.sha256(f"{t.trial_id}".encode()).hexdigest()[:8], 16)
    return scale * (h / 0xFFFFFFFF - 0.5)


def synthetic_nl(t: TrialConfig) -> float:
    effect = EFFECT[(t.data.labeled_fraction, t.model.depth)]
    noise = 0.002 if effect else 0.2  # a clear effect is measured tightly
    return 0.5 + (effect if t.mixup.mode == "sup" else 0.0) + _noise(t, noise)


@dataclass
class Outcome:
    done: bool


class FakeRunner:
    """Writes each unfinished trial's result.json and metrics.jsonl with a synthetic NL, then
    results.csv, as run_sweep does. ``stop_after``: the call after which it 'is killed'."""

    def __init__(self, spec: SweepSpec, stop_after: int | None = None):
        self.paths = SweepPaths.of(spec.runs_dir, spec.name)
        self.calls: list[list[TrialConfig]] = []
        self.ran: list[str] = []
        self.stop_after = stop_after

    def __call__(self, trials: list[TrialConfig]) -> Outcome:
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt  # a kill between rounds
        self.calls.append(list(trials))
        for t in trials:
            tp = self.paths.trial(t.trial_id)
            if tp.read_result(t.trial_id) is not None:
                continue
            self.ran.append(t.trial_id)
            nl = synthetic_nl(t)
            layers = {"stem_pre": 0.0, "block1": nl, "block2": nl, "logits": 0.1}
            tp.root.mkdir(parents=True, exist_ok=True)
            tp.write_metrics([{"epoch": 1, "test_acc": 0.9, "nl": layers}])
            atomic_write_json(tp.result, {"trial_id": t.trial_id, "status": "completed",
                                          "final_acc": 0.9, "nonlinearity": layers,
                                          "epochs_done": 1})
        write_results(self.paths, collect_rows(self.paths, trials))
        return Outcome(done=True)


def _seeds_by_cell(trials: list[TrialConfig]) -> dict[tuple[float, int], set[int]]:
    out: dict[tuple[float, int], set[int]] = {}
    for t in trials:
        out.setdefault((t.data.labeled_fraction, t.model.depth), set()).add(t.seed)
    return out


def test_only_open_cells_get_more_seeds(tmp_path: Path) -> None:
    spec = parse_spec(raw_spec(tmp_path))
    trials = expand(spec)
    fake = FakeRunner(spec)
    said: list[str] = []
    rounds = run_rounds(spec, trials, fake, say=said.append)
    assert rounds.done and len(fake.calls) == 3  # rounds of 3, 5, 7 seeds
    first, second, third = (_seeds_by_cell(c) for c in fake.calls)
    assert all(s == {0, 1, 2} for s in first.values())
    for cell, effect in EFFECT.items():  # the clear cells stop at 3 seeds, the others go on
        assert second[cell] == ({0, 1, 2} if effect else set(range(5)))
        assert third[cell] == ({0, 1, 2} if effect else set(range(7)))
    assert len(fake.ran) == len(set(fake.ran)) == 2 * 2 * 3 + 2 * 2 * 7  # no trial twice

    record = json.loads(SweepPaths.of(spec.runs_dir, spec.name).rounds.read_text())
    assert record["state"] == "done" and record["open"] == [] and record["round"] == 3
    assert record["plan"] == {"rounds": [3, 5, 7], "cells": 4, "alpha": 0.05, "precision": None}
    assert [e["seeds"] for e in record["rounds"]] == [3, 5, 7]
    r1 = record["rounds"][0]["cells"]
    assert sorted(d["status"] for d in r1.values()) == [DECIDED_LESS, DECIDED_LESS, OPEN, OPEN]
    decided = [d for d in r1.values() if d["status"] == DECIDED_LESS]
    assert all(d["high"] < 0 and d["low"] < d["mean"] < d["high"] for d in decided)
    assert len(record["rounds"][1]["cells"]) == 2  # only the open cells are looked at again
    assert all(d["status"] == AT_MAX and d["n"] == 7 for d in record["rounds"][2]["cells"].values())
    assert record["trials"] == len(rounds.trials) == 40
    assert any("round 2/3: 2 open cell(s) at 5 seeds" in s for s in said)

    lines = adaptive_lines(spec.runs_dir + "/adapt")
    assert "round 3 of 3 (done)" in lines[0] and "40 trials" in lines[0]
    assert sum(DECIDED_LESS in ln for ln in lines) == 2 and sum(AT_MAX in ln for ln in lines) == 2


def test_a_kill_between_rounds_resumes_to_the_same_state(tmp_path: Path) -> None:
    whole = parse_spec(raw_spec(tmp_path / "a"))
    run_rounds(whole, expand(whole), FakeRunner(whole), say=lambda _: None)
    expected = json.loads(SweepPaths.of(whole.runs_dir, whole.name).rounds.read_text())

    spec = parse_spec(raw_spec(tmp_path / "b"))
    killed = FakeRunner(spec, stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_rounds(spec, expand(spec), killed, say=lambda _: None)
    mid = json.loads(SweepPaths.of(spec.runs_dir, spec.name).rounds.read_text())
    assert mid["round"] == 2 and mid["state"] == "running" and len(mid["rounds"]) == 1
    assert len(mid["open"]) == 2
    open_lines = adaptive_lines(Path(spec.runs_dir) / spec.name)
    assert "round 2 of 3 (running); 2 of 4 cells open" in open_lines[0]
    assert sum("open, running 5 seeds; last A-B [" in ln for ln in open_lines) == 2
    assert sum(DECIDED_LESS + " after 3 seeds" in ln for ln in open_lines) == 2

    again = FakeRunner(spec)
    said: list[str] = []
    resumed = run_rounds(spec, expand(spec), again, say=said.append)
    assert resumed.done and any(s.startswith("resuming: rounds.json recorded round 2") for s in said)
    assert json.loads(SweepPaths.of(spec.runs_dir, spec.name).rounds.read_text()) == expected
    assert len(killed.ran) + len(again.ran) == 40  # the first round's trials were kept


def test_an_unfinished_round_stops_and_says_so(tmp_path: Path) -> None:
    spec = parse_spec(raw_spec(tmp_path))
    rounds = run_rounds(spec, expand(spec), lambda trials: Outcome(done=False), say=lambda _: None)
    assert not rounds.done and rounds.record["state"] == "interrupted"
    assert rounds.record["rounds"] == [] and rounds.record["round"] == 1


def test_launch_runs_rounds_with_an_injected_runner(tmp_path: Path) -> None:
    spec = parse_spec(raw_spec(tmp_path))
    fake = FakeRunner(spec)
    result = launch(spec, runner=fake, say=lambda _: None)
    assert result.done and result.rounds is not None and len(fake.calls) == 3
    assert (Path(spec.runs_dir) / spec.name / "spec.yaml").is_file()


def test_dry_run_shows_the_worst_case_and_the_rounds(tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    from mixsweep.plan import print_plan

    spec = parse_spec(raw_spec(tmp_path, max=8))
    result = launch(spec, dry_run=True)
    assert len(result.trials) == 4 * 2 * 8 and not (tmp_path / "runs").exists()
    out = StringIO()
    print_plan(result.spec, result.trials, Console(file=out, width=200))
    text = out.getvalue()
    assert "rounds of seeds per open cell: 3, 5, 8" in text
    assert "round 1: 24 trials; worst case (every cell to 8 seeds): 64 trials" in text
    _, cells = plan_cells(spec, result.trials)
    assert len(cells) == 4 and all(len(c.a) == len(c.b) == 8 for c in cells)


def test_a_fixed_sweep_has_no_adaptive_lines(tmp_path: Path) -> None:
    assert adaptive_lines(tmp_path) == []


# --------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_a_real_adaptive_run_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    raw = raw_spec(tmp_path, start=2, max=3, step=1)
    raw["data"] = {"dataset": "digits"}
    raw["model"] = {"arch": "cnn", "width": 4, "depth": 2, "batchnorm": [True, False]}
    raw["train"] = {"epochs": 2, "batch_size": 128, "device": "cpu", "target_accuracy": 0.5}
    raw["linearity"] = {"probes": 32, "every": 1}
    raw["resources"] = {"cpus_per_trial": 1, "max_concurrent": 2}
    spec = parse_spec(raw)
    result = launch(spec, wandb="disabled", say=lambda _: None)
    record = result.rounds.record
    assert result.done and record["state"] == "done" and record["plan"]["rounds"] == [2, 3]
    assert 8 <= record["trials"] <= 12 and len(record["rounds"][0]["cells"]) == 2
    final = {c: d["n"] for e in record["rounds"] for c, d in e["cells"].items()}
    assert set(final.values()) <= {2, 3}
    assert SweepPaths.of(spec.runs_dir, spec.name).rounds.is_file()


def test_cli_dry_run_and_a_bad_file(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import yaml

    env = {**os.environ, "WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(raw_spec(tmp_path)))
    bad.write_text(yaml.safe_dump(raw_spec(tmp_path, start=1)))
    run = [sys.executable, "-m", "mixsweep.cli", "launch"]
    out = subprocess.run([*run, str(good), "--dry-run"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "rounds of seeds per open cell: 3, 5, 7" in out.stdout and "56 trials" in out.stdout
    out = subprocess.run([*run, str(bad)], env=env, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: seeds.start: Input should be greater than or equal to 2 (got 1)"]
    assert not (tmp_path / "runs").exists()
