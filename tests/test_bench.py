"""`mixsweep bench --json --quick` prints valid JSON with the ratio keys."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

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


# --------------------------------------------------------------------------- import structure
_PKG = Path(__file__).resolve().parents[1] / "mixsweep"
# the engine, the benches, the selftest and the data package: no cycles among them, no
# private names used from outside their module, ray / wandb imported only where allowed
_OURS = ("mixsweep.trial", "mixsweep.engine", "mixsweep.step", "mixsweep.bench",
         "mixsweep.bench_gpu", "mixsweep.bench_common", "mixsweep.selftest",
         "mixsweep.selftest_train", "mixsweep.data")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in _PKG.rglob("*.py"):
        parts = path.relative_to(_PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(tree: ast.Module, mods: dict[str, ast.Module]) -> list[tuple[str, str | None]]:
    """(module, name) of every import at any depth, function-level ones included."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:  # `from mixsweep import trial` imports the module trial
                sub = f"{node.module}.{a.name}"
                found.append((sub, None) if sub in mods else (node.module, a.name))
    return found


def _ours(name: str) -> bool:
    return any(name == o or name.startswith(o + ".") for o in _OURS)


def test_engine_bench_and_data_modules_have_no_cycle_and_share_no_private_name() -> None:
    mods = _modules()
    graph = {m: {t for t, _ in _imports(tree, mods) if t in mods and t != m}
             for m, tree in mods.items()}
    for m, tree in mods.items():
        for target, name in _imports(tree, mods):
            if _ours(target) and target != m and name is not None:
                assert not name.startswith("_"), f"{m} imports the private {target}.{name}"
            if target.split(".")[0] in ("ray", "wandb") and _ours(m):
                assert m in ("mixsweep.bench", "mixsweep.bench_gpu"), f"{m} imports {target}"
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and n.module == "mixsweep" for a in n.names if _ours(f"mixsweep.{a.name}")}
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                    and n.value.id in aliases and n.attr.startswith("_")):
                raise AssertionError(f"{m} uses the private {n.value.id}.{n.attr}")

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cycles = [m for m in mods if _ours(m) and m in reach(m)]
    assert not cycles, f"import cycles through {cycles}"
    assert "mixsweep.bench_gpu" in graph["mixsweep.bench"]  # the one direction
    assert not graph["mixsweep.data.loaders"] & {"mixsweep.bench"}
    for kind in ("memory_loader", "torch_loader", "ffcv_loader"):
        assert f"mixsweep.data.{kind}" in graph["mixsweep.data.loaders"]
