"""The stopping rule for adaptive seeds: add seeds only to cells whose answer is still open.

A study plans rounds of seeds (``start`` .. ``max``, e.g. 3, 5, 7, 10) and looks at every
cell's paired differences A - B after each round. Looking after every round inflates false
positives, so each look spends only part of the error rate:

* Over the looks: Kim-DeMets power spending, alpha(t) = alpha * t**rho with t = n_r / n_max
  (rho = 3 is close to O'Brien-Fleming: little alpha early, most at the end). Look r tests at
  its increment alpha(t_r) - alpha(t_{r-1}); the increments sum to alpha, so by the union
  bound the chance of any false "decided" over all looks is at most alpha, whatever the
  correlation between looks. (Exact group-sequential boundaries need the joint law of the
  looks' t statistics, which with an estimated variance at n = 3..10 has no closed form; the
  union bound is conservative because the looks are positively correlated.)
* Over the cells: Bonferroni, alpha / cells per cell, under any dependence between cells.
  The cell count is the planned family, fixed before the first look.

Per cell and look the rule is the two-sided t-interval on the paired differences at level
1 - alpha_r / cells: below zero -> "decided: A<B"; above zero -> "decided: A>B"; containing zero
and narrower than ``precision`` -> "stop: precise enough" (stopping without a claim cannot add
false positives); at the last planned round -> "stop: max seeds"; else "open".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

DECIDED_LESS = "decided: A<B"
DECIDED_MORE = "decided: A>B"
PRECISE = "stop: precise enough"
AT_MAX = "stop: max seeds"
OPEN = "open"


class SequentialError(ValueError):
    """A plan or a look the rule cannot use."""


def plan_rounds(start: int, most: int, step: int = 2) -> tuple[int, ...]:
    """Seeds per cell after each round: start, start + step, ..., most (e.g. 3, 5, 7, 10: a last
    round shorter than ``step`` is merged into the one before, as a look costs alpha)."""
    if start < 2 or most < start or step < 1:
        raise SequentialError(f"seeds: need 2 <= start <= max and step >= 1 (got start {start}, "
                              f"max {most}, step {step})")
    rounds = list(range(start, most, step))
    if len(rounds) > 1 and most - rounds[-1] < step:
        rounds.pop()
    return (*rounds, most)


@dataclass(frozen=True)
class Plan:
    """The planned looks (seeds per cell after each round), the family and the error rate."""

    rounds: tuple[int, ...]
    cells: int
    alpha: float = 0.05
    precision: float | None = None  # stop when the interval is narrower than this (and holds 0)
    rho: float = 3.0

    def __post_init__(self) -> None:
        if not self.rounds or list(self.rounds) != sorted(set(self.rounds)) or self.rounds[0] < 2:
            raise SequentialError(f"rounds {self.rounds}: give increasing seed counts, the first >= 2")
        if self.cells < 1 or not 0 < self.alpha < 1 or self.rho <= 0:
            raise SequentialError("cells >= 1, 0 < alpha < 1 and rho > 0 are needed")

    def spent(self, r: int) -> float:
        """Alpha spent by the end of look ``r`` (0-based), over all cells."""
        t = self.rounds[r] / self.rounds[-1]
        return self.alpha * t**self.rho

    def look_alpha(self, r: int) -> float:
        """Two-sided alpha of one cell's interval at look ``r``: the look's increment / cells."""
        if not 0 <= r < len(self.rounds):
            raise SequentialError(f"look {r}: the plan has looks 0..{len(self.rounds) - 1}")
        before = self.spent(r - 1) if r else 0.0
        return (self.spent(r) - before) / self.cells


@dataclass(frozen=True)
class Decision:
    """One cell's state after a look."""

    status: str
    n: int
    mean: float
    low: float
    high: float


@lru_cache(maxsize=4096)
def _crit(alpha: float, df: int) -> float:
    return float(stats.t.ppf(1 - alpha / 2, df))


def decide_one(diffs: Sequence[float], plan: Plan, r: int) -> Decision:
    """The rule for one cell at look ``r`` (0-based) given its paired differences A - B."""
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 2 or float(d.std(ddof=1)) == 0:  # no spread: nothing to build an interval from
        mean = float(d.mean()) if n else math.nan
        return Decision(AT_MAX if r == len(plan.rounds) - 1 else OPEN, n, mean, math.nan, math.nan)
    mean = float(d.mean())
    half = _crit(plan.look_alpha(r), n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if hi < 0:
        status = DECIDED_LESS
    elif lo > 0:
        status = DECIDED_MORE
    elif plan.precision is not None and hi - lo < plan.precision:
        status = PRECISE
    elif r == len(plan.rounds) - 1:
        status = AT_MAX
    else:
        status = OPEN
    return Decision(status, n, mean, lo, hi)


def decide(diffs: Mapping[str, Sequence[float]], plan: Plan, r: int) -> dict[str, Decision]:
    """The rule for every open cell at look ``r``: cell -> Decision. Cells already stopped
    should not be passed again (their seeds are not added); they still count in
    ``plan.cells``, the family fixed at planning."""
    if len(diffs) > plan.cells:
        raise SequentialError(f"{len(diffs)} cells looked at, but the plan's family has {plan.cells}")
    return {cell: decide_one(d, plan, r) for cell, d in diffs.items()}


def open_cells(decisions: Mapping[str, Decision]) -> list[str]:
    """The cells that get more seeds in the next round."""
    return [c for c, d in decisions.items() if d.status == OPEN]


def run_study(per_seed: Mapping[str, Sequence[float]], plan: Plan) -> tuple[dict[str, Decision], int]:
    """Replay the rule on fully known per-seed differences (for simulation and dry runs):
    each cell uses its first ``rounds[r]`` seeds at look r until it stops. Returns the final
    decisions and the number of seeds used, summed over cells."""
    final: dict[str, Decision] = {}
    live = dict(per_seed)
    for r, n in enumerate(plan.rounds):
        got = decide({c: list(d)[:n] for c, d in live.items()}, plan, r)
        for c, dec in got.items():
            if dec.status != OPEN:
                final[c] = dec
                live.pop(c)
        if not live:
            break
    used = sum(d.n for d in final.values())
    return final, used
