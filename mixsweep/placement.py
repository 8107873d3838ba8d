"""Can one trial of the sweep run anywhere? Decided before anything starts.

A trial that asks for more CPUs or GPUs than any single node has never starts:
Ray keeps it pending for ever (the launch waits at "starting Ray", or Tune
retries it and gives up). And a trial set to ``train.device: cuda`` on a node
without a GPU fails on every retry. So ``launch`` compares what one trial needs
with what this machine has (before Ray starts) or with what each alive node of
the Ray cluster has (right after joining it) and stops with one line when no
node fits. The decision is the pure function :func:`problem`; no Ray here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mixsweep.spec_errors import SpecError
from mixsweep.spec_slurm import SlurmConfig, node_problems


class PlacementError(SpecError):
    """No node can run one trial of the sweep (reported as one line, exit 2)."""

    def __init__(self, message: str):
        super().__init__([message])


@dataclass(frozen=True)
class Need:
    """What one trial asks for: Ray resources, and a CUDA device when train.device is cuda."""

    cpus: float
    gpus: float
    cuda: bool = False

    @classmethod
    def of(cls, spec: Any, trials: Iterable[Any]) -> Need:
        res = spec.resources
        return cls(cpus=res.cpus_per_trial, gpus=res.gpus_per_trial,
                   cuda=any(str(t.train.device).startswith("cuda") for t in trials))


def _n(x: float) -> str:
    return f"{x:g}"


def _plural(x: float, what: str) -> str:
    return f"{_n(x)} {what}" + ("" if x == 1 else "s")


def fits(need: Need, node: Mapping[str, float]) -> bool:
    """Whether one node (Ray's resource dict: 'CPU', 'GPU') can run one trial."""
    cpus, gpus = node.get("CPU", 0.0), node.get("GPU", 0.0)
    return cpus >= need.cpus and gpus >= need.gpus and (gpus > 0 or not need.cuda)


def _nodes_text(nodes: Sequence[Mapping[str, float]]) -> str:
    shapes: dict[str, int] = {}
    for node in nodes:
        shape = f"{_plural(node.get('CPU', 0.0), 'CPU')} and {_plural(node.get('GPU', 0.0), 'GPU')}"
        shapes[shape] = shapes.get(shape, 0) + 1
    return "; ".join(f"{n} with {shape}" for shape, n in shapes.items())


def problem(need: Need, nodes: Sequence[Mapping[str, float]], where: str | None = None) -> str | None:
    """Why no node in ``nodes`` can run one trial (one line saying what to change); None if
    one can. ``where``: the Ray cluster's address, or None for this machine (one node)."""
    if any(fits(need, node) for node in nodes):
        return None
    if where is None:  # this machine: name the one thing that does not fit
        node = nodes[0] if nodes else {}
        cpus, gpus = node.get("CPU", 0.0), node.get("GPU", 0.0)
        if cpus < need.cpus:
            return (f"resources.cpus_per_trial is {_n(need.cpus)} but this machine has "
                    f"{_plural(cpus, 'CPU')}: no trial could start; set resources.cpus_per_trial "
                    f"to at most {_n(cpus)}")
        if gpus < need.gpus:
            return (f"resources.gpus_per_trial is {_n(need.gpus)} but this machine has "
                    f"{'no GPU' if gpus == 0 else _plural(gpus, 'GPU')}: no trial could start; "
                    f"set resources.gpus_per_trial to {'0' if gpus == 0 else f'at most {_n(gpus)}'}"
                    + (" (and train.device to cpu or auto)" if gpus == 0 else ""))
        return ("train.device is cuda but this machine has no CUDA GPU: every trial would fail; "
                "set train.device to cpu or auto")
    wants = f"{_plural(need.cpus, 'CPU')} and {_plural(need.gpus, 'GPU')}"
    if need.cuda and need.gpus == 0:
        wants = f"{_plural(need.cpus, 'CPU')} and a GPU (train.device is cuda)"
    have = f"alive nodes: {_nodes_text(nodes)}" if nodes else "no node is alive"
    return (f"one trial needs {wants} but no node of the Ray cluster at {where} has that "
            f"({have}); lower resources.cpus_per_trial / resources.gpus_per_trial "
            "(or set train.device to auto), or give the cluster bigger nodes")


def local_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a SLURM step's or taskset's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def local_gpus(need: Need) -> int:
    """CUDA devices visible here; torch (slow to import) is asked only when a trial wants one."""
    if need.gpus <= 0 and not need.cuda:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_local(need: Need, cpus: float | None = None, gpus: float | None = None) -> None:
    """Raise PlacementError when one trial cannot run on this machine (``cpus`` / ``gpus``:
    what Ray is given, default all of this machine's)."""
    node = {"CPU": float(local_cpus() if cpus is None else cpus),
            "GPU": float(local_gpus(need) if gpus is None else gpus)}
    msg = problem(need, [node])
    if msg:
        raise PlacementError(msg)


def check_cluster(need: Need, nodes: list[Mapping[str, Any]], where: str) -> None:
    """Raise PlacementError when no alive node of a Ray cluster (``ray.nodes()``) can run one trial."""
    resources = [dict(n.get("Resources") or {}) for n in nodes if n.get("Alive")]
    msg = problem(need, resources, where)
    if msg:
        raise PlacementError(msg)


def check_slurm(need: Need, slurm: SlurmConfig) -> None:
    """Raise PlacementError when one trial cannot run on one node of the sweep's SLURM job:
    the sweep file's own rule (spec_slurm.node_problems), with the trials' train.device."""
    problems = node_problems(slurm, need.cpus, need.gpus, need.cuda)
    if problems:
        raise PlacementError(problems[0])
