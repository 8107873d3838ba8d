"""k-point Dirichlet mixup: the law of the weights, the mixing, purity, the schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from mixsweep.mixup import (
    dirichlet_weights,
    ema_decay,
    ema_update,
    mix_batch,
    mixup_losses,
    one_hot,
    rampup,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_k2_weights_follow_beta(alpha: float) -> None:
    lam = dirichlet_weights(5000, 2, alpha, gen(123)).numpy()
    assert lam.dtype == np.float64
    result = stats.kstest(lam[:, 0], stats.beta(alpha, alpha).cdf)
    assert result.pvalue > 0.01, result


def test_ks_detects_a_wrong_law() -> None:
    """The KS test above has power: Beta(1, 1) draws are rejected as Beta(0.2, 0.2)."""
    lam = dirichlet_weights(5000, 2, 1.0, gen(123)).numpy()
    assert stats.kstest(lam[:, 0], stats.beta(0.2, 0.2).cdf).pvalue < 1e-6


def test_small_alpha_weights_are_rarely_exactly_0_or_1() -> None:
    # Beta(0.2, 0.2): P(1 - lam < 2**-24) ~ 2% per side, so float32 sampling would give
    # ~4% exact 0/1 weights; float64 gives ~0.07% (P(1 - lam < 2**-53)).
    lam = dirichlet_weights(20000, 2, 0.2, gen(1))
    assert lam.dtype == torch.float64
    exact = ((lam == 0) | (lam == 1)).any(dim=1).double().mean().item()
    assert exact < 0.005
    as32 = lam.float()  # what float32 sampling would produce: the check above is not vacuous
    assert ((as32 == 0) | (as32 == 1)).any(dim=1).double().mean().item() > 0.02


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_k3_marginals_are_beta(alpha: float) -> None:
    k = 3
    lam = dirichlet_weights(4000, k, alpha, gen(7)).numpy()
    for j in range(k):
        p = stats.kstest(lam[:, j], stats.beta(alpha, (k - 1) * alpha).cdf).pvalue
        assert p > 0.01, (j, p)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_rows_sum_to_one(k: int) -> None:
    lam = dirichlet_weights(1000, k, 0.3, gen(2))
    assert lam.shape == (1000, k)
    assert (lam >= 0).all()
    assert torch.allclose(lam.sum(1), torch.ones(1000, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("k", "alpha"), [(1, 1.0), (2, 0.0), (2, -1.0)])
def test_bad_k_or_alpha_raise(k: int, alpha: float) -> None:
    with pytest.raises(ValueError):
        dirichlet_weights(4, k, alpha, gen())


def test_perms_identity_first_then_permutations() -> None:
    x = torch.randn(16, 3, 4, 4)
    y = one_hot(torch.arange(16) % 10, 10)
    _, _, lam, perms = mix_batch(x, y, 4, 1.0, gen(3))
    assert perms.shape == (4, 16) and lam.shape == (16, 4)
    assert torch.equal(perms[0], torch.arange(16))
    for p in perms[1:]:
        assert torch.equal(p.sort().values, torch.arange(16))
    assert not all(torch.equal(p, perms[0]) for p in perms[1:])


@pytest.mark.parametrize("k", [2, 3])
def test_inputs_and_targets_are_the_same_convex_combination(k: int) -> None:
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 1], dtype=torch.int64)
    y = one_hot(labels, 10, torch.float64)
    x = y.clone()  # x = y: the mixed inputs must equal the mixed targets
    x_mix, y_mix, lam, perms = mix_batch(x, y, k, 0.7, gen(4))
    assert torch.equal(x_mix, y_mix)
    manual = torch.stack(
        [sum(lam[i, j] * y[perms[j, i]] for j in range(k)) for i in range(len(labels))]
    )
    torch.testing.assert_close(y_mix, manual, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_mix.sum(1), torch.ones(len(labels), dtype=torch.float64))
    # images (B, C, H, W) are mixed with the same weights and partners
    img = torch.randn(12, 3, 5, 5, dtype=torch.float64)
    img_mix, _, lam2, perms2 = mix_batch(img, y, k, 0.7, gen(4))
    assert torch.equal(lam2, lam) and torch.equal(perms2, perms)
    ref = sum(lam[:, j].view(-1, 1, 1, 1) * img[perms[j]] for j in range(k))
    torch.testing.assert_close(img_mix, ref, rtol=0, atol=1e-12)


def test_inputs_not_modified_and_seeded() -> None:
    x = torch.randn(8, 1, 4, 4)
    y = one_hot(torch.arange(8) % 3, 3)
    x0, y0 = x.clone(), y.clone()
    a = mix_batch(x, y, 3, 0.5, gen(5))
    b = mix_batch(x, y, 3, 0.5, gen(5))
    c = mix_batch(x, y, 3, 0.5, gen(6))
    assert torch.equal(x, x0) and torch.equal(y, y0)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a[2], c[2])


def test_mixup_losses_unknown_mode_raises() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="unknown mixup mode 'cutmix'"):
        mixup_losses(
            "cutmix", model, None, x, y, None, 3, k=2, alpha=1.0, unsup_weight=0.0, generator=gen()
        )


def test_erm_and_mt_ignore_k_and_alpha() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y, xu = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(6, 1, 2, 2)
    for mode in ("erm", "mt"):
        out = [
            mixup_losses(
                mode, model, teacher, x, y, xu, 3, k=k, alpha=a, unsup_weight=2.0, generator=gen(9)
            )
            for k, a in ((None, None), (2, 0.2), (8, 5.0))
        ]
        for o in out[1:]:
            assert torch.equal(o["loss"], out[0]["loss"]), mode


def test_unsup_needs_teacher_and_pool() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="needs a teacher"):
        mixup_losses(
            "unsup", model, None, x, y, None, 3, k=2, alpha=1.0, unsup_weight=1.0, generator=gen()
        )


def test_ema_decay_and_rampup_points() -> None:
    assert ema_decay(0, 0.999) == 0.0
    assert ema_decay(1, 0.999) == 0.5
    assert ema_decay(9, 0.999) == pytest.approx(0.9)
    assert ema_decay(10**6, 0.999) == 0.999
    assert rampup(0.0, 0.4) == pytest.approx(np.exp(-5.0))
    assert rampup(0.2, 0.4) == pytest.approx(np.exp(-5.0 * 0.25))
    assert rampup(0.4, 0.4) == 1.0 and rampup(0.9, 0.4) == 1.0
    assert rampup(0.1, 0.0) == 1.0  # no ramp
    values = [rampup(t / 100, 0.4) for t in range(41)]
    assert values == sorted(values)


def test_ema_update_first_step_copies_student() -> None:
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    student[1].running_mean.fill_(2.0)
    ema_update(teacher, student, ema_decay(0, 0.999))  # decay 0: teacher = student
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values(), strict=True):
        assert torch.equal(t, s)
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, 0.75)
    for b, t in zip(before, teacher.parameters(), strict=True):
        torch.testing.assert_close(t, b + 0.25)


def test_mixing_mode_without_mix_needs_k_alpha_and_generator() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    for k, alpha, g in ((None, 1.0, gen()), (2, None, gen()), (2, 1.0, None)):
        with pytest.raises(ValueError, match="needs k, alpha and a generator"):
            mixup_losses("sup", model, None, x, y, None, 3, k=k, alpha=alpha, unsup_weight=0.0,
                         generator=g)
    # a mix drawn up front stands in for all three
    lam, perms = torch.full((4, 2), 0.5, dtype=torch.float64), torch.stack([torch.arange(4)] * 2)
    out = mixup_losses("sup", model, None, x, y, None, 3, k=None, alpha=None, unsup_weight=0.0,
                       generator=None, mix_sup=(lam, perms))
    assert torch.isfinite(out["loss"])
