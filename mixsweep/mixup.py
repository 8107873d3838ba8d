"""k-point Dirichlet mixup and the losses of each mode.

Mixup: Zhang et al., arXiv 1710.09412. k-point mixup over a Dirichlet:
weights lambda ~ Dir(alpha * 1_k), one draw per example; k = 2 is classic
Beta(alpha, alpha) mixup. Unsupervised mixup consistency: ICT, Verma et al.,
arXiv 1903.03825. Mean teacher: Tarvainen & Valpola, arXiv 1703.01780.

Everything here is a pure tensor function with an explicit ``torch.Generator``;
inputs are never modified. The study: Chaudhry et al., arXiv 2210.16413.
"""

from __future__ import annotations

import math
import operator
from functools import reduce

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixsweep.names import CONSISTENCY_MODES, MODES, SUPERVISED_MIXING_MODES


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, classes) one-hot rows; a scatter (``F.one_hot`` range-checks its input: a host sync on GPU)."""
    out = torch.zeros((y.shape[0], num_classes), dtype=dtype, device=y.device)
    return out.scatter_(1, y.view(-1, 1), 1.0)


def dirichlet_weights(n: int, k: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """(n, k) float64 weights, each row ~ Dir(alpha * 1_k).

    Sampled in float64 (numpy's Dirichlet, seeded from ``generator``): in float32
    a small alpha rounds a few percent of weights to exactly 0 or 1.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
    lam = np.random.default_rng(seed).dirichlet(np.full(k, float(alpha)), size=n)
    return torch.from_numpy(lam)


def mix_draw(
    b: int, k: int, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The randomness of one k-point mixup of ``b`` examples, drawn from ``generator``.

    Returns ``(lam, perms)``: ``lam`` (b, k) float64 Dirichlet weights,
    ``perms`` (k, b) int64 with ``perms[0]`` the identity and the others
    independent random permutations. It depends on the batch size only, so a
    whole epoch can be drawn up front (``mixsweep.step``).
    """
    lam = dirichlet_weights(b, k, alpha, generator)
    perms = torch.stack(
        [torch.arange(b)] + [torch.randperm(b, generator=generator) for _ in range(k - 1)]
    )
    return lam, perms


def mix_apply(
    x: torch.Tensor, y_onehot: torch.Tensor, lam: torch.Tensor, perms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_mix_i = sum_j lam_ij x[perms_j[i]], y_mix likewise (pure tensor ops, no host sync)."""
    b, k = lam.shape
    perms = perms.to(x.device)
    w = lam.to(device=x.device, dtype=x.dtype)
    wy = lam.to(device=y_onehot.device, dtype=y_onehot.dtype)
    view_x = (b,) + (1,) * (x.dim() - 1)
    # reduce, not sum(): the same additions in the same order, without sum's leading 0
    x_mix = reduce(operator.add, (w[:, j].view(view_x) * x[perms[j]] for j in range(k)))
    y_mix = reduce(operator.add, (wy[:, j, None] * y_onehot[perms[j]] for j in range(k)))
    return x_mix, y_mix


def mix_batch(
    x: torch.Tensor, y_onehot: torch.Tensor, k: int, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-point mixup of a batch.

    Args:
        x: inputs (B, ...).
        y_onehot: targets (B, classes): one-hot labels, or any per-example
            distribution (a teacher's probabilities) to mix the same way.
        k: points per mixed example (>= 2).
        alpha: Dirichlet concentration (> 0).
        generator: a CPU ``torch.Generator``: all randomness comes from it.

    Returns:
        ``(x_mix, y_mix, lam, perms)``: x_mix_i = sum_j lam_ij x[perms_j[i]],
        y_mix likewise; ``lam`` (B, k) float64 as sampled; ``perms`` (k, B) with
        ``perms[0]`` the identity and the others independent random permutations.
    """
    lam, perms = mix_draw(x.shape[0], k, alpha, generator)
    x_mix, y_mix = mix_apply(x, y_onehot, lam, perms)
    return x_mix, y_mix, lam.to(x.device), perms.to(x.device)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def consistency_mse(student_logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """MSE between the student's softmax and a target distribution (mean over batch and classes)."""
    return F.mse_loss(F.softmax(student_logits.float(), dim=1), target_probs.float())


def ema_decay(step: int, max_decay: float) -> float:
    """min(1 - 1/(t+1), max_decay): the teacher tracks the student closely at first."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


def rampup(progress: float, length: float) -> float:
    """ICT's sigmoid-shaped ramp exp(-5 (1 - t)^2), t = progress / length, reaching 1 at ``length``."""
    if length <= 0 or progress >= length:
        return 1.0
    t = max(progress, 0.0) / length
    return math.exp(-5.0 * (1.0 - t) ** 2)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float | torch.Tensor) -> None:
    """teacher <- decay * teacher + (1 - decay) * student; buffers (BN stats) copied.

    Fused over all tensors (``torch._foreach_*``: a few kernels, not two per
    tensor). ``decay`` may be a 0-d device tensor (a captured CUDA graph reads
    it each replay); a float gives exactly the per-tensor ``lerp_`` results.
    """
    tp: list[torch.Tensor] = list(teacher.parameters())
    sp = [s.detach() for s in student.parameters()]
    if len(tp) != len(sp):
        raise ValueError("teacher and student differ in their parameters")
    if isinstance(decay, torch.Tensor):
        diff = torch._foreach_sub(sp, tp)
        torch._foreach_mul_(diff, (1.0 - decay).to(tp[0].dtype))
        torch._foreach_add_(tp, diff)
    else:
        torch._foreach_lerp_(tp, sp, 1.0 - decay)
    tb, sb = list(teacher.buffers()), list(student.buffers())
    if tb:
        torch._foreach_copy_(tb, sb)


def _given_or_drawn(
    mix: tuple[torch.Tensor, torch.Tensor] | None, b: int, k: int | None, alpha: float | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mix`` where drawn up front, else a fresh ``mix_draw`` (which needs k, alpha, generator)."""
    if mix is not None:
        return mix
    if k is None or alpha is None or generator is None:
        raise ValueError("a mixing mode needs k, alpha and a generator (or a mix drawn up front)")
    return mix_draw(b, k, alpha, generator)


def mixup_losses(
    mode: str,
    student: nn.Module,
    teacher: nn.Module | None,
    x: torch.Tensor,
    y: torch.Tensor,
    xu: torch.Tensor | None,
    num_classes: int,
    *,
    k: int | None,
    alpha: float | None,
    unsup_weight: float | torch.Tensor,
    generator: torch.Generator | None,
    mix_sup: tuple[torch.Tensor, torch.Tensor] | None = None,
    mix_unsup: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The losses of one step. Returns ``{"loss", "sup", "unsup"}`` (unsup is 0 where unused).

    ``unsup_weight`` is the consistency weight already multiplied by the ramp.
    ``mix_sup`` / ``mix_unsup``: ``(lam, perms)`` drawn up front (``mix_draw``);
    where given, ``generator`` is not used for that mix.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mixup mode {mode!r}; allowed: {', '.join(MODES)}")
    if mode in SUPERVISED_MIXING_MODES:
        mix = _given_or_drawn(mix_sup, x.shape[0], k, alpha, generator)
        xm, ym = mix_apply(x, one_hot(y, num_classes, x.dtype), *mix)
        sup = soft_cross_entropy(student(xm), ym)
    else:
        sup = F.cross_entropy(student(x).float(), y)
    unsup = torch.zeros((), device=x.device)
    if mode in CONSISTENCY_MODES:
        if teacher is None or xu is None:
            raise ValueError(f"mode {mode!r} needs a teacher and an unlabeled batch")
        with torch.no_grad():
            p_teacher = F.softmax(teacher(xu).float(), dim=1)
        if mode == "mt":  # the control: same teacher, ramp and loss, no mixing
            unsup = consistency_mse(student(xu), p_teacher)
        else:
            mix = _given_or_drawn(mix_unsup, xu.shape[0], k, alpha, generator)
            xum, target = mix_apply(xu, p_teacher, *mix)
            unsup = consistency_mse(student(xum), target)
    return {"loss": sup + unsup_weight * unsup, "sup": sup.detach(), "unsup": unsup.detach()}
