"""`mixsweep bench --json --quick` prints valid JSON with the ratio keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mixsweep.cli import app


def test_bench_loader_part_json():
    res = CliRunner().invoke(app, ["bench", "--json", "--quick", "--only", "loader"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    loader = out["loader"]
    assert loader["memory_images_per_s"] > 0 and loader["torch_images_per_s"] > 0
    assert loader["ratio_memory_vs_torch"] == pytest.approx(
        loader["memory_images_per_s"] / loader["torch_images_per_s"], rel=0.01)
    assert out["machine"]["cores"] >= 1


def test_bench_unknown_part_exits_2():
    res = CliRunner().invoke(app, ["bench", "--only", "loader,disk"])
    assert res.exit_code == 2 and "disk" in res.output


def test_bench_gpu_part_cpu_smoke():
    """Without CUDA, `--quick --only gpu` runs the GPU part's code (the trial's engine, the bare
    loop, cuda_graphs falling back to eager, packing through Ray) on the CPU, tiny."""
    res = CliRunner().invoke(app, ["bench", "--json", "--quick", "--only", "gpu"])
    assert res.exit_code == 0, res.output
    gpu = json.loads(res.stdout)["gpu"]
    if gpu["device"] == "cpu":
        assert "CPU smoke" in gpu["note"]
        assert "train.cuda_graphs: no CUDA device" in res.stderr
    ep, small, pack = gpu["epoch"], gpu["small_batch"], gpu["packing"]
    assert ep["ratio_engine_vs_bare"] == pytest.approx(
        ep["engine_images_per_s"] / ep["bare_images_per_s"], rel=0.05)
    assert small["eager_images_per_s"] > 0 and small["ratio_graphs_vs_eager"] > 0
    assert pack["trials_1"]["aggregate_images_per_s"] > 0
    assert pack["ratio_best_vs_one_eager"] > 0 and pack["best_trials_per_gpu"] in (1, 2, 4)


@pytest.mark.slow
def test_bench_quick_all_parts_prints_json_with_ratios():
    env = {**os.environ, "WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "mixsweep.cli", "bench", "--json", "--quick"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)  # stdout is JSON only (Tune's tables go to stderr)
    assert out["loader"]["ratio_memory_vs_torch"] > 0
    assert out["trainer"]["ratio_resnet18_memory_vs_torch"] > 0
    assert 0 < out["nonlinearity"]["fraction_at_default_every"] < 1
    assert out["scheduler"]["trials_ok"] == out["scheduler"]["trials"]
    assert "overhead_seconds_per_trial" in out["scheduler"]
    assert "gpu" in out
