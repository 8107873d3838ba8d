"""A sweep's trials: the product of its axes, with the keys a trial ignores collapsed.

``expand(spec)`` turns a validated ``SweepSpec`` into the list of ``TrialConfig`` (one per
trial, in a stable order), collapsing axes a mode ignores (erm and mt have no k/alpha; erm
and sup have no consistency settings; only the cnn has a width) so no trial runs twice.
Expand once per command and pass the list on: a big grid takes seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from mixsweep.names import CONSISTENCY_MODES, MIXING_MODES
from mixsweep.spec import (
    TRIAL_SECTIONS,
    DataConfig,
    LinearityConfig,
    MixupConfig,
    ModelConfig,
    SweepSpec,
    TrainConfig,
    TrialConfig,
    section_identity,
    trial_id_of,
)
from mixsweep.spec_errors import SpecError
from mixsweep.spec_rules import (
    check_data,
    data_points,
    mixup_problem,
    points,
    resolve_hint,
    resolve_target,
)


def _defaults(model: type[BaseModel], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: model.model_fields[k].default for k in keys}


def _collapse_model(m: dict[str, Any]) -> dict[str, Any]:
    """Only the cnn has a width, depth and batchnorm switch: the others keep the defaults."""
    if m["arch"] != "cnn":
        m = {**m, **_defaults(ModelConfig, ("width", "depth", "batchnorm"))}
    return m


def _collapse_train(t: dict[str, Any]) -> dict[str, Any]:
    """Adam has no momentum or nesterov; SGD without momentum has no nesterov."""
    if t["optimizer"] == "adam":
        t = {**t, **_defaults(TrainConfig, ("momentum", "nesterov"))}
    elif t["momentum"] == 0:
        t = {**t, **_defaults(TrainConfig, ("nesterov",))}
    return t


def _collapse_mixup(m: dict[str, Any]) -> dict[str, Any]:
    """Null the keys a mode ignores, so equal trials get equal ids."""
    problem = mixup_problem(m)
    if problem is not None:
        raise SpecError([problem])
    m = dict(m)
    if m["mode"] not in MIXING_MODES:
        m["k"] = m["alpha"] = None
    if m["mode"] not in CONSISTENCY_MODES:
        m["unsup_weight"] = m["ema_max_decay"] = m["rampup"] = None
    return m


def _resolved_train(t: dict[str, Any], target: float | None, hint: float | None) -> dict[str, Any]:
    return {**_collapse_train(t), "target_accuracy": target, "epoch_seconds_hint": hint}


class _Sections:
    """Each distinct section object of the grid built (and its identity computed) once."""

    def __init__(self, name: str, model: type[BaseModel]):
        self.name, self.model = name, model
        self.built: dict[Any, tuple[BaseModel, dict[str, Any]]] = {}

    def get(self, key: Any, values: Callable[..., dict[str, Any]], *args: Any
            ) -> tuple[BaseModel, dict[str, Any]]:
        """The section object (and its identity) of ``values(*args)``, built on first use."""
        if key not in self.built:
            obj = self.model(**values(*args))
            self.built[key] = (obj, section_identity(self.name, obj))
        return self.built[key]


def expand(spec: SweepSpec) -> list[TrialConfig]:
    """All trials of a sweep, in a stable order, without duplicates (trials with the same
    trial id: the first is kept)."""
    data = data_points(spec.data)
    models = [_collapse_model(m) for m in points(spec.model)]
    trains = points(spec.train)
    mixups = points(spec.mixup)
    lins = points(spec.linearity)
    models_: tuple[type[BaseModel], ...] = (DataConfig, ModelConfig, TrainConfig, MixupConfig,
                                            LinearityConfig)
    made = {name: _Sections(name, model) for name, model in zip(TRIAL_SECTIONS, models_, strict=True)}
    trials: dict[str, TrialConfig] = {}
    for (di, d), (mi, m), (ti, t), (xi, x), (li, lin) in itertools.product(
            enumerate(data), enumerate(models), enumerate(trains), enumerate(mixups),
            enumerate(lins)):
        check_data(d, t)
        target = resolve_target(t, d["dataset"])
        hint = resolve_hint(t, x["mode"])
        parts = {
            "data": made["data"].get(di, dict, d),
            "model": made["model"].get(mi, dict, m),
            "train": made["train"].get((ti, target, hint), _resolved_train, t, target, hint),
            "mixup": made["mixup"].get(xi, _collapse_mixup, x),
            "linearity": made["linearity"].get(li, dict, lin),
        }
        ident = {name: part[1] for name, part in parts.items()}
        for seed in spec.seed_list:
            tid = trial_id_of({**ident, "seed": seed})
            if tid not in trials:
                cfg = TrialConfig(**{name: part[0] for name, part in parts.items()}, seed=seed)
                cfg.__dict__["trial_id"] = tid  # the cached_property's value, computed above
                trials[tid] = cfg
    return list(trials.values())


def axes(spec: SweepSpec) -> dict[str, list[Any]]:
    """The keys that vary in the sweep file (``section.key`` -> values)."""
    out: dict[str, list[Any]] = {}
    for name in TRIAL_SECTIONS:
        for key, value in getattr(spec, name).model_dump().items():
            if isinstance(value, list) and len(value) > 1:
                out[f"{name}.{key}"] = value
    if len(spec.seed_list) > 1:
        out["seeds"] = spec.seed_list
    return out
