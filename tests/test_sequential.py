"""The adaptive-seed stopping rule: its error rate under repeated looks, by simulation."""

from __future__ import annotations

import numpy as np
import pytest

from mixsweep.sequential import (
    AT_MAX,
    DECIDED_LESS,
    DECIDED_MORE,
    OPEN,
    PRECISE,
    Plan,
    SequentialError,
    decide,
    decide_one,
    open_cells,
    plan_rounds,
    run_study,
)

CELLS = 6
STUDIES = 1000


def simulate(effect: float, rng: np.random.Generator, plan: Plan) -> tuple[float, float, float]:
    """(share of studies declaring any difference, share of cells decided in the effect's
    direction, mean seeds used per study) over STUDIES studies of CELLS cells with per-seed
    differences ~ N(effect, 1)."""
    any_decided, right, used = 0, 0, 0
    for _ in range(STUDIES):
        draws = rng.normal(effect, 1.0, size=(CELLS, plan.rounds[-1]))
        final, n = run_study({f"c{i}": draws[i] for i in range(CELLS)}, plan)
        said = [d.status for d in final.values()]
        any_decided += any(s in (DECIDED_LESS, DECIDED_MORE) for s in said)
        right += sum(s == DECIDED_MORE for s in said)
        used += n
    return any_decided / STUDIES, right / (STUDIES * CELLS), used / STUDIES


def test_plan_rounds_and_spending_sum_to_alpha():
    assert plan_rounds(3, 10) == (3, 5, 7, 10)
    assert plan_rounds(3, 11) == (3, 5, 7, 9, 11)
    assert plan_rounds(3, 3) == (3,)
    plan = Plan(plan_rounds(3, 10), cells=4)
    per_look = [plan.look_alpha(r) * plan.cells for r in range(len(plan.rounds))]
    assert sum(per_look) == pytest.approx(0.05)
    assert per_look[0] < 0.03 * 0.05 < 0.2 * 0.05 < per_look[-1]  # O'Brien-Fleming-like: little alpha early
    for bad in ((1, 10), (5, 3)):
        with pytest.raises(SequentialError):
            plan_rounds(*bad)
    with pytest.raises(SequentialError):
        Plan((5, 3), cells=1)


def test_false_positive_rate_under_repeated_looks_is_at_most_alpha():
    """No true difference, 6 cells, looks after 3, 5, 7, 10 seeds: <= 5% of studies declare one."""
    plan = Plan(plan_rounds(3, 10), cells=CELLS, precision=None)
    fpr, _, _ = simulate(0.0, np.random.default_rng(20240919), plan)
    print(f"false-positive rate (any cell decided, no true difference): {fpr:.3f}")
    assert fpr <= 0.05


def test_looking_every_round_without_spending_inflates_false_positives():
    """The naive rule (a 95% Bonferroni interval at every look) is what the spending prevents."""
    naive = Plan(plan_rounds(3, 10), cells=CELLS)
    object.__setattr__(naive, "rho", 1e-9)  # spends all alpha at the first look ...
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(STUDIES // 2):
        draws = rng.normal(0, 1, size=(CELLS, 10))
        hits += any(decide_one(draws[i, :n], naive, 0).status.startswith("decided")
                    for i in range(CELLS) for n in naive.rounds)  # ... and reuses it at every look
    print(f"naive rule, no spending: {hits / (STUDIES // 2):.3f} of studies declare a difference")
    assert hits / (STUDIES // 2) > 0.05


def test_power_on_a_known_effect_and_seeds_saved():
    """Effect = 1 sd of the differences in every cell: most cells are decided, the right way."""
    plan = Plan(plan_rounds(3, 10), cells=CELLS)
    _, right, used = simulate(1.0, np.random.default_rng(11), plan)
    _, wrong_way, _ = simulate(-1.0, np.random.default_rng(11), plan)  # DECIDED_MORE: the wrong sign
    _, fixed, _ = simulate(1.0, np.random.default_rng(11), Plan((10,), cells=CELLS))  # one look at 10
    print(f"power per cell at effect 1 sd: {right:.3f} (fixed 10 seeds, one look: {fixed:.3f}); "
          f"seeds used per study {used:.1f} of {CELLS * 10}")
    assert right > 0.25 and right > fixed - 0.1 and wrong_way < 0.005
    strong = simulate(2.0, np.random.default_rng(12), plan)
    print(f"power per cell at effect 2 sd: {strong[1]:.3f}; seeds used per study {strong[2]:.1f}")
    assert strong[1] > 0.9 and strong[2] < CELLS * 10 * 0.85  # decided early: seeds saved


def test_each_status_of_one_look():
    plan = Plan((3, 5), cells=1, precision=0.5)
    assert decide_one([-1.0, -1.1, -0.9], plan, 1).status == DECIDED_LESS
    assert decide_one([1.0, 1.1, 0.9], plan, 1).status == DECIDED_MORE
    assert decide_one([0.01, -0.01, 0.02, -0.02, 0.0], plan, 0).status == PRECISE
    assert decide_one([1.0, -1.0, 0.5], plan, 0).status == OPEN
    assert decide_one([1.0, -1.0, 0.5], plan, 1).status == AT_MAX
    got = decide({"a": [1.0, -1.0, 0.5], "b": [1.0, 1.1, 0.9, 1.0, 1.05]}, Plan((3, 5, 7), cells=2), 0)
    assert open_cells(got) == ["a"]
    with pytest.raises(SequentialError, match="family has 1"):
        decide({"a": [1.0], "b": [2.0]}, Plan((3, 5), cells=1), 0)


def test_identical_differences_decide_nothing():
    """Whole-epoch differences that happen to be equal in every seed have no spread: the rule
    builds no interval from them (open, or stop at the last look), never a decision."""
    plan = Plan((3, 5), cells=1)
    assert decide_one([-1.0, -1.0, -1.0], plan, 0).status == OPEN
    assert decide_one([-1.0] * 5, plan, 1).status == AT_MAX
