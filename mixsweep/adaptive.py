"""Adaptive seeds: launch a sweep in rounds, adding seeds only to the cells still open.

A sweep with ``seeds: {start, max, step, until: {contrast, metric, at, precision, alpha}}``
(mixsweep.spec_seeds) runs, in its one run folder:

1. round 1: every cell (a grid point of the other axes) x both arms of the contrast x
   seeds 0..start-1 (both arms the same seeds, so they pair);
2. after each round, the paired difference A - B of the metric per cell (mixsweep.contrast's
   per-trial values) goes to the stopping rule (mixsweep.sequential.decide: alpha spent
   over the planned rounds, Bonferroni over the cells);
3. the next round adds ``step`` seeds only to the cells still open, until none is open or
   the last planned round (``max`` seeds) is done.

Every round is recorded in runs/<sweep>/rounds.json (atomically). A relaunch replays the
rounds from round 1: finished trials are kept (the runner skips them) and the decisions
already made are recomputed from the same trials, so they come out the same; the first
round with unfinished trials goes on where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixsweep.sequential import Decision, Plan, decide, open_cells, plan_rounds
from mixsweep.spec import SweepSpec, TrialConfig
from mixsweep.spec_errors import SpecError
from mixsweep.spec_seeds import AdaptiveSeeds, Until
from mixsweep.store import SweepPaths, atomic_write_json, read_json

Runner = Callable[[list[TrialConfig]], Any]  # runs trials; returns an outcome with ``.done``
Say = Callable[[str], None]


class AdaptiveError(SpecError):
    """An adaptive sweep the rounds cannot run (reported as one line, exit 2)."""

    def __init__(self, message: str):
        super().__init__([message])


@dataclass(frozen=True)
class Cell:
    """One cell of the contrast: its label and each arm's trials (one per seed)."""

    key: str
    a: tuple[TrialConfig, ...]
    b: tuple[TrialConfig, ...]

    def trials(self, seeds: int) -> list[TrialConfig]:
        """Both arms' trials of seeds 0..seeds-1."""
        return [t for t in (*self.a, *self.b) if t.seed < seeds]


@dataclass
class Rounds:
    """What the rounds did: the record written to rounds.json, and the last runner outcome."""

    record: dict[str, Any]
    outcome: Any = None
    trials: list[TrialConfig] = field(default_factory=list)  # every trial run so far

    @property
    def done(self) -> bool:
        return self.record["state"] == "done"


# --------------------------------------------------------------------------- the plan


def seeds_of(spec: SweepSpec) -> AdaptiveSeeds:
    if spec.adaptive is None:
        raise AdaptiveError(f"{spec.name}: seeds is a list (the fixed design), not adaptive")
    return spec.adaptive


def plan_cells(spec: SweepSpec, trials: list[TrialConfig]) -> tuple[Any, list[Cell]]:
    """The contrast and its cells over the worst-case trials (mixsweep.contrast's own
    pairing: an axis an arm ignores, like erm's k, matches every value of the other arm)."""
    import pandas as pd

    from mixsweep.contrast import ContrastError, cells, parse_contrast

    until = seeds_of(spec).until
    frame = pd.DataFrame([{**t.flat(), "trial_id": t.trial_id, "status": "pending",
                           "sweep": spec.name} for t in trials])
    try:
        c = parse_contrast(until.contrast, frame)
    except ContrastError as err:
        raise AdaptiveError(f"seeds.until.contrast: {err}") from None
    by_id = {t.trial_id: t for t in trials}
    out = []
    for label, rows_a, rows_b in cells(frame, c):
        key = ", ".join(f"{k.split(' (')[0]}={v}" for k, v in label.items()) or "all"
        arm = (tuple(sorted((by_id[i] for i in rows["trial_id"]), key=lambda t: t.seed))
               for rows in (rows_a, rows_b))
        out.append(Cell(key, *arm))
    if not out:
        raise AdaptiveError(f"seeds.until.contrast: no cell holds both {c.a} and {c.b} trials")
    return c, out


def check_metric(until: Until, trials: list[TrialConfig]) -> None:
    """An ``nl_<layer>`` metric must name a probe layer of every trial's model."""
    layer = until.metric.removeprefix("nl_")
    if until.metric in ("acc", "ett", "nl_mid"):
        return
    from mixsweep.models import build_model

    for arch, depth in sorted({(t.model.arch, t.model.depth) for t in trials}):
        model = build_model(arch, 3, 10, 32, width=4, depth=depth)
        names = [str(x) for x in getattr(model, "probe_layers")]  # noqa: B009  (nn.Module attributes are untyped)
        if layer not in names:
            shown = ", ".join(f"nl_{x}" for x in names)
            raise AdaptiveError(f"seeds.until.metric {until.metric!r}: {arch} (depth {depth}) has "
                                f"no layer {layer}; use nl_mid or one of {shown}")


def make_plan(spec: SweepSpec, n_cells: int) -> Plan:
    s = seeds_of(spec)
    return Plan(plan_rounds(s.start, s.max, s.step), n_cells, alpha=s.until.alpha,
                precision=s.until.precision)


def plan_lines(spec: SweepSpec, trials: list[TrialConfig]) -> list[str]:
    """--dry-run: the planned rounds and the worst case (every cell to max seeds)."""
    s = seeds_of(spec)
    _, cells = plan_cells(spec, trials)
    plan = make_plan(spec, len(cells))
    first = len(_union(cells, {c.key: s.start for c in cells}))
    return [
        f"adaptive seeds: {s.until.contrast}, {s.until.metric} at {s.until.at}; "
        f"{len(cells)} cells; rounds of seeds per open cell: "
        + ", ".join(map(str, plan.rounds)),
        f"round 1: {first} trials; worst case (every cell to {s.max} seeds): {len(trials)} "
        f"trials (the table above); alpha {s.until.alpha} spent over the rounds"
        + (f", precision {s.until.precision}" if s.until.precision is not None else ""),
    ]


def _union(cells: Iterable[Cell], seeds: dict[str, int]) -> set[str]:
    return {t.trial_id for c in cells for t in c.trials(seeds.get(c.key, 0))}


# --------------------------------------------------------------------------- one look


def metric_column(until: Until) -> str:
    """The column of mixsweep.contrast.trial_values that holds the metric."""
    if until.metric == "acc":
        return "final_acc"
    if until.metric == "ett":
        return "ett"
    return f"{until.at}.{until.metric.removeprefix('nl_')}"


def cell_diffs(root: Path, until: Until, cells: list[Cell], seeds: int) -> dict[str, list[float]]:
    """Each cell's paired differences A - B of seeds 0..seeds-1, from the run folder (NaN
    where a trial failed or has no value: the rule drops it)."""
    from mixsweep.contrast import trial_values
    from mixsweep.report_data import ReportError, load
    from mixsweep.report_tables import early_epoch

    try:
        data = load([root], by=None)
    except ReportError as err:
        raise AdaptiveError(str(err)) from None
    epoch = early_epoch(data) if until.at == "early" else None
    frame = trial_values(data, epoch)
    col = metric_column(until)
    if col not in frame:
        shown = ", ".join(f"nl_{x}" for x in data.layers) or "none"
        raise AdaptiveError(f"seeds.until.metric {until.metric!r}: no such layer in these "
                            f"trials; layers: {shown}, or nl_mid")
    values = dict(zip(frame["trial_id"].astype(str), frame[col].astype(float), strict=True))
    out = {}
    for cell in cells:
        a = {t.seed: values.get(t.trial_id, math.nan) for t in cell.a if t.seed < seeds}
        b = {t.seed: values.get(t.trial_id, math.nan) for t in cell.b if t.seed < seeds}
        out[cell.key] = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    return out


def _entry(r: int, seeds: int, decisions: dict[str, Decision]) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return round(x, 6) if math.isfinite(x) else None

    return {"round": r + 1, "seeds": seeds,
            "cells": {k: {"status": d.status, "n": d.n, "mean": num(d.mean), "low": num(d.low),
                          "high": num(d.high)} for k, d in decisions.items()}}


# --------------------------------------------------------------------------- the rounds


def run_rounds(spec: SweepSpec, trials: list[TrialConfig], run: Runner, *,
               say: Say = print) -> Rounds:
    """Run the sweep in rounds with ``run`` (the trials so far -> an outcome with ``.done``;
    ``launch`` passes mixsweep.tune.run_sweep), recording each round in rounds.json.
    ``trials``: the worst-case expansion (every seed 0..max-1). Stops early, state
    "interrupted", when a round's trials did not all finish (a relaunch goes on)."""
    t0 = time.perf_counter()
    s = seeds_of(spec)
    c, cells = plan_cells(spec, trials)
    plan = make_plan(spec, len(cells))
    paths = SweepPaths.of(spec.runs_dir, spec.name)
    before = read_json(paths.rounds)
    if isinstance(before, dict) and before.get("rounds"):
        say(f"resuming: rounds.json recorded round {before.get('round')} ({before.get('state')}); "
            "the recorded rounds are recomputed from their finished trials")
    record: dict[str, Any] = {
        "contrast": str(c), "metric": s.until.metric, "at": s.until.at,
        "plan": {"rounds": list(plan.rounds), "cells": plan.cells, "alpha": plan.alpha,
                 "precision": plan.precision},
        "round": 0, "state": "running", "open": [], "seeds": {}, "trials": 0, "rounds": [],
    }
    seeds = {cell.key: 0 for cell in cells}
    live = [cell.key for cell in cells]
    result = Rounds(record)
    for r, n in enumerate(plan.rounds):
        seeds.update({k: n for k in live})
        ids = _union(cells, seeds)
        result.trials = [t for t in trials if t.trial_id in ids]
        record.update(round=r + 1, state="running", open=list(live), seeds=dict(seeds),
                      trials=len(result.trials))
        atomic_write_json(paths.rounds, record)
        say(f"round {r + 1}/{len(plan.rounds)}: {len(live)} open cell(s) at {n} seeds; "
            f"{len(result.trials)} trials so far")
        result.outcome = run(result.trials)
        if not getattr(result.outcome, "done", True):
            record["state"] = "interrupted"
            atomic_write_json(paths.rounds, record)
            return result
        open_now = [cell for cell in cells if cell.key in live]
        got = decide(cell_diffs(paths.root, s.until, open_now, n), plan, r)
        record["rounds"].append(_entry(r, n, got))
        live = open_cells(got)
        if not live:
            break
    record.update(state="done", open=[])
    atomic_write_json(paths.rounds, record)
    say(f"adaptive seeds done after {record['round']} round(s): {len(result.trials)} trials "
        f"(fixed design at {s.max} seeds: {len(trials)}); {time.perf_counter() - t0:.0f} s "
        "this launch")
    return result


def final_decisions(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each cell's last recorded decision (cell -> the round's entry, with its round)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in record.get("rounds", []):
        for cell, d in entry.get("cells", {}).items():
            out[cell] = {**d, "round": entry.get("round")}
    return out


def adaptive_lines(sweep_dir: str | Path, most: int = 40) -> list[str]:
    """Lines for ``mixsweep status``: the round, then one line per cell (open ones first,
    with their seeds; decided ones with their interval); [] when the sweep is not adaptive
    or has not started its rounds. At most ``most`` cell lines."""
    record = read_json(SweepPaths(Path(sweep_dir)).rounds)
    if not isinstance(record, dict) or not isinstance(record.get("plan"), dict):
        return []
    opened = record.get("open") or []
    lines = [f"adaptive seeds ({record.get('contrast')}, {record.get('metric')} at "
             f"{record.get('at')}): round {record.get('round')} of "
             f"{len(record['plan'].get('rounds', []))} ({record.get('state')}); "
             f"{len(opened)} of {record['plan'].get('cells')} cells open; "
             f"{record.get('trials')} trials so far"]
    seeds, last = record.get("seeds", {}), final_decisions(record)
    cells = [*opened, *(c for c in last if c not in opened)]
    for cell in cells[:most]:
        d = last.get(cell)
        ci = (f"A-B [{d['low']:.4g}, {d['high']:.4g}]" if d and d.get("low") is not None
              else "no interval yet")
        if cell in opened:
            lines.append(f"  {cell}: open, running {seeds.get(cell, '?')} seeds; last {ci}")
        else:
            lines.append(f"  {cell}: {d['status']} after {d['n']} seeds, {ci}")  # type: ignore[index]
    if len(cells) > most:
        lines.append(f"  ... and {len(cells) - most} more cells (runs/<sweep>/rounds.json)")
    return lines
