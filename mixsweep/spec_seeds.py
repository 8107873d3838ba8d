"""The ``seeds`` key of a sweep file: a fixed list, or adaptive seeds added in rounds.

``seeds: [0, 1, 2]`` is the fixed design. ``seeds: {start: 3, max: 10, step: 2, until:
{contrast: mixup.mode=sup:erm, metric: nl_mid, at: end, precision: 0.05, alpha: 0.05}}``
runs seeds 0..start-1 in every cell, then adds ``step`` seeds per round only to the cells
whose contrast is still open (mixsweep.adaptive, mixsweep.sequential), up to seeds
0..max-1. A trial's id does not depend on the form: seed 4 is the same trial either way.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from mixsweep.spec_fields import Float, Frozen, Int, Seed

MAX_ADAPTIVE_SEEDS = 100  # seeds per cell at most: a look beyond this buys almost nothing
# metrics the contrast computes (mixsweep.contrast): NL of one layer or the intermediate
# layers' mean, final accuracy, epochs to target (censoring-aware)
METRIC = re.compile(r"^(nl_[A-Za-z0-9_.]+|acc|ett)$")
_CONTRAST = re.compile(r"^\s*([a-z]+)\.([a-z_]+)\s*=\s*([^:=\s][^:=]*?)\s*:\s*([^:=\s][^:=]*?)\s*$")
TRIAL_AXES = ("data", "model", "train", "mixup", "linearity")


class Until(Frozen):
    """When a cell is decided: its contrast's interval excludes zero (or is narrower than
    ``precision``), under the sequential rule's error rate ``alpha``."""

    contrast: Annotated[str, Field(min_length=1)]
    metric: str = "nl_mid"
    at: Literal["end", "early", "target"] = "end"
    precision: Annotated[Float, Field(gt=0)] | None = None
    alpha: Annotated[Float, Field(gt=0, lt=0.5)] = 0.05

    @model_validator(mode="after")
    def _contrast_form(self) -> Until:
        if not METRIC.match(self.metric):
            raise ValueError(f"metric {self.metric!r}: use nl_mid, nl_<layer> (e.g. nl_block2), "
                             "acc or ett")
        if split_contrast(self.contrast) is None:
            raise ValueError(f"contrast {self.contrast!r}: write SECTION.KEY=A:B, e.g. "
                             "mixup.mode=sup:erm")
        if self.metric in ("acc", "ett") and self.at != "end":
            raise ValueError(f"at {self.at!r}: metric {self.metric} is measured at the end only")
        return self


class AdaptiveSeeds(Frozen):
    """Seeds 0..start-1 first; then ``step`` more per round in the open cells, up to max."""

    start: Annotated[Int, Field(ge=2)] = 3
    max: Annotated[Int, Field(ge=2, le=MAX_ADAPTIVE_SEEDS)]
    step: Annotated[Int, Field(ge=1)] = 2
    until: Until

    @model_validator(mode="after")
    def _order(self) -> AdaptiveSeeds:
        if self.max < self.start:
            raise ValueError(f"max {self.max} is below start {self.start} (need max >= start)")
        return self


def _kind(v: Any) -> str:
    return "adaptive[seeds]" if isinstance(v, dict | AdaptiveSeeds) else "list[int]"


# the union's tags look like pydantic's own branch tags, so an error names ``seeds.start``
SeedsField = Annotated[
    Annotated[Annotated[list[Seed], Field(min_length=1)], Tag("list[int]")]
    | Annotated[AdaptiveSeeds, Tag("adaptive[seeds]")],
    Discriminator(_kind),
]


def split_contrast(text: str) -> tuple[str, str, str] | None:
    """``"mixup.mode=sup:erm"`` -> ("mixup.mode", "sup", "erm"), or None if not that form."""
    m = _CONTRAST.match(text)
    return None if m is None else (f"{m[1]}.{m[2]}", m[3], m[4])


def _shown(v: Any) -> str:
    """A value as the results table shows it (whole floats without .0), lower case."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).lower()


def contrast_problem(until: Until, sections: dict[str, Any]) -> str | None:
    """Why the contrast is not an axis of the grid holding both values, or None.
    ``sections``: the sweep's per-trial sections (model_dump of each)."""
    axis, a, b = split_contrast(until.contrast) or ("", "", "")
    where = f"seeds.until.contrast: {until.contrast!r}"
    section, _, key = axis.partition(".")
    if section not in TRIAL_AXES or key not in sections[section]:
        return f"{where}: {axis} is not a key of the sweep (write SECTION.KEY, e.g. mixup.mode)"
    values = sections[section][key]
    if not isinstance(values, list) or len(values) < 2:
        return f"{where}: {axis} is not an axis of the grid (give it a list of values)"
    seen = [_shown(v) for v in values]
    for v in (a, b):
        if v.lower() not in seen:
            return f"{where}: {axis} has no value {v} (values: {', '.join(seen)})"
    if a.lower() == b.lower():
        return f"{where}: A and B are the same value"
    return None


def seed_list(seeds: list[int] | AdaptiveSeeds) -> list[int]:
    """Every seed a sweep may run: the list, or 0..max-1 of adaptive seeds (the worst case)."""
    return list(range(seeds.max)) if isinstance(seeds, AdaptiveSeeds) else list(seeds)
