"""Issue 16: every verb meets bad paths, bad option values, damaged run folders and dead
external services with one plain line (exit 2, no traceback) or, for a damaged run folder,
with what it can still show plus a note; nothing computed is lost; every external call is
bounded in time (the bounds are measured here, against servers on 127.0.0.1 only)."""

from __future__ import annotations

import html
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixsweep import slurm, tune
from mixsweep.cli import app
from mixsweep.expand import expand
from mixsweep.spec import parse_spec
from mixsweep.spec_yaml import load_yaml
from mixsweep.store import SweepPaths, atomic_write_json, collect_rows, write_results

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["stem_pre", "stem", "block1", "block2", "block3", "pool", "logits", "probs"]


def invoke(args: list[str], **kwargs) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], **kwargs)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def one_error(args: list[str], *needles: str, **kwargs) -> str:
    """The call exits 2 with exactly one line, an ``error:`` line holding every needle."""
    code, out = invoke(args, **kwargs)
    lines = [x for x in out.splitlines() if x.strip()]
    assert code == 2, (code, out)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Notes under the status table are not cut into lines (the paths in them stay whole)."""
    from mixsweep import cli

    monkeypatch.setattr(cli.console, "_width", 1000)


def flat(text: str) -> str:
    """Output with rich's line wrapping undone (for notes under a table)."""
    return " ".join(text.split())


# --------------------------------------------------------------------------- a run folder


def _build(runs: Path) -> Path:
    """A sweep folder written the way launch and run_trial write it: 4 trials (erm and sup,
    two seeds), three completed with 2 epochs each, one pending; results.csv from them."""
    raw = load_yaml(REPO / "sweeps" / "quickstart.yaml")
    raw["data"]["labeled_fraction"] = 1.0
    raw["train"]["epochs"] = 2
    raw["mixup"].update(mode=["erm", "sup"], k=2)
    raw["linearity"].update(every=1)
    raw["seeds"] = [0, 1]
    spec = parse_spec(raw)
    sp = SweepPaths.of(runs, spec.name)
    sp.write_spec(spec)
    sp.sweep_id()
    trials = expand(spec)
    for n, cfg in enumerate(trials[:3]):
        tp = sp.trial(cfg.trial_id)
        atomic_write_json(tp.config, {"trial_id": cfg.trial_id, **cfg.model_dump(mode="json")})
        hist = [{"epoch": e, "step": 12 * e, "test_acc": 0.1 + 0.4 * e + 0.01 * n,
                 "train_seconds": 1.0 * e,
                 "nl": {x: 0.1 * (i + 1) + 0.01 * n + 0.02 * e for i, x in enumerate(LAYERS)},
                 "cos": dict.fromkeys(LAYERS, 0.9)} for e in range(3)]
        tp.write_metrics(hist)
        last = hist[-1]
        atomic_write_json(tp.result, {
            "trial_id": cfg.trial_id, "status": "completed", "reason": None,
            "config": cfg.model_dump(mode="json"), "epochs_done": 2,
            "final_acc": last["test_acc"], "best_acc": last["test_acc"], "target_accuracy": 0.95,
            "reached_target": False, "epochs_to_target": None, "steps_to_target": None,
            "seconds_to_target": None, "nonlinearity": last["nl"], "cosine": last["cos"],
            "nl_epoch": 2, "nl_at_target": None, "train_seconds": 2.0, "wall_seconds": 3.0})
    write_results(sp, collect_rows(sp, trials))
    return sp.root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def run_dir(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the run folder for one test to damage."""
    return Path(shutil.copytree(built, tmp_path / "runs" / built.name))


def _trials(root: Path) -> tuple[str, str]:
    """(a completed trial's id, the pending trial's id)."""
    sp = SweepPaths(root)
    ids = [t.trial_id for t in expand(parse_spec(load_yaml(sp.spec)))]
    done = sorted(i for i in ids if sp.trial(i).root.is_dir())
    return done[0], next(i for i in ids if not sp.trial(i).root.is_dir())


def test_the_run_folder_is_whole(run_dir: Path, tmp_path: Path) -> None:
    code, out = invoke(["status", run_dir])
    assert code == 0 and "3 completed, 1 pending / 4 trials" in out and "note:" not in out
    code, out = invoke(["report", run_dir, "--out", tmp_path / "r.html", "--figures", "profile"])
    assert code == 0 and "note:" not in out, out


# --------------------------------------------------------------------------- 1. wrong kinds of path


def _sweep_file(tmp: Path, **changes) -> Path:
    raw = {"name": "tiny", "data": {"dataset": "digits"}, "train": {"epochs": 1, "device": "cpu"},
           "mixup": {"mode": "erm"}, "seeds": [0], **changes}
    path = tmp / "tiny.yaml"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture
def no_sweep_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    def started(*_a, **_k):
        raise AssertionError("a sweep started")

    monkeypatch.setattr(tune, "run_sweep", started)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_runs_dir_is_a_file(no_sweep_starts: Path) -> None:
    (no_sweep_starts / "somefile").write_text("x")
    one_error(["launch", _sweep_file(no_sweep_starts, runs_dir="somefile")],
              "somefile/tiny: somefile is a file, not a folder", "choose another path",
              "run the same command again")
    one_error(["launch", _sweep_file(no_sweep_starts, runs_dir="somefile/deeper")],
              "somefile is a file, not a folder")
    assert (no_sweep_starts / "somefile").read_text() == "x"


def test_user_errors_names_every_wrong_kind_of_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The wrapper turns each errno of a path of the wrong kind into one line naming it."""
    import errno

    import typer

    from mixsweep.cli_errors import user_errors

    (tmp_path / "f").write_text("x")
    cases = [(errno.ENOTDIR, tmp_path / "f" / "a", f"error: {tmp_path / 'f' / 'a'}: {tmp_path / 'f'} is a file, not a folder"),
             (errno.EEXIST, tmp_path / "f", f"error: {tmp_path / 'f'} is a file, not a folder"),
             (errno.EISDIR, tmp_path, f"error: {tmp_path}: is a folder, not a file; nothing finished is lost: give a file name"),
             (errno.ENAMETOOLONG, tmp_path / ("a" * 300), "File name too long; nothing finished is lost: choose a shorter path"),
             (errno.ELOOP, tmp_path / "loop", "fix the symbolic link (it loops)"),
             (errno.ENOSPC, tmp_path / "x", f"error: cannot write {tmp_path / 'x'}: No space left on device; nothing finished is lost: free space")]
    for code, path, needle in cases:
        @user_errors
        def fails(code=code, path=path):
            raise OSError(code, os.strerror(code), str(path))

        with pytest.raises(typer.Exit) as exit_info:
            fails()
        assert exit_info.value.exit_code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "run the same command again" in err, err


@pytest.mark.parametrize(("option", "kind", "needle"), [
    ("--out", "dir", "--out {p} is a folder: give a file name"),
    ("--markdown", "dir", "--markdown {p} is a folder: give a file name"),
    ("--png", "file", "--png {p} is a file, not a folder"),
    ("--out", "under_file", "--out {p}: {f} is a file, not a folder"),
])
def test_report_output_of_the_wrong_kind(run_dir: Path, tmp_path: Path, option: str, kind: str,
                                         needle: str) -> None:
    f = tmp_path / "somefile"
    f.write_text("x")
    p = {"dir": tmp_path, "file": f, "under_file": f / "r.html"}[kind]
    args = ["report", run_dir, "--figures", "profile"]
    args += [option, p] if option == "--out" else ["--out", tmp_path / "r.html", option, p]
    t0 = time.monotonic()
    one_error(args, needle.format(p=p, f=f))
    assert time.monotonic() - t0 < 5  # refused before the report is built
    assert not (tmp_path / "r.html").exists() and f.read_text() == "x"


def test_status_runs_dir_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "somefile").write_text("x")
    one_error(["status", "quickstart", "--runs-dir", "somefile"],
              "--runs-dir somefile is a file, not a folder")


def test_data_root_is_a_file(tmp_path: Path, no_sweep_starts: Path) -> None:
    f = tmp_path / "somefile"
    f.write_text("x")
    for root in (f, f / "below"):
        one_error(["data", "prepare", "cifar10", "--root", root],
                  f"data.root {root}: {f} is a file, not a folder")
    one_error(["launch", _sweep_file(tmp_path, data={"dataset": "svhn", "root": str(f)})],
              f"data.root {f}: {f} is a file, not a folder")


def test_trial_out_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "somefile"
    f.write_text("x")
    cfg = REPO / "sweeps" / "trial_digits.yaml"
    one_error(["trial", cfg, "--out", f, "--device", "cpu"], f"--out {f} is a file, not a folder")
    one_error(["trial", cfg, "--out", f / "t", "--device", "cpu"], f"{f} is a file, not a folder")
    assert f.read_text() == "x"


# --------------------------------------------------------------------------- 2. devices


@pytest.mark.parametrize(("device", "cuda", "needle"), [
    ("tpu", 0, "--device 'tpu': unknown device; allowed: auto, cpu, cuda, cuda:N"),
    ("cuda:x", 0, "--device 'cuda:x': unknown device"),
    ("meta", 0, "--device 'meta': not supported"),
    ("cuda", 0, "--device 'cuda': no CUDA device is visible here; use cpu (or auto)"),
    ("cuda:7", 0, "--device 'cuda:7': no CUDA device is visible here"),
    ("cuda:7", 2, "--device 'cuda:7': this machine has 2 CUDA devices (cuda:0 to cuda:1)"),
])
def test_unusable_device_is_one_line_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          device: str, cuda: int, needle: str) -> None:
    import torch

    from mixsweep import trial

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(trial, "Engine", lambda *a, **k: pytest.fail("the trial started"))
    one_error(["trial", REPO / "sweeps" / "trial_digits.yaml", "--out", tmp_path / "t",
               "--device", device], needle)
    assert not (tmp_path / "t").exists()


def test_unusable_train_device_in_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {dataset: digits}\ntrain: {epochs: 1, device: cuda}\n")
    one_error(["trial", cfg, "--out", tmp_path / "t"], f"{cfg}: train.device 'cuda': no CUDA device")


# --------------------------------------------------------------------------- 3. option values


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e300"])
def test_status_watch_must_be_finite_seconds(run_dir: Path, value: str) -> None:
    one_error(["status", run_dir, f"--watch={value}"], "'--watch'", "not a number of seconds")


@pytest.mark.parametrize(("args", "needle"), [
    (["--jobs", "0"], "'--jobs'"),
    (["--jobs", "-3"], "'--jobs'"),
    (["--timeout", "0"], "'--timeout'"),
    (["--timeout", "nan"], "'--timeout'"),
    (["--timeout", "inf"], "'--timeout'"),
])
def test_sync_option_values(run_dir: Path, args: list[str], needle: str) -> None:
    one_error(["sync", run_dir, *args], needle)


def test_report_early_epoch(run_dir: Path, tmp_path: Path) -> None:
    base = ["report", run_dir, "--out", tmp_path / "r.html", "--markdown", tmp_path / "t.md",
            "--figures", "profile"]
    one_error([*base, "--early-epoch", "0"], "'--early-epoch'")
    one_error([*base, "--early-epoch", "-1"], "'--early-epoch'")
    one_error([*base, "--early-epoch", "99"],
              "--early-epoch 99: no trial measured NL at that epoch; measured: 0, 1, 2")
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "t.md").exists()
    code, _ = invoke([*base, "--early-epoch", "1"])
    assert code == 0 and "epoch 1" in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize("only", ["", ",", " , "])
def test_empty_bench_only_runs_nothing(only: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mixsweep import bench

    monkeypatch.setattr(bench, "run_bench", lambda **k: pytest.fail("the benchmark ran"))
    one_error(["bench", "--only", only], "names no part; allowed: loader, trainer, nonlinearity, "
              "scheduler, driver, gpu, store")


@pytest.mark.parametrize("figures", ["", ","])
def test_empty_report_figures_draws_nothing(run_dir: Path, tmp_path: Path, figures: str) -> None:
    one_error(["report", run_dir, "--out", tmp_path / "r.html", "--figures", figures],
              "names no figure; use profile, profile_target")
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- 4. damaged run folders

# (id, file under the sweep folder ({done}: a completed trial, {pending}: the pending one),
#  content (bytes, or "DIR" for a folder in its place), status's counts, status's note,
#  report's exit code and its note (or error) line)
DAMAGE = [
    ("spec_garbage", "spec.yaml", b"\x00\xff garbage: [\n", "3 completed, 1 pending",
     "spec.yaml is not a sweep file (not UTF-8 text", 0, "spec.yaml is not a sweep file"),
    ("spec_wrong_types", "spec.yaml", b"name: quickstart\ntrain: {epochs: x}\n",
     "3 completed, 1 pending", "spec.yaml is not a sweep file (train.epochs", 0,
     "showing results.csv as the last launch wrote it"),
    ("spec_a_list", "spec.yaml", b"- 1\n- 2\n", "3 completed, 1 pending",
     "the sweep file must be a YAML mapping", 0, "the sweep file must be a YAML mapping"),
    ("spec_a_folder", "spec.yaml", "DIR", "3 completed, 1 pending",
     "is a directory, not a YAML file", 0, "is a directory, not a YAML file"),
    ("spec_another_sweep", "spec.yaml",
     b"name: other\ndata: {dataset: digits}\ntrain: {epochs: 1}\nmixup: {mode: mt}\nseeds: [5]\n",
     "other: 1 pending / 1 trials",
     "3 trial folders under {root}/trials are not in spec.yaml", 2,
     "error: no completed trials in {root} ({root}: spec.yaml is sweep 'other', in folder 'quickstart'"),
    ("results_garbage", "results.csv", b"\x00\xff\xfe\n,,,\n", "3 completed, 1 pending", None, 0, None),
    ("result_not_json", "trials/{done}/result.json", b"{not json",
     "2 completed, 1 pending, 1 unreadable", "unreadable: 1 trial ({done}): result.json is not JSON; "
     "a relaunch (mixsweep launch {root}/spec.yaml) runs it again from the last checkpoint",
     0, "unreadable: 1 trial ({done}): result.json is not JSON"),
    ("result_a_list", "trials/{done}/result.json", b"[1, 2]", "2 completed, 1 pending, 1 unreadable",
     "result.json holds a list, not a result record", 0, "result.json holds a list"),
    ("result_a_string", "trials/{done}/result.json", b'"completed"', "2 completed, 1 pending, 1 unreadable",
     "result.json holds a string, not a result record", 0, "result.json holds a string"),
    ("result_missing_keys", "trials/{done}/result.json", b'{"trial_id": "{done}", "status": "completed"}',
     "2 completed, 1 pending, 1 unreadable", "result.json: a completed trial without final_acc", 0,
     "without final_acc"),
    ("result_wrong_types", "trials/{done}/result.json",
     b'{"trial_id": "{done}", "status": "completed", "final_acc": "x"}',
     "2 completed, 1 pending, 1 unreadable", "result.json: final_acc is 'x', not a number", 0,
     "final_acc is 'x', not a number"),
    ("result_wrong_layer_map", "trials/{done}/result.json",
     b'{"trial_id": "{done}", "status": "completed", "final_acc": 0.5, "nonlinearity": "y"}',
     "2 completed, 1 pending, 1 unreadable",
     "nonlinearity is a string, not a map of layer -> number", 0, "nonlinearity is a string"),
    ("result_another_trial", "trials/{done}/result.json",
     b'{"trial_id": "0123456789ab", "status": "completed", "final_acc": 0.5}',
     "2 completed, 1 pending, 1 unreadable", "result.json is for trial '0123456789ab', not {done}", 0,
     "result.json is for trial '0123456789ab'"),
    ("result_a_folder", "trials/{done}/result.json", "DIR", "2 completed, 1 pending, 1 unreadable",
     "result.json is a folder, not a file; move it away, then a relaunch", 0,
     "result.json is a folder, not a file"),
    ("trial_a_file", "trials/{done}", b"x", "2 completed, 1 pending, 1 unreadable",
     "{done} is a file, not a folder; move it away", 0, "{done} is a file, not a folder"),
    ("trials_a_file", "trials", b"x", "4 unreadable / 4 trials", "trials is a file, not a folder", 2,
     "error: no completed trials in {root} ({root}: unreadable: 4 trials"),
    ("metrics_wrong_types", "trials/{done}/metrics.jsonl",
     b'{"epoch": 0, "test_acc": 0.1}\n{"epoch": 1, "test_acc": "x", "nl": "y"}\n',
     "3 completed, 1 pending", None, 0,
     "metrics.jsonl: test_acc is 'x', not a number, from that line on, in 1 trial ({done})"),
    ("metrics_wrong_layer_map", "trials/{done}/metrics.jsonl", b'{"epoch": 0, "nl": {"stem": "b"}}\n',
     "3 completed, 1 pending", None, 0, "metrics.jsonl: nl.stem is 'b', not a number"),
    ("metrics_a_folder", "trials/{done}/metrics.jsonl", "DIR", "3 completed, 1 pending", None, 0,
     "metrics.jsonl is a folder, not a file in 1 trial ({done}): no curves for them"),
    ("pending_metrics_garbage", "trials/{pending}/metrics.jsonl", b"\xff\xfe[[[\n",
     "3 completed, 1 unreadable", "unreadable: 1 trial ({pending}): metrics.jsonl line 1 is not JSON",
     0, "metrics.jsonl line 1 is not JSON"),
    ("error_a_list", "trials/{pending}/error.json", b"[1]", "3 completed, 1 error", None, 0, None),
    ("error_wrong_types", "trials/{pending}/error.json", b'{"error": [1, 2]}', "3 completed, 1 error",
     None, 0, None),
    ("error_a_folder", "trials/{pending}/error.json", "DIR", "3 completed, 1 error", None, 0, None),
    ("config_garbage", "trials/{done}/config.json", b"\x00garbage", "3 completed, 1 pending", None, 0, None),
    ("sweep_id_garbage", "sweep_id", b"\xff\xfe\x00", "3 completed, 1 pending", None, 0, None),
    ("job_id_garbage", "slurm/job_id", b"\xff\xfe\x00 ; rm -rf /", "3 completed, 1 pending",
     "SLURM job: state unknown: {root}/slurm/job_id holds no SLURM job id", 0, None),
    ("job_id_a_folder", "slurm/job_id", "DIR", "3 completed, 1 pending",
     "SLURM job: state unknown: {root}/slurm/job_id: cannot be read (Is a directory)", 0, None),
]


def _damage(root: Path, where: str, content: bytes | str) -> dict[str, str]:
    done, pending = _trials(root)
    names = {"done": done, "pending": pending, "root": str(root)}
    path = root / where.format(**names)
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if content == "DIR":
        path.mkdir()
    else:
        path.write_bytes(content.replace(b"{done}", done.encode()))
    return names


@pytest.mark.parametrize(("where", "content", "counts", "status_note", "report_code", "report_note"),
                         [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damaged_run_folder(run_dir: Path, tmp_path: Path, where: str, content, counts: str,
                            status_note: str | None, report_code: int, report_note: str | None) -> None:
    names = _damage(run_dir, where, content)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, out = invoke(["status", run_dir])
    assert code == 0 and counts in flat(out), out
    if status_note:
        assert status_note.format(**names) in flat(out), out
    else:
        assert "note:" not in out and "SLURM" not in out, out
    # the report: the readable trials, and a note (stderr and the HTML) on what was left out
    code, out = invoke(["report", run_dir, "--out", tmp_path / "r.html", "--figures", "profile"])
    assert code == report_code, out
    if report_code == 2:
        lines = [x for x in out.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith(report_note.format(**names)), lines
    elif report_note:
        assert "note: " in out and report_note.format(**names) in flat(out), out
        assert report_note.format(**names) in flat(html.unescape((tmp_path / "r.html").read_text()))
    else:
        assert "note:" not in out, out
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # status and report only read


def test_unreadable_trials_are_one_note_per_reason(run_dir: Path) -> None:
    sp = SweepPaths(run_dir)
    for tp in sp.trials.iterdir():
        (tp / "result.json").write_bytes(b"garbage")
    code, out = invoke(["status", run_dir])
    assert code == 0 and "1 pending, 3 unreadable / 4 trials" in flat(out)
    notes = [x for x in flat(out).split("note: ")[1:]]
    assert len(notes) == 1 and notes[0].startswith("unreadable: 3 trials ("), notes


def test_status_with_nothing_readable_is_one_line(run_dir: Path) -> None:
    (run_dir / "spec.yaml").write_bytes(b"\xff")
    (run_dir / "results.csv").write_bytes(b"")
    one_error(["status", run_dir], "spec.yaml is not a sweep file", "results.csv is not a results table",
              "relaunch the sweep file")


def test_report_without_any_metrics(run_dir: Path, tmp_path: Path) -> None:
    """Found by the fuzzer: no trial's metrics.jsonl readable (the finals are still there)."""
    for p in run_dir.glob("trials/*/metrics.jsonl"):
        p.unlink()
    code, out = invoke(["report", run_dir, "--out", tmp_path / "r.html", "--markdown", tmp_path / "t.md"])
    assert code == 0 and (tmp_path / "r.html").is_file() and (tmp_path / "t.md").is_file(), out


def test_results_csv_with_a_header_only(run_dir: Path) -> None:
    """Found by the fuzzer: spec.yaml cut to one byte and results.csv cut inside its header."""
    (run_dir / "spec.yaml").write_bytes(b"n")
    (run_dir / "results.csv").write_bytes((run_dir / "results.csv").read_bytes()[:55])
    code, out = invoke(["status", run_dir])
    assert code == 0 and "quickstart: / 0 trials" in flat(out) and "spec.yaml is not a sweep file" in out


def test_results_csv_as_written_with_bad_numbers(run_dir: Path, tmp_path: Path) -> None:
    """spec.yaml unreadable: the table as the last launch wrote it, its non-numbers left out."""
    import pandas as pd

    (run_dir / "spec.yaml").write_bytes(b"\xff")
    frame = pd.read_csv(run_dir / "results.csv", dtype={"trial_id": str})
    frame["final_acc"] = frame["final_acc"].astype(object)
    frame.loc[0, "final_acc"] = "x"
    frame.to_csv(run_dir / "results.csv", index=False)
    code, out = invoke(["status", run_dir])
    assert code == 0 and "results.csv: column final_acc holds values that are not numbers" in flat(out)
    code, out = invoke(["report", run_dir, "--out", tmp_path / "r.html", "--figures", "profile"])
    assert code == 0 and "column final_acc" in flat(out)


def test_garbage_result_is_recomputed_by_the_trial(tmp_path: Path, trial_cfg) -> None:
    """A result.json with wrong types is not taken as done: the trial finishes again from
    its checkpoint (nothing re-trained) and writes a valid one."""
    from mixsweep.store import TrialPaths
    from mixsweep.trial import run_trial

    cfg = trial_cfg(model={"width": 4}, train={"epochs": 1}, linearity={"probes": 16, "every": 1})
    first = run_trial(cfg, tmp_path / "t")
    paths = TrialPaths(tmp_path / "t")
    paths.result.write_text(json.dumps({**first, "final_acc": "x"}))
    assert paths.read_result_checked(cfg.trial_id) == (None, "result.json: final_acc is 'x', not a number")
    again = run_trial(cfg, tmp_path / "t")
    assert again["final_acc"] == first["final_acc"] and paths.read_result(cfg.trial_id) is not None


# --------------------------------------------------------------------------- 5, 10. datasets


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A local TCP server that accepts connections and never answers (a dead service)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    worker = threading.Thread(target=accept, daemon=True)
    worker.start()
    yield srv.getsockname()[1]
    stop.set()
    worker.join()
    for c in held:
        c.close()
    srv.close()


def test_data_prepare_missing_dataset_is_one_line(tmp_path: Path) -> None:
    one_error(["data", "prepare", "cifar10", "--root", tmp_path / "none"],
              f"cifar10 not found in {tmp_path / 'none'}", "data.download")


def test_download_with_no_server_is_one_line_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision import datasets as tvd

    monkeypatch.setattr(tvd.CIFAR10, "url", f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz")
    t0 = time.monotonic()
    one_error(["data", "prepare", "cifar10", "--root", tmp_path / "d", "--download"],
              f"could not download cifar10 into {tmp_path / 'd'}: cannot reach 127.0.0.1:",
              "Connection refused", "set data.root to its folder")
    assert time.monotonic() - t0 < 5


def test_download_from_a_silent_server_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  silent_server: int) -> None:
    """The server accepts and never answers: the download fails after the bound, not never."""
    from torchvision import datasets as tvd

    from mixsweep.data import datasets

    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT_S", 1.0)
    monkeypatch.setattr(tvd.CIFAR10, "url", f"http://127.0.0.1:{silent_server}/cifar-10-python.tar.gz")
    t0 = time.monotonic()
    one_error(["data", "prepare", "cifar10", "--root", tmp_path / "d", "--download"],
              "could not download cifar10 into", "timed out")
    took = time.monotonic() - t0
    print(f"download from a silent server: bound 1.0 s per socket operation, ended after {took:.2f} s")
    assert took < 10
    # launch's up-front download (ensure_available) goes the same way
    code, out = invoke(["launch", _sweep_file(tmp_path, data={"dataset": "cifar10", "root": str(tmp_path / "e"),
                                                              "download": True}, runs_dir=str(tmp_path / "runs"))])
    assert code == 2 and "could not download cifar10" in out and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- 6, 8. sync


def _offline_runs(root: Path, n: int) -> None:
    for i in range(n):
        d = root / "wandb" / f"offline-run-20260101_000000-r{i}"
        d.mkdir(parents=True)
        (d / f"run-r{i}.wandb").write_bytes(b":W&B")


def _fake_wandb(tmp: Path, body: str) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "wandb"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return bin_dir


def test_sync_without_the_wandb_command(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline_runs(run_dir, 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    one_error(["sync", run_dir], "the `wandb` command is not on PATH", "pip install wandb")


def test_sync_without_a_key_is_one_line(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline_runs(run_dir, 3)
    bin_dir = _fake_wandb(tmp_path, "exit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    one_error(["sync", run_dir], "cannot upload: no API key", "the offline runs stay in")


def test_sync_with_no_network_is_one_line_at_once(run_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _offline_runs(run_dir, 5)
    bin_dir = _fake_wandb(tmp_path, "sleep 1000\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    one_error(["sync", run_dir], "cannot upload: cannot reach 127.0.0.1:", "Connection refused")
    assert time.monotonic() - t0 < 5


def test_sync_to_a_silent_server_is_bounded_and_said_once(run_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          silent_server: int) -> None:
    """W&B accepts connections and never answers; every `wandb sync` hangs (with a child
    process holding its output open). Each is stopped at --timeout, the runs not yet started
    are not tried, and the failure is one line for all."""
    _offline_runs(run_dir, 6)
    bin_dir = _fake_wandb(tmp_path, f'echo "$@" >> "{tmp_path}/calls"\nsleep 1000 &\nwait\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent_server}")
    t0 = time.monotonic()
    code, out = invoke(["sync", run_dir, "--jobs", "2", "--timeout", "1.5"])
    took = time.monotonic() - t0
    print(f"sync against a silent W&B: bound --timeout 1.5 s, ended after {took:.2f} s")
    assert code == 1 and took < 8, (took, out)
    lines = [x for x in out.splitlines() if x.strip()]
    assert lines[0] == "synced 0 of 6 runs"
    assert len(lines) == 3, lines  # the two that timed out, the four not tried: a line each
    assert "failed: 2 runs (" in lines[1] and "no answer from W&B within 1.5 s (stopped)" in lines[1]
    assert "failed: 4 runs (" in lines[2] and "not tried" in lines[2]
    assert len((tmp_path / "calls").read_text().splitlines()) == 2


def test_sync_failing_the_same_way_for_every_run_says_it_once(run_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              silent_server: int) -> None:
    _offline_runs(run_dir, 5)
    bin_dir = _fake_wandb(tmp_path, 'echo "wandb: ERROR permission denied for this project" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent_server}")
    code, out = invoke(["sync", run_dir])
    lines = [x for x in out.splitlines() if x.strip()]
    assert code == 1 and lines[0] == "synced 0 of 5 runs" and len(lines) == 2, lines
    assert lines[1].startswith("failed: 5 runs (") and lines[1].endswith("permission denied for this project")


# --------------------------------------------------------------------------- 9. SLURM commands


def _with_job(root: Path, job: str = "4242") -> None:
    (root / "slurm").mkdir(exist_ok=True)
    (root / "slurm" / "job_id").write_text(job + "\n")


def test_status_with_a_job_and_no_slurm_commands(run_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _with_job(run_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, out = invoke(["status", run_dir])
    assert code == 0 and "3 completed, 1 pending / 4 trials" in out
    assert flat(out).startswith("SLURM job 4242: state unknown: scontrol not found on PATH")
    one_error(["cancel", run_dir], "cannot cancel SLURM job 4242: scontrol not found on PATH")


def test_slurm_commands_that_hang_are_bounded(run_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for cmd in ("scontrol", "squeue", "scancel", "sbatch", "sacct"):
        (bin_dir / cmd).write_text("#!/bin/sh\nexec sleep 1000\n")
        (bin_dir / cmd).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm, "TIMEOUT_S", 1.0)
    _with_job(run_dir)
    t0 = time.monotonic()
    code, out = invoke(["status", run_dir])
    took = time.monotonic() - t0
    print(f"status with a hanging scontrol: bound 1.0 s per SLURM command, ended after {took:.2f} s")
    assert code == 0 and took < 6 and "3 completed, 1 pending" in out
    assert "SLURM job 4242: state unknown: scontrol show job did not answer within 1 s" in flat(out)
    one_error(["cancel", run_dir], "cannot cancel SLURM job 4242: scontrol show job did not answer")
    with pytest.raises(slurm.SlurmError, match="sbatch --parsable x did not answer within 1 s.*squeue --me"):
        slurm._run(["sbatch", "--parsable", "x"])


def test_slurm_command_that_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/no/such/interpreter\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(slurm.SlurmError, match="scontrol"):
        slurm._run(["scontrol", "ping"])
