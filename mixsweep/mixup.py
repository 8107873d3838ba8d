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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODES = ("erm", "sup", "unsup", "both", "mt")


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return F.one_hot(y, num_classes).to(dtype)


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
    b = x.shape[0]
    lam = dirichlet_weights(b, k, alpha, generator)
    perms = torch.stack(
        [torch.arange(b)] + [torch.randperm(b, generator=generator) for _ in range(k - 1)]
    ).to(x.device)
    w = lam.to(device=x.device, dtype=x.dtype)
    wy = lam.to(device=y_onehot.device, dtype=y_onehot.dtype)
    view_x = (b,) + (1,) * (x.dim() - 1)
    x_mix = sum(w[:, j].view(view_x) * x[perms[j]] for j in range(k))
    y_mix = sum(wy[:, j, None] * y_onehot[perms[j]] for j in range(k))
    return x_mix, y_mix, lam.to(x.device), perms


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
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student; buffers (BN stats) copied."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


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
    unsup_weight: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The losses of one step. Returns ``{"loss", "sup", "unsup"}`` (unsup is 0 where unused).

    ``unsup_weight`` is the consistency weight already multiplied by the ramp.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mixup mode {mode!r}; allowed: {', '.join(MODES)}")
    if mode in ("sup", "both"):
        xm, ym, _, _ = mix_batch(x, one_hot(y, num_classes, x.dtype), k, alpha, generator)
        sup = soft_cross_entropy(student(xm), ym)
    else:
        sup = F.cross_entropy(student(x).float(), y)
    unsup = torch.zeros((), device=x.device)
    if mode in ("unsup", "both", "mt"):
        if teacher is None or xu is None:
            raise ValueError(f"mode {mode!r} needs a teacher and an unlabeled batch")
        with torch.no_grad():
            p_teacher = F.softmax(teacher(xu).float(), dim=1)
        if mode == "mt":  # the control: same teacher, ramp and loss, no mixing
            unsup = consistency_mse(student(xu), p_teacher)
        else:
            xum, target, _, _ = mix_batch(xu, p_teacher, k, alpha, generator)
            unsup = consistency_mse(student(xum), target)
    return {"loss": sup + unsup_weight * unsup, "sup": sup.detach(), "unsup": unsup.detach()}
