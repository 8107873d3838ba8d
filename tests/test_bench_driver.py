"""The driver bench mode (issue 18): mixsweep's own Tuner with a trivial trainable; and the
benchmarks' Ray runs go through tune_bench.py (only tune.py, tune_bench.py and ray_access.py import ray)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

from mixsweep import bench_driver
from mixsweep.tune_bench import local_ray, run_functions

PKG = Path(bench_driver.__file__).parent


def test_trivial_sweep_returns_finite_figures():
    res = bench_driver.measure(3, epochs=2, num_cpus=1)
    assert res["trials"] == res["trials_ok"] == 3
    assert res["reports_per_trial"] == 3
    assert res["state_saves"] >= 1  # Tune saves its state at least once, at the end
    assert res["state_write_seconds"] <= res["state_save_seconds"]
    for key in ("fit_seconds", "overhead_seconds_per_trial", "state_save_seconds",
                "state_save_share", "driver_rss_mb_start", "driver_rss_mb_end",
                "driver_rss_mb_peak"):
        assert math.isfinite(res[key]) and res[key] >= 0, key
    assert 0 < res["driver_rss_mb_start"] <= res["driver_rss_mb_peak"]
    assert res["driver_rss_mb_end"] <= res["driver_rss_mb_peak"]
    assert 0 <= res["state_save_share"] < 1
    assert math.isclose(res["overhead_seconds_per_trial"], res["fit_seconds"] / 3, abs_tol=0.01)


def test_run_functions_keeps_order_and_marks_failures():
    # dict: a function the workers can import (a test module's they cannot); dict(None) fails
    with local_ray(1):
        out = run_functions(dict, [{"x": 4}, None, {"x": 10}], reuse_actors=True)
    assert [r and r["x"] for r in out] == [4, None, 10]


def test_only_the_ray_layer_imports_ray():
    importers = set()
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(path.relative_to(PKG).as_posix())
    assert importers == {"tune.py", "tune_bench.py", "ray_access.py"}
