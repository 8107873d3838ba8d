"""A sweep whose trials fit no node stops with one line before anything starts
(mixsweep.placement): the pure decision, and `launch` on this machine."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_launch import ENV, write_sweep
from typer.testing import CliRunner

from mixsweep import placement
from mixsweep.cli import app
from mixsweep.placement import Need, PlacementError, check_cluster, check_slurm, fits, problem
from mixsweep.spec_errors import SpecError
from mixsweep.spec_slurm import SlurmConfig

CPU2 = {"CPU": 2.0, "GPU": 0.0, "memory": 1e9}
GPU_NODE = {"CPU": 8.0, "GPU": 2.0}


def test_fits_counts_cpus_gpus_and_cuda() -> None:
    assert fits(Need(2, 0), CPU2) and not fits(Need(3, 0), CPU2)
    assert not fits(Need(1, 0.5), CPU2) and fits(Need(1, 0.5), GPU_NODE)
    assert not fits(Need(1, 0, cuda=True), CPU2)  # device cuda needs a GPU even at 0 GPUs asked
    assert fits(Need(1, 0, cuda=True), GPU_NODE)
    assert fits(Need(8, 2), GPU_NODE) and not fits(Need(8, 2.5), GPU_NODE)
    assert not fits(Need(1, 0), {})  # a node with no resources (ray.nodes() of a dead node)


def test_problem_is_none_when_any_node_fits() -> None:
    assert problem(Need(4, 1), [CPU2, GPU_NODE], "10.0.0.1:6379") is None
    assert problem(Need(2, 0), [CPU2]) is None


@pytest.mark.parametrize(
    ("need", "words"),
    [
        (Need(4, 0), ["resources.cpus_per_trial is 4", "this machine has 2 CPUs", "at most 2"]),
        (Need(1, 1), ["resources.gpus_per_trial is 1", "has no GPU", "to 0"]),
        (Need(1, 0, cuda=True), ["train.device is cuda", "no CUDA GPU", "cpu or auto"]),
    ],
)
def test_problem_on_this_machine_names_the_key_and_the_fix(need: Need, words: list[str]) -> None:
    msg = problem(need, [CPU2])
    assert msg is not None and "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_problem_on_a_cluster_names_the_need_and_what_the_nodes_have() -> None:
    msg = problem(Need(4, 0.5), [CPU2, CPU2, {"CPU": 4.0, "GPU": 0.0}], "10.0.0.1:6379")
    assert msg == ("one trial needs 4 CPUs and 0.5 GPUs but no node of the Ray cluster at "
                   "10.0.0.1:6379 has that (alive nodes: 2 with 2 CPUs and 0 GPUs; 1 with 4 CPUs "
                   "and 0 GPUs); lower resources.cpus_per_trial / resources.gpus_per_trial (or set "
                   "train.device to auto), or give the cluster bigger nodes")
    cuda = problem(Need(1, 0, cuda=True), [CPU2], "h:1")
    assert cuda is not None and "a GPU (train.device is cuda)" in cuda


def test_check_cluster_reads_alive_nodes_only() -> None:
    nodes = [{"Alive": False, "Resources": GPU_NODE}, {"Alive": True, "Resources": CPU2}]
    with pytest.raises(PlacementError) as err:
        check_cluster(Need(1, 1), nodes, "h:1")
    assert "alive nodes: 1 with 2 CPUs and 0 GPUs" in str(err.value)
    assert isinstance(err.value, SpecError)  # the CLI's user errors: one line, exit 2
    check_cluster(Need(1, 1), [{**nodes[0], "Alive": True}], "h:1")


def test_check_slurm_names_the_slurm_keys() -> None:
    """One rule with the sweep file's (spec_slurm.node_problems): more CPUs than a node has is
    the file's own line; train.device cuda on nodes without a GPU is launch's."""
    check_slurm(Need(4, 0.25), SlurmConfig(cpus_per_node=64, gpus_per_node=8))
    with pytest.raises(PlacementError, match=r"slurm.cpus_per_node, slurm.gpus_per_node"):
        check_slurm(Need(4, 0, cuda=True), SlurmConfig(cpus_per_node=64, gpus_per_node=0))
    with pytest.raises(PlacementError, match=r"resources.cpus_per_trial: 4 is more than "
                                             r"slurm.cpus_per_node 2: no node can run a trial"):
        check_slurm(Need(4, 0), SlurmConfig(cpus_per_node=2, gpus_per_node=0))


def test_need_of_a_sweep(tmp_path: Path) -> None:
    from mixsweep.expand import expand
    from mixsweep.spec_yaml import load_spec

    spec = load_spec(write_sweep(tmp_path, resources={"cpus_per_trial": 2, "gpus_per_trial": 0.5}))
    assert Need.of(spec, expand(spec)) == Need(2, 0.5, cuda=False)
    spec = load_spec(write_sweep(tmp_path, train__device="cuda"))
    assert Need.of(spec, expand(spec)).cuda


def _refused(tmp_path: Path, path: Path, expected: str) -> None:
    result = CliRunner().invoke(app, ["launch", str(path)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_local_launch_wanting_more_cpus_than_here_exits_2_at_once(tmp_path: Path) -> None:
    """Before: Ray waited for ever at "starting Ray". Now one line, exit 2, nothing written,
    well within 30 s (a process start and the sweep file: ~1-2 s)."""
    cpus = placement.local_cpus() + 1
    path = write_sweep(tmp_path, resources={"cpus_per_trial": cpus},
                       runs_dir=str(tmp_path / "runs"))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mixsweep.cli", "launch", str(path)],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (f"error: resources.cpus_per_trial is {cpus} but this machine has "
                           f"{cpus - 1} CPU{'s' if cpus != 2 else ''}: no trial could start; set "
                           f"resources.cpus_per_trial to at most {cpus - 1}\n")
    assert proc.stdout == "" and not (tmp_path / "runs").exists()
    assert elapsed < 30, elapsed


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.mark.skipif(not _no_cuda(), reason="this machine has a GPU")
def test_local_launch_wanting_a_gpu_without_one_exits_2(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path, resources={"cpus_per_trial": 1, "gpus_per_trial": 1})
    _refused(tmp_path, path, "resources.gpus_per_trial is 1 but this machine has no GPU")


@pytest.mark.skipif(not _no_cuda(), reason="this machine has a GPU")
def test_local_launch_with_device_cuda_without_cuda_exits_2(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path, train__device="cuda")
    _refused(tmp_path, path, "train.device is cuda but this machine has no CUDA GPU")


def test_slurm_sweep_with_device_cuda_and_no_gpus_is_refused_at_dry_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(More CPUs or GPUs than slurm.*_per_node is the sweep file's own check, in spec.py.)"""
    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path, train__device="cuda", slurm={"time": "10", "cpus_per_node": 2})
    result = CliRunner().invoke(app, ["launch", str(path), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: one trial needs 1 CPU and a GPU (train.device is "
                                    "cuda) but a node of the SLURM job has 2 CPUs and 0 GPUs")
    assert len(result.output.splitlines()) == 1 and not (tmp_path / "runs").exists()
