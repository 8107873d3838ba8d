"""The sweep file's schema: pydantic models, ``TrialConfig`` and ``parse_spec``.

A sweep file (YAML) has the sections ``data``, ``model``, ``train``, ``mixup``,
``linearity`` (per-trial settings), ``seeds``, and the sweep-level sections
``resources``, ``tracking``, ``slurm`` (mixsweep.spec_slurm). In the per-trial sections any
scalar value may be written as a list: that key becomes a grid axis and the sweep is the
product of all axes (``mixsweep.expand`` turns a ``SweepSpec`` into its trials).

Every model is frozen and rejects unknown keys (``extra="forbid"``). Values that would be
accepted but run wrong are refused here too, one line naming the key: nan/inf and booleans
in number keys (``Int``, ``Float``), seeds outside [0, 2**32 - 1], label counts and batches
the dataset cannot give (mixsweep.spec_rules), a mode's null settings, SLURM times SLURM would
misread, a grace period as long as the job, trials larger than a node, and extra_sbatch
options that override what mixsweep renders.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from mixsweep.names import Arch, Dataset, Loader, Mode, WandbMode
from mixsweep.spec_errors import SpecError, format_errors
from mixsweep.spec_fields import CONFIG, CONTROL, Float, Frozen, Int, Seed
from mixsweep.spec_rules import check_grid, label_problem
from mixsweep.spec_seeds import AdaptiveSeeds, SeedsField, contrast_problem, seed_list
from mixsweep.spec_slurm import SlurmConfig, cluster_problems

# --------------------------------------------------------------------------- per-trial sections


def _ffcv_template(v: str) -> str:
    """data.ffcv_dir may use only {root} and {dataset}: a typo fails here, not inside a trial."""
    import string

    try:
        names = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
    except ValueError as err:  # an unmatched brace
        raise ValueError(f"not a valid template ({err}); use {{root}} and {{dataset}}") from None
    unknown = sorted(names - {"root", "dataset"})
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use {{root}} and {{dataset}}")
    return v


class DataConfig(Frozen):
    dataset: Dataset = "digits"
    labeled_fraction: Annotated[Float, Field(gt=0, le=1)] = 1.0
    # a label count instead of a fraction: the same number per class (250 = 25 per CIFAR-10 class)
    num_labels: Annotated[Int, Field(ge=1)] | None = None
    loader: Loader = "memory"
    augment: bool = True
    split_seed: Seed | None = None  # None: the trial's seed chooses the labeled subset
    root: str = "~/.cache/mixsweep/data"  # environment, not identity
    download: bool = False  # environment, not identity
    # .beton folder of `loader: ffcv` (`mixsweep data prepare`); environment, not identity
    ffcv_dir: Annotated[str, AfterValidator(_ffcv_template)] = "{root}/ffcv/{dataset}"


class ModelConfig(Frozen):
    arch: Arch = "cnn"
    width: Annotated[Int, Field(ge=1)] = 32  # base width of `cnn` (others use their paper widths)
    depth: Annotated[Int, Field(ge=2, le=32)] = 4  # `cnn` conv layers: a stem + depth-1 blocks
    batchnorm: bool = True  # `cnn` only; false: no BatchNorm, convs with a bias


class TrainConfig(Frozen):
    epochs: Annotated[Int, Field(ge=1)] = 10
    batch_size: Annotated[Int, Field(ge=2)] = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[Float, Field(gt=0)] = 0.05
    momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[Float, Field(ge=0)] = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: Annotated[Float, Field(ge=0)] = 0.0
    # a number, or a per-dataset map in a sweep file; resolved to a number per trial
    target_accuracy: Annotated[Float, Field(gt=0, le=1)] | None = None
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast (GPU)
    channels_last: bool = False  # GPU memory format
    compile: bool = False  # torch.compile the model
    cuda_graphs: bool = False  # capture the whole step once as a CUDA graph (CUDA, memory loader)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # environment, not identity
    eval_batch_size: Annotated[Int, Field(ge=1)] = 1024  # environment, not identity
    epoch_seconds_hint: Annotated[Float, Field(gt=0)] | None = None  # for --dry-run estimates
    # write checkpoint.pt when this long has passed since the last one (and at the end);
    # 0: every epoch. A kill redoes at most this much training. Environment, not identity.
    checkpoint_seconds: Annotated[Float, Field(ge=0)] = 60.0


class MixupConfig(Frozen):
    mode: Mode = "erm"
    k: Annotated[Int, Field(ge=2)] | None = 2
    alpha: Annotated[Float, Field(gt=0)] | None = 1.0
    unsup_weight: Annotated[Float, Field(ge=0)] | None = 10.0
    ema_max_decay: Annotated[Float, Field(ge=0, lt=1)] | None = 0.999
    rampup: Annotated[Float, Field(ge=0, le=1)] | None = 0.4  # fraction of training


class LinearityConfig(Frozen):
    probes: Annotated[Int, Field(ge=2)] = 512
    every: Annotated[Int, Field(ge=1)] = 5
    k: Annotated[Int, Field(ge=2)] = 2
    alpha: Annotated[Float, Field(gt=0)] = 1.0
    seed: Seed = 0


# Keys that describe the environment a trial runs in, not the trial: they do
# not enter the trial id, so moving data or switching device never re-runs.
_NOT_IDENTITY = {
    "data": {"root", "download", "ffcv_dir"},
    "train": {"device", "eval_batch_size", "epoch_seconds_hint", "checkpoint_seconds"},
}


# Keys added after the first release, with their defaults: at its default such a key
# does not enter the trial id, so every id an earlier version computed stays the same
# (a sweep launched before the key existed resumes instead of re-running; golden ids in
# tests/test_spec.py). A key added later goes here with its default.
_ADDED_LATER: dict[str, dict[str, Any]] = {
    "model": {"depth": 4, "batchnorm": True},
    "data": {"num_labels": None},
    "train": {"cuda_graphs": False},
}


TRIAL_SECTIONS = ("data", "model", "train", "mixup", "linearity")


def section_identity(name: str, section: BaseModel) -> dict[str, Any]:
    """One per-trial section's part of the trial id: its keys but the environment's, and
    those added later while at their defaults."""
    d = section.model_dump(mode="json")
    for key in _NOT_IDENTITY.get(name, ()):
        d.pop(key, None)
    for key, default in _ADDED_LATER.get(name, {}).items():
        if d.get(key, default) == default:
            d.pop(key, None)
    return d


def trial_id_of(identity: dict[str, Any]) -> str:
    """First 12 hex of sha256 of the canonical JSON of a trial's identity."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class TrialConfig(Frozen):
    """Everything one trial needs: one value per key."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mixup: MixupConfig = MixupConfig()
    linearity: LinearityConfig = LinearityConfig()
    seed: Seed = 0

    @cached_property
    def trial_id(self) -> str:
        """First 12 hex of sha256 of the canonical JSON of the identity fields (computed once:
        the model is frozen)."""
        return trial_id_of(self.identity())

    def identity(self) -> dict[str, Any]:
        return {**{n: section_identity(n, getattr(self, n)) for n in TRIAL_SECTIONS},
                "seed": self.seed}

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> TrialConfig:
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("trial_id", None)  # another trial: its id is computed anew
        return copy

    @model_validator(mode="after")
    def _one_label_rule(self) -> TrialConfig:
        problem = label_problem(self.data.dataset, self.data.labeled_fraction, self.data.num_labels)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def split_seed(self) -> int:
        return self.seed if self.data.split_seed is None else self.data.split_seed

    def flat(self) -> dict[str, Any]:
        """One flat dict (``section.key``) for tables and W&B configs."""
        out: dict[str, Any] = {"seed": self.seed}
        for section in ("data", "model", "train", "mixup", "linearity"):
            for key, value in getattr(self, section).model_dump(mode="json").items():
                out[f"{section}.{key}"] = value
        return out


# --------------------------------------------------------------------------- sweep-level sections


class ResourcesConfig(Frozen):
    cpus_per_trial: Annotated[Float, Field(gt=0)] = 1
    gpus_per_trial: Annotated[Float, Field(ge=0)] = 0
    max_concurrent: Annotated[Int, Field(ge=1)] | None = None
    max_failures: Annotated[Int, Field(ge=0)] = 3


_WANDB_NAME = r"^[A-Za-z0-9_.-]{1,128}$"


class WandbConfig(Frozen):
    project: Annotated[str, Field(pattern=_WANDB_NAME)] = "mixsweep"
    entity: Annotated[str, Field(pattern=_WANDB_NAME)] | None = None
    mode: WandbMode = "offline"


class TrackingConfig(Frozen):
    wandb: WandbConfig = WandbConfig()


# --------------------------------------------------------------------------- the sweep file


def _axis_model(section: type[Frozen]) -> type[BaseModel]:
    """The sweep-file form of a per-trial section: every key may be a list (an axis)."""
    fields: dict[str, Any] = {}
    for name, info in section.model_fields.items():
        if section is TrainConfig and name == "target_accuracy":
            fields[name] = (
                Annotated[Float, Field(gt=0, le=1)]
                | dict[Dataset, Annotated[Float, Field(gt=0, le=1)]]
                | None,
                None,
            )
            continue
        if section is TrainConfig and name == "epoch_seconds_hint":  # a number or a per-mode map
            hint = Annotated[Float, Field(gt=0)]
            fields[name] = (
                hint | dict[Mode, hint] | None, None)
            continue
        if section is DataConfig and name == "num_labels":
            count = Annotated[Int, Field(ge=1)] | None
            fields[name] = (
                list[count] | dict[Dataset, Annotated[list[count], Field(min_length=1)]],
                Field(default=[None], min_length=1),
            )
            continue
        # Annotated[(t, *meta)] spelled as a call: mypy reads that subscript as 3.11 syntax
        item = operator.getitem(Annotated, (info.annotation, *info.metadata)) if info.metadata else info.annotation
        fields[name] = (list[item], Field(default=[info.default], min_length=1))  # type: ignore[valid-type]

    def _wrap(k: str, v: Any) -> Any:
        if k == "num_labels" and isinstance(v, dict):  # a per-dataset map of axes
            return {ds: x if isinstance(x, list) else [x] for ds, x in v.items()}
        return v if isinstance(v, list) or k in ("target_accuracy", "epoch_seconds_hint") else [v]

    def _wrap_scalars(cls: type, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _wrap(k, v) for k, v in data.items()}
        return data

    return create_model(
        f"Sweep{section.__name__}",
        __config__=CONFIG,
        __validators__={
            # pydantic types __validators__ as plain callables; it takes decorated ones
            "wrap": model_validator(mode="before")(_wrap_scalars),  # type: ignore[dict-item]
        },
        **fields,
    )


SweepData = _axis_model(DataConfig)
SweepModel = _axis_model(ModelConfig)
SweepTrain = _axis_model(TrainConfig)
SweepMixup = _axis_model(MixupConfig)
SweepLinearity = _axis_model(LinearityConfig)
_SECTIONS = {
    "data": (SweepData, DataConfig),
    "model": (SweepModel, ModelConfig),
    "train": (SweepTrain, TrainConfig),
    "mixup": (SweepMixup, MixupConfig),
    "linearity": (SweepLinearity, LinearityConfig),
}


class SweepSpec(Frozen):
    """One sweep file, validated. ``expand(spec)`` gives its trials."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    description: str = ""
    data: SweepData = SweepData()  # type: ignore[valid-type]
    model: SweepModel = SweepModel()  # type: ignore[valid-type]
    train: SweepTrain = SweepTrain()  # type: ignore[valid-type]
    mixup: SweepMixup = SweepMixup()  # type: ignore[valid-type]
    linearity: SweepLinearity = SweepLinearity()  # type: ignore[valid-type]
    # a list (the fixed design) or adaptive seeds added in rounds (mixsweep.spec_seeds)
    seeds: SeedsField = [0]
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    slurm: SlurmConfig | None = None
    runs_dir: Annotated[str, Field(min_length=1)] = "runs"

    @field_validator("runs_dir", "description")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if CONTROL.search(v.replace("\t", " ")):
            raise ValueError("must be one line of text (no newlines or control characters)")
        return v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_scalar(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) else v

    @property
    def adaptive(self) -> AdaptiveSeeds | None:
        """The adaptive seeds, or None for the fixed design (a list)."""
        return self.seeds if isinstance(self.seeds, AdaptiveSeeds) else None

    @property
    def seed_list(self) -> list[int]:
        """Every seed the sweep may run (adaptive: 0..max-1, the worst case)."""
        return seed_list(self.seeds)


# The grid a sweep file may describe before expansion (product of its axes x seeds): a
# larger one is rejected outright (split the sweep). ``launch`` asks for --yes above
# LARGE_SWEEP trials.
MAX_GRID = 100_000
LARGE_SWEEP = 1_000


def grid_size(spec: SweepSpec) -> int:
    """An upper bound of the number of trials, computed without expanding the grid."""
    n = len(spec.seed_list)
    for name in _SECTIONS:
        for value in getattr(spec, name).model_dump().values():
            if isinstance(value, list):
                n *= len(value)
            elif isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
                n *= max(1, sum(len(v) for v in value.values()))
    return n


def parse_spec(raw: Any, source: str = "<sweep>") -> SweepSpec:
    """Validate a parsed YAML mapping into a SweepSpec, or raise SpecError. Every rule is
    checked on the grid's points without building the trials (``expand`` does that)."""
    if not isinstance(raw, dict):
        raise SpecError([f"{source}: the sweep file must be a YAML mapping of sections"])
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_errors(err, SweepSpec)) from None
    res = spec.resources
    problems = cluster_problems(spec.slurm, res.cpus_per_trial, res.gpus_per_trial)
    if problems:
        raise SpecError(problems)
    size = grid_size(spec)
    if size > MAX_GRID:
        raise SpecError([f"{source}: the grid has {size} points (axes x seeds), more than "
                         f"{MAX_GRID}; split it into several sweeps"])
    check_grid(spec.data, spec.train, spec.mixup)
    check_contrast(spec)
    return spec


def check_contrast(spec: SweepSpec) -> None:
    """Adaptive seeds: their contrast must be an axis of the grid holding both values."""
    if spec.adaptive is not None:
        problem = contrast_problem(spec.adaptive.until, {
            n: getattr(spec, n).model_dump(mode="json") for n in TRIAL_SECTIONS})
        if problem is not None:
            raise SpecError([problem])
