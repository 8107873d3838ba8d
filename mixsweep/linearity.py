"""Per-layer nonlinearity along interpolation paths (DESIGN.md, Definitions).

For probe tuples (x_1..x_k) with fixed Dirichlet weights lambda, at a layer h:

    r  = h(sum_j l_j x_j) - sum_j l_j h(x_j)          interpolation residual
    s  = sum_j l_j ||h(x_j) - sum_i l_i h(x_i)||^2    spread of the endpoints
    NL = sum ||r||^2 / sum s                           (ratio of sums over tuples)

NL is 0 for affine maps and invariant to h -> c*h + b. The centred cosine
cos = mean cosine(h(mix) - mu, sum_j l_j h(x_j) - mu), mu = mean endpoint
activation, is reported beside it.

Layers are named by the model (``model.probe_layers``: name -> submodule path);
the special paths ``"output"`` and ``"softmax"`` mean the model's output and
its softmax.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn

from mixsweep.mixup import dirichlet_weights

OUTPUT, SOFTMAX = "output", "softmax"


def _layer_paths(model: nn.Module, layers: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    declared: Mapping[str, str] = getattr(model, "probe_layers", {})
    if layers is None:
        if not declared:
            raise ValueError("the model names no probe_layers; pass layers= explicitly")
        return dict(declared)
    if isinstance(layers, Mapping):
        return dict(layers)
    return {name: declared.get(name, name) for name in layers}


class _Capture:
    """Forward hooks that keep each named submodule's output (flattened, float64)."""

    def __init__(self, model: nn.Module, paths: dict[str, str]):
        modules = dict(model.named_modules())
        self.out: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, path in paths.items():
            if path in (OUTPUT, SOFTMAX):
                continue
            if path not in modules:
                raise ValueError(f"probe layer {name!r}: no submodule {path!r} in the model")
            self.handles.append(modules[path].register_forward_hook(self._hook(name)))
        self.paths = paths

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.out[name] = output.detach().flatten(1).double()

        return hook

    def run(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.out = {}
        y = model(x).detach().flatten(1).double()
        for name, path in self.paths.items():
            if path == OUTPUT:
                self.out[name] = y
            elif path == SOFTMAX:
                self.out[name] = F.softmax(y, dim=1)
        return self.out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def layer_stats(
    model: nn.Module,
    probes: torch.Tensor,
    layers: Sequence[str] | Mapping[str, str] | None = None,
    k: int = 2,
    alpha: float = 1.0,
    seed: int = 0,
    chunk: int = 256,
) -> dict[str, dict[str, float]]:
    """``{"nl": {layer: NL}, "cos": {layer: centred cosine}}`` on the probe set.

    Tuples: tuple i mixes probe i with probes at k-1 fixed random permutations;
    weights ~ Dir(alpha) drawn from ``seed``. Runs in eval mode, no grad; the
    model's train/eval mode is restored afterwards.
    """
    n = probes.shape[0]
    g = torch.Generator().manual_seed(seed)
    lam = dirichlet_weights(n, k, alpha, g).to(probes.device)  # float64
    perms = torch.stack([torch.arange(n)] + [torch.randperm(n, generator=g) for _ in range(k - 1)])
    perms = perms.to(probes.device)
    paths = _layer_paths(model, layers)
    was_training = model.training
    model.eval()
    cap = _Capture(model, paths)
    try:
        # pass 1: mu, the mean endpoint activation (every probe is an endpoint)
        mu: dict[str, torch.Tensor] = {}
        for i in range(0, n, chunk):
            for name, h in cap.run(model, probes[i : i + chunk]).items():
                mu[name] = mu.get(name, 0) + h.sum(0)
        mu = {name: v / n for name, v in mu.items()}
        res = dict.fromkeys(paths, 0.0)
        spread = dict.fromkeys(paths, 0.0)
        cos = dict.fromkeys(paths, 0.0)
        # pass 2: the tuples
        for i in range(0, n, chunk):
            sl = slice(i, i + chunk)
            w = lam[sl]
            ends = [cap.run(model, probes[perms[j, sl]]) for j in range(k)]
            xw = w.to(probes.dtype)
            view = (-1, *[1] * (probes.dim() - 1))
            x_mix = reduce(operator.add, (xw[:, j].view(view) * probes[perms[j, sl]] for j in range(k)))
            mixed = cap.run(model, x_mix)
            for name in paths:
                interp = sum(w[:, j, None] * ends[j][name] for j in range(k))
                r = mixed[name] - interp
                res[name] += float((r * r).sum())
                spread[name] += float(
                    sum((w[:, j] * ((ends[j][name] - interp) ** 2).sum(1)).sum() for j in range(k))
                )
                cos[name] += float(
                    F.cosine_similarity(mixed[name] - mu[name], interp - mu[name], dim=1, eps=1e-12).sum()
                )
    finally:
        cap.close()
        model.train(was_training)
    nl = {name: res[name] / spread[name] if spread[name] > 0 else float("nan") for name in paths}
    return {"nl": nl, "cos": {name: cos[name] / n for name in paths}}


def layer_nonlinearity(
    model: nn.Module,
    probes: torch.Tensor,
    layers: Sequence[str] | Mapping[str, str] | None = None,
    k: int = 2,
    alpha: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """NL per probed layer (lower = more linear; 0 for affine layers)."""
    return layer_stats(model, probes, layers, k=k, alpha=alpha, seed=seed)["nl"]


def probe_set(test_x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed subset of ``n`` test examples (all of them if fewer)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test_x), generator=g)[: min(n, len(test_x))]
    return test_x[idx.sort().values]
