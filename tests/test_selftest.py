"""``mixsweep selftest`` (mixsweep/selftest.py, selftest_train.py) on CPU.

The whole selftest runs once through the CLI with two checks made to fail (a wrong
loss in mode sup, a runs folder that is a file): every row is printed, exit code 1,
and exactly the broken checks are named. The graph-vs-eager comparison is a pure
function tested on records that differ; the graph path itself runs with torch.cuda's
graph and stream calls faked (as tests/test_step.py does). The preflight, --json, the
GPU-memory arithmetic and W&B's modes are tested apart (each in seconds).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from mixsweep import cli
from mixsweep import selftest as st
from mixsweep import selftest_train as stt
from mixsweep.names import MODES
from mixsweep.spec import parse_spec
from mixsweep.step import TrainStep

ALL_ROWS = [
    "versions", "device", *(f"mode {m}" for m in MODES), *(f"graphs {m}" for m in MODES),
    "bf16 + channels_last", "graphs bf16", "torch.compile", "step vs bare loop, batch 8",
    "step vs bare loop, batch 32", "NL probe", "memory loader", "ffcv", "dataset digits",
    "runs folder", "W&B", "GPU memory",
]


def _sweep(tmp_path: Path, runs_dir: Path, wandb: str = "offline") -> Path:
    f = tmp_path / "sweep.yaml"
    f.write_text(f"name: check\ndata: {{dataset: digits}}\nmodel: {{arch: cnn, width: 8}}\n"
                 f"train: {{epochs: 1, device: cpu}}\nmixup: {{mode: [erm, both]}}\n"
                 f"runs_dir: {json.dumps(str(runs_dir))}\n"
                 f"tracking: {{wandb: {{mode: {wandb}}}}}\n")
    return f


def _invoke(args: list[str]):
    return CliRunner().invoke(cli.app, ["selftest", *args])


def _table_rows(output: str) -> dict[str, str]:
    """check -> status, from the rich table's one-line rows."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 6 and cells[2] in ("pass", "fail", "skip"):
            rows[cells[1]] = cells[2]
    return rows


def test_cpu_selftest_names_exactly_the_broken_checks(tmp_path, monkeypatch) -> None:
    """End to end through the CLI: every row; a wrong loss in one mode and a runs folder that
    is a file fail (W&B's offline run dir lies in that folder too) and nothing else does."""
    from mixsweep import engine
    from mixsweep.mixup import mixup_losses

    def wrong_in_sup(mode, *a, **k):
        out = mixup_losses(mode, *a, **k)
        return {**out, "loss": out["loss"] * 10} if mode == "sup" else out

    monkeypatch.setattr(engine, "mixup_losses", wrong_in_sup)
    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a folder")
    monkeypatch.setattr(cli.console, "width", 300)  # one table line per row
    t = time.perf_counter()
    res = _invoke(["--device", "cpu", "--sweep", str(_sweep(tmp_path, blocker))])
    print(f"full CPU selftest: {time.perf_counter() - t:.1f} s")
    assert res.exit_code == 1, res.output
    rows = _table_rows(res.stdout)
    assert list(rows) == ALL_ROWS
    assert {c for c, s in rows.items() if s == "fail"} == {"mode sup", "runs folder", "W&B"}
    assert all(rows[f"graphs {m}"] == "skip" for m in MODES)  # no CUDA: skipped, not passed
    assert res.stdout.strip().splitlines()[-1] == "selftest: FAILED: mode sup, runs folder, W&B"
    assert "is not near ln(10)" in res.stdout and "is a file, not a folder" in res.stdout


def test_preflight_in_seconds_json(tmp_path) -> None:
    """A fresh process, as a SLURM node runs it (imports included): seconds, every row passed."""
    sweep = _sweep(tmp_path, tmp_path / "runs")
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "mixsweep.cli", "selftest", "--preflight", "--json",
                          "--sweep", str(sweep)], capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - t
    print(f"preflight, fresh process: {took:.1f} s")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads(res.stdout)
    assert [r["check"] for r in rows] == ["versions", "device", "step on cpu", "dataset digits",
                                          "runs folder"]
    assert all(set(r) == {"check", "status", "figure", "detail"} for r in rows)
    assert {r["status"] for r in rows} == {"pass"}
    assert res.stderr.strip().splitlines()[-1] == "selftest: OK (5 passed, 0 skipped)"
    assert not (tmp_path / "runs").exists()  # checked, not created
    assert took < 60


def test_preflight_table_fails_on_a_runs_folder_that_is_a_file(tmp_path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("x")
    res = _invoke(["--preflight", "--sweep", str(_sweep(tmp_path, blocker))])
    assert res.exit_code == 1
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "selftest: FAILED: runs folder"
    assert lines[-2].startswith("preflight: host=") and " mixsweep=" in lines[-2]
    assert " python=" in lines[-2]


@pytest.mark.parametrize("args, says", [
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--preflight", "--sweep", "missing.yaml"], "missing.yaml"),
])
def test_bad_input_is_one_line_exit_2(args, says) -> None:
    res = _invoke(args)
    assert res.exit_code == 2
    assert says in res.output and len(res.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------- graph vs eager
def _rec(loss: float = 2.0, acc: float = 0.5, pool: float = 0.6) -> dict:
    return {"error": None, "acc": acc, "nl": {"stem_pre": 1e-14, "pool": pool},
            "loss": {"epoch 1 loss": 2.2, "epoch 2 loss": loss, "epoch 2 unsup": 2e-4}}


def test_comparison_says_plainly_when_beyond_tolerance() -> None:
    tol = stt.TOLERANCE["fp32"]
    problems, _ = stt.compare_records(_rec(), _rec(loss=2.0 * (1 + 1e-5), pool=0.6 * (1 + 1e-4)), tol)
    assert problems == []
    problems, figure = stt.compare_records(_rec(), _rec(loss=2.1, acc=0.45, pool=0.7), tol)
    assert problems == ["epoch 2 loss 2.1 vs 2", "accuracy 0.4500 vs 0.5000", "NL pool 0.7 vs 0.6"]
    assert "loss 5.0e-02" in figure
    row = stt.comparison_row("graphs sup", "the CUDA graph path", _rec(), _rec(loss=2.1), tol)
    assert row.status == "fail"
    assert row.detail.startswith("the CUDA graph path does NOT match eager beyond the tolerance")
    assert "epoch 2 loss 2.1 vs 2" in row.detail
    # bf16's looser tolerance takes what fp32 refuses; a failed run is a failed row
    assert stt.comparison_row("g", "x", _rec(), _rec(loss=2.02), stt.TOLERANCE["bf16"]).status == "pass"
    assert stt.comparison_row("g", "x", _rec(), _rec(loss=2.02), tol).status == "fail"
    broken = {**_rec(), "error": "non-finite loss (nan) at epoch 1 step 2"}
    assert "non-finite" in stt.comparison_row("g", "x", _rec(), broken, tol).detail


def _fake_graphs(monkeypatch, fail: bool = False) -> dict[str, int]:
    """torch.cuda's graph and stream calls faked on the CPU: a capture records nothing (as
    a real one does not run the step), a replay runs the captured step body once."""
    counts = {"capture": 0, "replay": 0}
    state: dict = {"capturing": False}
    real = TrainStep._device_step

    def device_step(self) -> None:
        state["step"] = self
        if not state["capturing"]:
            real(self)

    class Graph:
        def replay(self) -> None:
            counts["replay"] += 1
            real(state["step"])

    @contextlib.contextmanager
    def graph(_g):
        counts["capture"] += 1
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        state["capturing"] = True
        try:
            yield
        finally:
            state["capturing"] = False

    class Stream:
        def __init__(self, *_a) -> None:
            pass

        def wait_stream(self, _s) -> None:
            pass

    monkeypatch.setattr(TrainStep, "_device_step", device_step)
    monkeypatch.setattr(TrainStep, "_graphs_possible", lambda self: True)
    for name, value in {"CUDAGraph": Graph, "graph": graph, "Stream": Stream,
                        "stream": lambda _s: contextlib.nullcontext(),
                        "current_stream": lambda *_a: Stream(),
                        "synchronize": lambda *_a: None}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    return counts


@pytest.mark.parametrize("mode", ["erm", "both"])
def test_graph_row_with_faked_cuda_matches_eager(monkeypatch, mode: str) -> None:
    cpu, data = torch.device("cpu"), stt.digits()
    cfg = stt.mode_config(mode, cpu)
    eager = stt.train_record(cfg, data, cpu)
    counts = _fake_graphs(monkeypatch)
    row = stt.graph_row(f"graphs {mode}", cfg, data, cpu, eager)
    assert counts == {"capture": 1, "replay": 2 * stt.STEPS - 3}  # after 3 warm-up steps
    assert row.status == "pass", row.detail
    assert row.detail.startswith("the CUDA graph path matches eager within loss rel 0.001")
    print(f"graphs {mode} (faked CUDA, CPU): {row.figure}")


def test_graph_row_catches_a_graph_that_reads_stale_tables(monkeypatch) -> None:
    """A real fault of the graph path (epoch 2 replayed on epoch 1's per-epoch tables: its
    batches, lr and ramp) is far outside the tolerance, and the row says so."""
    cpu, data = torch.device("cpu"), stt.digits()
    cfg = stt.mode_config("unsup", cpu)
    eager = stt.train_record(cfg, data, cpu)
    _fake_graphs(monkeypatch)
    real = TrainStep._stage
    monkeypatch.setattr(TrainStep, "_stage", lambda self, host: None if self.table else real(self, host))
    row = stt.graph_row("graphs unsup", cfg, data, cpu, eager)
    assert row.status == "fail"
    assert "does NOT match eager" in row.detail and "epoch 2 loss" in row.detail
    assert "epoch 1 loss" not in row.detail  # epoch 1 read fresh tables: it still matches


def test_graph_row_says_when_the_graph_did_not_run(monkeypatch) -> None:
    cpu, data = torch.device("cpu"), stt.digits()
    cfg = stt.mode_config("erm", cpu)
    eager = stt.train_record(cfg, data, cpu)
    _fake_graphs(monkeypatch, fail=True)
    row = stt.graph_row("graphs erm", cfg, data, cpu, eager)
    assert row.status == "fail"
    assert row.detail == ("the CUDA graph path did not run: train.cuda_graphs: capture failed "
                          "(RuntimeError: operation not permitted when stream is capturing); "
                          "running the step eagerly")


# --------------------------------------------------------------------------- sweep checks
def _spec(tmp_path: Path, **resources) -> object:
    return parse_spec({"name": "mem", "data": {"dataset": "cifar10"},
                       "model": {"arch": ["resnet18", "cnn"]}, "train": {"batch_size": 512},
                       "mixup": {"mode": ["erm", "both"]}, "runs_dir": str(tmp_path),
                       "resources": resources})


def test_gpu_memory_fit_against_the_share(tmp_path, monkeypatch) -> None:
    """The arithmetic of the GPU-memory rows (the peak measurement itself needs a GPU)."""
    from mixsweep.expand import expand

    gib = 2**30
    props = SimpleNamespace(total_memory=80 * gib)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: props)
    measured: list[tuple[str, str]] = []

    def peak(cfg, _device):
        measured.append((cfg.model.arch, cfg.mixup.mode))
        return (30 if cfg.model.arch == "resnet18" else 10) * gib

    monkeypatch.setattr(st, "peak_bytes", peak)
    cuda = torch.device("cuda", 0)
    spec = _spec(tmp_path, gpus_per_trial=0.25)
    rows = st.memory_rows(spec, expand(spec), cuda)
    assert sorted(measured) == [("cnn", "both"), ("resnet18", "both")]  # the heaviest mode
    by = {r.check: r for r in rows}
    assert by["GPU memory cnn"].status == "pass"  # 4 x 10.5 GiB fit in 80
    bad = by["GPU memory resnet18"]
    assert bad.status == "fail" and "cannot fit side by side" in bad.detail
    assert "4 trials per GPU (gpus_per_trial 0.25) need 122.0 GiB of 80 GiB" in bad.detail
    spec = _spec(tmp_path, gpus_per_trial=0.5)
    assert {r.status for r in st.memory_rows(spec, expand(spec), cuda)} == {"pass"}
    spec = _spec(tmp_path)
    assert st.memory_rows(spec, expand(spec), cuda)[0].detail.startswith("skipped: gpus_per_trial is 0")
    assert st.memory_rows(spec, expand(spec), torch.device("cpu"))[0].detail == "skipped: no GPU"


def test_wandb_row_per_mode(tmp_path, monkeypatch) -> None:
    from mixsweep import tracking

    def spec(mode: str):
        return parse_spec({"name": "w", "runs_dir": str(tmp_path / "runs"),
                           "tracking": {"wandb": {"mode": mode}}})

    row = st.wandb_row(spec("offline"))
    assert row.status == "pass" and row.figure.startswith("offline, wandb ")
    assert st.wandb_row(spec("disabled")).status == "skip"
    monkeypatch.setattr(tracking, "online_problem", lambda timeout: "no API key: run `wandb login`")
    row = st.wandb_row(spec("online"))
    assert row.status == "fail" and row.detail.startswith("no API key")
    monkeypatch.setattr(tracking, "online_problem", lambda timeout: None)
    assert st.wandb_row(spec("online")).status == "pass"


def test_data_rows_never_download(tmp_path) -> None:
    """A dataset missing from the root fails (or, with data.download, is left to launch)."""
    from mixsweep.expand import expand

    for download, status in ((False, "fail"), (True, "skip")):
        spec = parse_spec({"name": "d", "data": {"dataset": "svhn", "root": str(tmp_path),
                                                 "download": download}})
        rows = {r.check: r for r in st.data_rows(expand(spec))}
        assert rows[f"data root {tmp_path}"].status == "pass"
        assert rows["dataset svhn"].status == status
    assert list(tmp_path.iterdir()) == []
