"""The sweep file: pydantic models, validation and grid expansion.

A sweep file (YAML) has the sections ``data``, ``model``, ``train``, ``mixup``,
``linearity`` (per-trial settings), ``seeds``, and the sweep-level sections
``resources``, ``tracking``, ``slurm``. In the per-trial sections any scalar
value may be written as a list: that key becomes a grid axis and the sweep is
the product of all axes. ``expand()`` turns a ``SweepSpec`` into the list of
``TrialConfig`` (one per trial), collapsing axes a mode ignores (erm and mt have
no k/alpha; erm and sup have no consistency settings) so no trial runs twice.

Every model is frozen and rejects unknown keys (``extra="forbid"``). Values that would be
accepted but run wrong are refused here too, one line naming the key: nan/inf and booleans
in number keys (``Int``, ``Float``), seeds outside [0, 2**32 - 1], label counts and batches
the dataset cannot give (``TRAIN_SIZES``), a mode's null settings, SLURM times SLURM would
misread, a grace period as long as the job, trials larger than a node, and extra_sbatch
options that override what mixsweep renders.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

DATASETS = ("cifar10", "cifar100", "svhn", "digits", "synthetic")
ARCHS = ("cnn", "resnet18", "wrn28_2")
MODES = ("erm", "sup", "unsup", "both", "mt")
LOADERS = ("memory", "torch", "ffcv")
MIXING_MODES = frozenset({"sup", "unsup", "both"})  # modes that use k and alpha
CONSISTENCY_MODES = frozenset({"unsup", "both", "mt"})  # modes with an EMA teacher

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "digits": 10, "synthetic": 10}

# (training examples, examples of the smallest class) of each dataset's TRAIN split, known
# before any data is read, so a label count or batch the data cannot give fails validation:
#   cifar10    50000 train, 5000 per class (the official train batches)
#   cifar100   50000 train, 500 per class
#   svhn       73257 train (train_32x32.mat, without "extra"); per digit 0-9: 4948 13861
#              10585 8497 7458 6882 5727 5595 5045 4659 -> digit 9 is the smallest, 4659
#   digits     1437 train: sklearn's 1797 images split 80/20 stratified (data/datasets.py
#              _digits); train per digit 142 146 142 146 145 145 145 143 139 144 -> 139
#   synthetic  datasets.synthetic() defaults: n_train=2000, y = arange(n) % 10 -> 200 each
TRAIN_SIZES = {
    "cifar10": (50_000, 5_000),
    "cifar100": (50_000, 500),
    "svhn": (73_257, 4_659),
    "digits": (1_437, 139),
    "synthetic": (2_000, 200),
}

DEFAULT_TARGETS = {
    "cifar10": 0.85,
    "cifar100": 0.55,
    "svhn": 0.93,
    "digits": 0.95,
    "synthetic": 0.9,
}


class SpecError(ValueError):
    """A sweep or trial file is invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# every model, the sweep-axis ones too: nan / inf in any float key is refused, naming the key
_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Frozen(BaseModel):
    model_config = _CONFIG


def _no_bool(kind: str) -> BeforeValidator:
    """Pydantic's lax mode reads YAML ``true`` as 1: a boolean is never a number here."""

    def check(v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"Input should be a valid {kind}, not true/false")
        return v

    return BeforeValidator(check)


MAX_SEED = 2**32 - 1  # what torch's manual_seed and numpy's seeding both take


def _seed(v: int) -> int:
    if not 0 <= v <= MAX_SEED:
        raise ValueError(f"a seed must be in [0, {MAX_SEED}] (2**32 - 1)")
    return v


# The number types of every model: Int and Float refuse booleans; Float refuses nan and inf
# by itself (also inside maps and lists, whatever the model's config). A seed goes to
# torch.Generator.manual_seed (split, data order, mixing, probes) and torch.manual_seed.
Int = Annotated[int, _no_bool("integer")]
Float = Annotated[float, _no_bool("number"), Field(allow_inf_nan=False)]
Seed = Annotated[Int, AfterValidator(_seed)]


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


class DataConfig(_Frozen):
    dataset: Literal["cifar10", "cifar100", "svhn", "digits", "synthetic"] = "digits"
    labeled_fraction: Annotated[Float, Field(gt=0, le=1)] = 1.0
    # a label count instead of a fraction: the same number per class (250 = 25 per CIFAR-10 class)
    num_labels: Annotated[Int, Field(ge=1)] | None = None
    loader: Literal["memory", "torch", "ffcv"] = "memory"
    augment: bool = True
    split_seed: Seed | None = None  # None: the trial's seed chooses the labeled subset
    root: str = "~/.cache/mixsweep/data"  # environment, not identity
    download: bool = False  # environment, not identity
    # .beton folder of `loader: ffcv` (`mixsweep data prepare`); environment, not identity
    ffcv_dir: Annotated[str, AfterValidator(_ffcv_template)] = "{root}/ffcv/{dataset}"


class ModelConfig(_Frozen):
    arch: Literal["cnn", "resnet18", "wrn28_2"] = "cnn"
    width: Annotated[Int, Field(ge=1)] = 32  # base width of `cnn` (others use their paper widths)
    depth: Annotated[Int, Field(ge=2, le=32)] = 4  # `cnn` conv layers: a stem + depth-1 blocks
    batchnorm: bool = True  # `cnn` only; false: no BatchNorm, convs with a bias


class TrainConfig(_Frozen):
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


class MixupConfig(_Frozen):
    mode: Literal["erm", "sup", "unsup", "both", "mt"] = "erm"
    k: Annotated[Int, Field(ge=2)] | None = 2
    alpha: Annotated[Float, Field(gt=0)] | None = 1.0
    unsup_weight: Annotated[Float, Field(ge=0)] | None = 10.0
    ema_max_decay: Annotated[Float, Field(ge=0, lt=1)] | None = 0.999
    rampup: Annotated[Float, Field(ge=0, le=1)] | None = 0.4  # fraction of training


class LinearityConfig(_Frozen):
    probes: Annotated[Int, Field(ge=2)] = 512
    every: Annotated[Int, Field(ge=1)] = 5
    k: Annotated[Int, Field(ge=2)] = 2
    alpha: Annotated[Float, Field(gt=0)] = 1.0
    seed: Seed = 0


def label_problem(dataset: str, fraction: float, num_labels: int | None) -> str | None:
    """Why a trial's labels are not well defined (a fraction and a count, or a count that is
    not equal per class), or None: the one rule of the sweep file and of TrialConfig."""
    if num_labels is None:
        return None
    if fraction != 1.0:
        return (f"data: a trial uses labeled_fraction or num_labels, not both (got "
                f"labeled_fraction {fraction} with num_labels {num_labels}); put them in "
                "separate sweeps")
    classes = NUM_CLASSES[dataset]
    if num_labels % classes:
        return (f"data.num_labels: {num_labels} is not a multiple of the {classes} classes of "
                f"{dataset} (an equal number of labels per class)")
    smallest = TRAIN_SIZES[dataset][1]
    if num_labels // classes > smallest:
        return (f"data.num_labels: {num_labels} needs {num_labels // classes} labels per class; "
                f"the smallest class of {dataset} has {smallest} training examples (at most "
                f"{smallest * classes} labels)")
    return None


def batch_problem(dataset: str, batch_size: int) -> str | None:
    """A batch larger than the training set: an epoch (ceil(train / batch) steps) would be
    one step that repeats examples, not a pass over the data."""
    n = TRAIN_SIZES[dataset][0]
    if batch_size > n:
        return (f"train.batch_size: {batch_size} is larger than the {n} training examples of "
                f"{dataset} (at most {n})")
    return None


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


class TrialConfig(_Frozen):
    """Everything one trial needs: one value per key."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mixup: MixupConfig = MixupConfig()
    linearity: LinearityConfig = LinearityConfig()
    seed: Seed = 0

    @property
    def trial_id(self) -> str:
        """First 12 hex of sha256 of the canonical JSON of the identity fields."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def identity(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        for section, keys in _NOT_IDENTITY.items():
            for key in keys:
                d[section].pop(key, None)
        for section, defaults in _ADDED_LATER.items():
            for key, default in defaults.items():
                if d[section].get(key, default) == default:
                    d[section].pop(key, None)
        return d

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


class ResourcesConfig(_Frozen):
    cpus_per_trial: Annotated[Float, Field(gt=0)] = 1
    gpus_per_trial: Annotated[Float, Field(ge=0)] = 0
    max_concurrent: Annotated[Int, Field(ge=1)] | None = None
    max_failures: Annotated[Int, Field(ge=0)] = 3


_WANDB_NAME = r"^[A-Za-z0-9_.-]{1,128}$"


class WandbConfig(_Frozen):
    project: Annotated[str, Field(pattern=_WANDB_NAME)] = "mixsweep"
    entity: Annotated[str, Field(pattern=_WANDB_NAME)] | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"


class TrackingConfig(_Frozen):
    wandb: WandbConfig = WandbConfig()


_TIME_FORMS = "must be MINUTES, HH:MM:SS or D-HH:MM:SS, e.g. '24:00:00' (also D-HH, D-HH:MM)"
_MINUTES = re.compile(r"^\d{1,6}$")
_HMS = re.compile(r"^(\d{1,3}):(\d{2}):(\d{2})$")
_DAYS = re.compile(r"^(\d{1,3})-(\d{1,2})(?::(\d{2})(?::(\d{2}))?)?$")


def slurm_seconds(time: str) -> int:
    """The seconds of a SLURM time limit, or ValueError for a form SLURM would refuse or
    misread. Kept: MINUTES, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS. Refused: MM:SS (SLURM reads
    "24:00" as 24 minutes; people mean hours), a minute or second field >= 60, hours >= 24
    after a day part, and zero (SLURM reads 0 as no limit; grace_seconds needs a limit)."""
    if _MINUTES.match(time):
        seconds = int(time) * 60
    elif re.match(r"^\d{1,3}:\d{2}$", time):
        m, s = time.split(":")
        raise ValueError(f"{time!r} is MM:SS to SLURM ({int(m)} minutes {int(s)} seconds); "
                         f"write HH:MM:SS: '{time}:00' for {int(m)} hours, "
                         f"'00:{time}' for {int(m)} minutes")
    elif hms := _HMS.match(time):
        h, m, s = (int(x) for x in hms.groups())
        if m >= 60 or s >= 60:
            raise ValueError(f"{time!r}: minutes and seconds must be below 60 (HH:MM:SS)")
        seconds = h * 3600 + m * 60 + s
    elif days := _DAYS.match(time):
        d, h, m, s = (int(x or 0) for x in days.groups())
        if h >= 24 or m >= 60 or s >= 60:
            raise ValueError(f"{time!r}: after a day part hours must be below 24 and minutes "
                             "and seconds below 60 (D-HH:MM:SS)")
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    else:
        raise ValueError(_TIME_FORMS)
    if seconds == 0:
        raise ValueError(f"{time!r} is no time at all (SLURM reads 0 as no limit, which "
                         "grace_seconds cannot precede); give the job's time, e.g. '24:00:00'")
    return seconds


# Every #SBATCH option slurm.render_sbatch writes, and those that would undo one of them,
# by long name -> the sweep key that sets it, or why mixsweep relies on it.
_FROM_KEY = "which mixsweep sets from {key}; set {key} instead"
_RELIED = "which mixsweep sets itself and relies on ({why})"
_SBATCH_OWNED = {
    "nodes": _FROM_KEY.format(key="slurm.nodes"),
    "cpus-per-task": _FROM_KEY.format(key="slurm.cpus_per_node"),
    **{o: _FROM_KEY.format(key="slurm.gpus_per_node")
       for o in ("gres", "gpus", "gpus-per-node", "gpus-per-task", "gpus-per-socket")},
    **{o: _FROM_KEY.format(key=f"slurm.{o}") for o in ("partition", "account", "qos", "mem", "time")},
    "job-name": _RELIED.format(why="the queue shows the job as mixsweep-<sweep name>"),
    **{o: _RELIED.format(why="one log per job, appended across requeues, read by status")
       for o in ("output", "error", "open-mode")},
    **{o: _RELIED.format(why="USR1 before the time limit stops the sweep and requeues it")
       for o in ("signal", "requeue", "no-requeue")},
    "no-kill": _RELIED.format(why="a failed node ends its own Ray worker, not the job"),
    **{o: _RELIED.format(why="one task per node: the Ray head or worker")
       for o in ("ntasks", "ntasks-per-node")},
    "array": _RELIED.format(why="one job per sweep; array tasks would each run the whole sweep"),
}
_SBATCH_SHORT = {"J": "job-name", "o": "output", "e": "error", "N": "nodes", "n": "ntasks",
                 "c": "cpus-per-task", "G": "gpus", "p": "partition", "A": "account",
                 "q": "qos", "t": "time", "a": "array", "k": "no-kill"}
_SBATCH_FLAGS = set("HhkOQsvV")  # short options without a value: more may follow in one word


def _sbatch_option(opt: str) -> str | None:
    """The long name of the option an extra_sbatch entry sets, if mixsweep owns it.
    sbatch (getopt_long) takes any unambiguous prefix of a long name, and short options
    grouped after one '-' ("-kt5")."""
    if opt.startswith("--"):
        name = opt[2:].split("=", 1)[0]
        return next((o for o in _SBATCH_OWNED if o.startswith(name)), None) if name else None
    for ch in opt[1:]:
        if ch in _SBATCH_SHORT:
            return _SBATCH_SHORT[ch]
        if ch not in _SBATCH_FLAGS:  # an option that takes the rest of the word as its value
            return None
    return None


# partition/account/qos/mem go on #SBATCH lines: plain names only (no shell or sbatch syntax)
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,:+=@%-]{1,128}$")
_NAME_RULE = "letters, digits and _ . , : + = @ % - only (no spaces, quotes or shell syntax)"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SlurmConfig(_Frozen):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: Annotated[Int, Field(ge=1)] = 1
    gpus_per_node: Annotated[Int, Field(ge=0)] = 0
    cpus_per_node: Annotated[Int, Field(ge=1)] = 2
    mem: str | None = None  # e.g. "64G"; None: SLURM's default
    time: str = "01:00:00"
    grace_seconds: Annotated[Int, Field(ge=10)] = 300  # USR1 this long before the time limit
    setup: list[str] = []  # shell lines run before Ray starts (module load, venv activate)
    container: str | None = None  # apptainer image (.sif) to run the Ray processes in
    extra_sbatch: list[str] = []  # further `#SBATCH` options, e.g. "--constraint=a100"

    @field_validator("partition", "account", "qos", "mem")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        if v is not None and not _SLURM_NAME.match(v):
            raise ValueError(f"must be {_NAME_RULE}")
        return v

    @field_validator("container")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (_CONTROL.search(v) or not v.strip()):
            raise ValueError("must be one path on one line")
        return v

    @field_validator("extra_sbatch")
    @classmethod
    def _options(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for opt in v:
            if not re.match(r"^--?[A-Za-z]", opt) or _CONTROL.search(opt) or "#" in opt:
                raise ValueError(f"{opt!r} must be one sbatch option starting with '-' (one line, no '#')")
            if re.search(r"[\s'\"\\]", opt):
                raise ValueError(f"{opt!r} must be one sbatch option, its value after '=' (no "
                                 "spaces, quotes or backslashes), e.g. '--constraint=a100'")
            owned = _sbatch_option(opt)
            if owned is not None:
                raise ValueError(f"{opt!r} sets --{owned}, {_SBATCH_OWNED[owned]}")
            if info.data.get("mem") is not None and re.match(r"^--mem-per-(cpu|gpu)\b", opt):
                raise ValueError(f"{opt!r} and slurm.mem exclude each other in SLURM; keep one")
        return v

    @field_validator("setup")
    @classmethod
    def _lines(cls, v: list[str]) -> list[str]:
        for line in v:
            if _CONTROL.sub("", line.replace("\t", "")) != line.replace("\t", ""):
                raise ValueError(f"{line!r}: one shell line per item (no newlines or control characters)")
        return v

    @field_validator("time", mode="before")
    @classmethod
    def _time_quoted(cls, v: Any) -> Any:
        """YAML reads an unquoted 24:00:00 as the number 86400 (base 60), 90 as a number."""
        if isinstance(v, int | float) and not isinstance(v, bool):
            raise ValueError(f"write the time in quotes, e.g. time: '24:00:00' (YAML reads an "
                             f"unquoted 24:00:00 as the number 86400); {_TIME_FORMS}")
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        slurm_seconds(v)
        return v


# --------------------------------------------------------------------------- the sweep file


def _axis_model(section: type[_Frozen]) -> type[BaseModel]:
    """The sweep-file form of a per-trial section: every key may be a list (an axis)."""
    fields: dict[str, Any] = {}
    for name, info in section.model_fields.items():
        if section is TrainConfig and name == "target_accuracy":
            fields[name] = (
                Annotated[Float, Field(gt=0, le=1)]
                | dict[
                    Literal["cifar10", "cifar100", "svhn", "digits", "synthetic"],
                    Annotated[Float, Field(gt=0, le=1)],
                ]
                | None,
                None,
            )
            continue
        if section is TrainConfig and name == "epoch_seconds_hint":  # a number or a per-mode map
            hint = Annotated[Float, Field(gt=0)]
            fields[name] = (
                hint | dict[Literal["erm", "sup", "unsup", "both", "mt"], hint] | None, None)
            continue
        if section is DataConfig and name == "num_labels":
            count = Annotated[Int, Field(ge=1)] | None
            fields[name] = (
                list[count] | dict[Literal["cifar10", "cifar100", "svhn", "digits", "synthetic"],
                                   Annotated[list[count], Field(min_length=1)]],
                Field(default=[None], min_length=1),
            )
            continue
        item = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[name] = (list[item], Field(default=[info.default], min_length=1))  # type: ignore[valid-type]

    def _wrap(k: str, v: Any) -> Any:
        if k == "num_labels" and isinstance(v, dict):  # a per-dataset map of axes
            return {ds: x if isinstance(x, list) else [x] for ds, x in v.items()}
        return v if isinstance(v, list) or k in ("target_accuracy", "epoch_seconds_hint") else [v]

    def _wrap_scalars(cls: type, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _wrap(k, v) for k, v in data.items()}
        return data

    return create_model(  # type: ignore[call-overload]
        f"Sweep{section.__name__}",
        __config__=_CONFIG,
        __validators__={
            "wrap": model_validator(mode="before")(_wrap_scalars),
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


class SweepSpec(_Frozen):
    """One sweep file, validated. ``expand(spec)`` gives its trials."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    description: str = ""
    data: SweepData = SweepData()  # type: ignore[valid-type]
    model: SweepModel = SweepModel()  # type: ignore[valid-type]
    train: SweepTrain = SweepTrain()  # type: ignore[valid-type]
    mixup: SweepMixup = SweepMixup()  # type: ignore[valid-type]
    linearity: SweepLinearity = SweepLinearity()  # type: ignore[valid-type]
    seeds: Annotated[list[Seed], Field(min_length=1)] = [0]
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    slurm: SlurmConfig | None = None
    runs_dir: Annotated[str, Field(min_length=1)] = "runs"

    @field_validator("runs_dir", "description")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if _CONTROL.search(v.replace("\t", " ")):
            raise ValueError("must be one line of text (no newlines or control characters)")
        return v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_scalar(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) else v


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


def _data_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The data grid, with a per-dataset ``num_labels`` map fanned out per dataset."""
    points = []
    for d in _grid(spec.data):
        labels = d["num_labels"]
        if not isinstance(labels, dict):
            points.append(d)
            continue
        counts = _map_entry(labels, d["dataset"], "data.num_labels", "dataset",
                            "name every dataset of the sweep; [null] = use labeled_fraction")
        points += [{**d, "num_labels": n} for n in counts]
    return points


def _map_entry(value: dict[str, Any], key: str, where: str, kind: str, advice: str) -> Any:
    """``value[key]`` of a per-dataset / per-mode map, or the one-line error naming the gap."""
    if key not in value:
        raise SpecError([f"{where}: the map has no entry for {kind} {key!r} ({advice})"])
    return value[key]


def _resolve_target(train: dict[str, Any], dataset: str) -> float | None:
    target = train["target_accuracy"]
    if isinstance(target, dict):
        return _map_entry(target, dataset, "train.target_accuracy", "dataset",
                          f"name every dataset of the sweep, e.g. {dataset}: "
                          f"{DEFAULT_TARGETS[dataset]}")
    return DEFAULT_TARGETS[dataset] if target is None else target


def _resolve_hint(train: dict[str, Any], mode: str) -> float | None:
    hint = train["epoch_seconds_hint"]
    if isinstance(hint, dict):
        return _map_entry(hint, mode, "train.epoch_seconds_hint", "mode",
                          "name every mode of the sweep")
    return hint


def _check_data(d: dict[str, Any], t: dict[str, Any]) -> None:
    problem = (label_problem(d["dataset"], d["labeled_fraction"], d["num_labels"])
               or batch_problem(d["dataset"], t["batch_size"]))
    if problem is not None:
        raise SpecError([problem])


def _collapse_mixup(m: dict[str, Any]) -> dict[str, Any]:
    """Null the keys a mode ignores, so equal trials get equal ids."""
    m = dict(m)
    if m["mode"] not in MIXING_MODES:
        m["k"] = m["alpha"] = None
    elif m["k"] is None or m["alpha"] is None:
        raise SpecError([f"mixup: mode {m['mode']!r} needs k and alpha (got null)"])
    if m["mode"] not in CONSISTENCY_MODES:
        m["unsup_weight"] = m["ema_max_decay"] = m["rampup"] = None
    else:
        null = [k for k in ("unsup_weight", "ema_max_decay", "rampup") if m[k] is None]
        if null:
            raise SpecError([f"mixup: mode {m['mode']!r} needs unsup_weight, ema_max_decay and "
                             f"rampup (got null: {', '.join(null)})"])
    return m


def _grid(section: BaseModel) -> list[dict[str, Any]]:
    values = section.model_dump()
    axes = {k: v for k, v in values.items() if isinstance(v, list)}
    fixed = {k: v for k, v in values.items() if not isinstance(v, list)}
    return [
        {**fixed, **dict(zip(axes, combo, strict=True))}
        for combo in itertools.product(*axes.values())
    ]


def expand(spec: SweepSpec) -> list[TrialConfig]:
    """All trials of a sweep, in a stable order, without duplicates."""
    grids = [_data_points(spec)] + [_grid(getattr(spec, name)) for name in list(_SECTIONS)[1:]]
    trials: dict[str, TrialConfig] = {}
    for data, model, train, mixup, lin in itertools.product(*grids):
        _check_data(data, train)
        train = {**_collapse_train(train), "target_accuracy": _resolve_target(train, data["dataset"])}
        hint = _resolve_hint(train, mixup["mode"])
        for seed in spec.seeds:
            cfg = TrialConfig(
                data=DataConfig(**data),
                model=ModelConfig(**_collapse_model(model)),
                train=TrainConfig(**{**train, "epoch_seconds_hint": hint}),
                mixup=MixupConfig(**_collapse_mixup(mixup)),
                linearity=LinearityConfig(**lin),
                seed=seed,
            )
            trials.setdefault(cfg.trial_id, cfg)
    return list(trials.values())


def axes(spec: SweepSpec) -> dict[str, list[Any]]:
    """The keys that vary in the sweep file (``section.key`` -> values)."""
    out: dict[str, list[Any]] = {}
    for name in _SECTIONS:
        for key, value in getattr(spec, name).model_dump().items():
            if isinstance(value, list) and len(value) > 1:
                out[f"{name}.{key}"] = value
    if len(spec.seeds) > 1:
        out["seeds"] = list(spec.seeds)
    return out


# --------------------------------------------------------------------------- loading + errors


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys at ``loc`` (a path of field names) inside ``model``."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        sub = [
            a
            for a in (field.annotation, *get_args(field.annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not sub:
            return []
        model = sub[0]
    return list(model.model_fields)


# pydantic's union-branch tags in an error path ("constrained-float", "dict[...]",
# "function-after[...]") and its "[key]" marker: not keys the user wrote
_TAG = re.compile(r"^(constrained-)?(float|int|str|bool)$|^[a-z-]+\[.*\]$|^\[key\]$", re.S)
_KEY_SHOWN = 40  # a longer key is cut in messages


def _show_key(key: Any) -> str:
    """A key the user wrote, for a one-line message: repr'd (escapes newlines), cut if long."""
    text = repr(key)
    return text if len(text) <= _KEY_SHOWN else text[: _KEY_SHOWN - 4] + "...'"


def _unknown_key(loc: tuple[Any, ...], bad: Any, root: type[BaseModel]) -> str:
    parent = tuple(p for p in loc if isinstance(p, str))
    allowed = _allowed_keys(root, parent)
    hint = difflib.get_close_matches(bad, allowed, n=1) if isinstance(bad, str) else []
    msg = f"unknown key {_show_key(bad)}"
    if not isinstance(bad, str):
        msg += " (keys are names, not numbers or null)"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    msg += f"; allowed: {', '.join(allowed)}"
    return f"{'.'.join(parent) or '<top>'}: {msg}"


def _format_errors(err: ValidationError, root: type[BaseModel]) -> list[str]:
    lines: list[str] = []
    branch: list[bool] = []  # the line is one branch of a union key (a number or a map)
    for e in err.errors():
        tagged = any(isinstance(p, str) and _TAG.match(p) for p in e["loc"])
        if e["type"] in ("extra_forbidden", "invalid_key"):  # the last part is the user's key
            *parent, bad = e["loc"]
            loc = tuple(p for p in parent if not (isinstance(p, str) and _TAG.match(p)))
            lines.append(_unknown_key(loc, e["input"] if e["type"] == "invalid_key" else bad, root))
            branch.append(False)
            continue
        parts = tuple(e["loc"])  # () for an error of the whole file (a key that is not text)
        loc = tuple(str(p) if nxt == "[key]" else p  # a map's key, even 1, is not a list index
                    for p, nxt in zip(parts, (*parts[1:], None)[:len(parts)], strict=True)
                    if not (isinstance(p, str) and _TAG.match(p)))
        key = ".".join(str(p) for p in loc if not isinstance(p, int))
        idx = [p for p in loc if isinstance(p, int)]
        where = key + (f"[{idx[0]}]" if idx else "")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "too_short" and idx == []:
            msg = "must not be empty (a sweep axis needs at least one value)"
        value = e.get("input")
        shown = f" (got {value!r})" if not isinstance(value, dict | list) and e["type"] != "missing" else ""
        lines.append(f"{where or '<top>'}: {msg}{shown}")
        branch.append(tagged)
    # a union key with a deeper error (a bad map entry) needs no "not a number" line too,
    # and a value that fits no branch gets one line (the first branch's), not one per branch
    # (an unknown-key line names its section, not a value: it always stays)
    keys = [line.split(":", 1)[0] for line in lines]
    kept, seen = [], set()
    for ln, k, tagged in zip(lines, keys, branch, strict=True):
        if ": unknown key " not in ln:
            if any(o.startswith((k + ".", k + "[")) for o in keys) or (tagged and k in seen):
                continue
            seen.add(k)
        kept.append(ln)
    return list(dict.fromkeys(kept))


# The grid a sweep file may describe before expansion (product of its axes x seeds): a
# larger one is rejected outright (split the sweep). ``launch`` asks for --yes above
# LARGE_SWEEP trials.
MAX_GRID = 100_000
LARGE_SWEEP = 1_000
MAX_FILE_BYTES = 1_000_000  # a sweep file is a page of YAML
MAX_VALUES = 100_000  # values a file may stand for with its aliases copied out: no "billion laughs"


def grid_size(spec: SweepSpec) -> int:
    """An upper bound of the number of trials, computed without expanding the grid."""
    n = len(spec.seeds)
    for name in _SECTIONS:
        for value in getattr(spec, name).model_dump().values():
            if isinstance(value, list):
                n *= len(value)
            elif isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
                n *= max(1, sum(len(v) for v in value.values()))
    return n


def _cluster_problems(spec: SweepSpec) -> list[str]:
    """What the slurm: section cannot give: a grace period as long as the job, or nodes
    smaller than one trial (Ray would hold every trial pending for ever)."""
    s, res = spec.slurm, spec.resources
    if s is None:
        return []
    problems = []
    seconds = slurm_seconds(s.time)
    if s.grace_seconds >= seconds:
        problems.append(f"slurm.grace_seconds: {s.grace_seconds} is not shorter than slurm.time "
                        f"{s.time!r} ({seconds} s): the stop signal (USR1 grace_seconds before the "
                        "limit) would come as the job starts; lower it or give the job more time")
    for kind in ("cpus", "gpus"):
        need, have = getattr(res, f"{kind}_per_trial"), getattr(s, f"{kind}_per_node")
        if need > have:
            problems.append(f"resources.{kind}_per_trial: {need:g} is more than "
                            f"slurm.{kind}_per_node {have}: no node can run a trial; lower "
                            f"resources.{kind}_per_trial or raise slurm.{kind}_per_node")
    return problems


def parse_spec(raw: Any, source: str = "<sweep>") -> SweepSpec:
    """Validate a parsed YAML mapping into a SweepSpec, or raise SpecError."""
    if not isinstance(raw, dict):
        raise SpecError([f"{source}: the sweep file must be a YAML mapping of sections"])
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_errors(err, SweepSpec)) from None
    problems = _cluster_problems(spec)
    if problems:
        raise SpecError(problems)
    size = grid_size(spec)
    if size > MAX_GRID:
        raise SpecError([f"{source}: the grid has {size} points (axes x seeds), more than "
                         f"{MAX_GRID}; split it into several sweeps"])
    if not expand(spec):
        raise SpecError([f"{source}: the grid is empty"])
    return spec


class _Problem(Exception):
    """A YAML problem found by _Loader, with its position."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """How many values a YAML node stands for once its aliases are copied out (stops past
    ``limit``): what a "billion laughs" file blows up to in any code that walks it."""
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in memo:
            return memo[id(n)]
        memo[id(n)] = limit + 1  # a cycle counts as too large
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        memo[id(n)] = min(total, limit + 1)
        return memo[id(n)]

    return size(node)


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and alias bombs."""

    def compose_document(self):  # type: ignore[no-untyped-def]
        node = super().compose_document()
        if node is not None and _expanded_size(node, MAX_VALUES) > MAX_VALUES:
            raise _Problem(f"its aliases (*name) expand to more than {MAX_VALUES} values",
                           node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise _Problem(f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file safely: one SpecError line for every way it can be unreadable."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise SpecError([f"{p}: no such file"]) from None
    except (OSError, ValueError) as err:  # a name too long, a symlink loop, a NUL byte, ...
        reason = getattr(err, "strerror", None) or str(err)
        raise SpecError([f"{str(p)[:200]!r}: cannot open the sweep file: {reason}"]) from None
    if stat.S_ISDIR(mode):
        raise SpecError([f"{p}: is a directory, not a YAML file"])
    if not stat.S_ISREG(mode):
        raise SpecError([f"{p}: not a regular file"])
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpecError([f"{p}: {size} bytes is too large for a sweep file "
                             f"(at most {MAX_FILE_BYTES})"])
        text = p.read_bytes().decode("utf-8")
    except PermissionError:
        raise SpecError([f"{p}: permission denied (cannot read the file)"]) from None
    except UnicodeDecodeError as err:
        raise SpecError([f"{p}: not UTF-8 text (bad byte at offset {err.start})"]) from None
    except OSError as err:
        raise SpecError([f"{p}: cannot read: {err.strerror or err}"]) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, _Problem) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise SpecError([f"{p}: not valid YAML{where}: {problem}"]) from None
    except RecursionError:
        raise SpecError([f"{p}: nested too deeply"]) from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file. The name defaults to the file's stem."""
    raw = load_yaml(path)
    if isinstance(raw, dict):
        raw.setdefault("name", Path(path).stem)
    return parse_spec(raw, str(path))


def load_trial(path: str | Path) -> tuple[SweepSpec, TrialConfig]:
    """Read a one-trial file (the sweep file's keys, one value per key)."""
    spec = load_spec(path)
    trials = expand(spec)
    if len(trials) != 1:
        varying = ", ".join(axes(spec)) or "?"
        raise SpecError(
            [f"{path}: a trial file needs one value per key; these keys have several: {varying}"]
        )
    return spec, trials[0]


def plan(spec: SweepSpec, trials: list[TrialConfig]) -> dict[str, Any]:
    """What a launch would run: counts, axes, resources and a GPU-hour estimate."""
    res = spec.resources
    epochs = sum(t.train.epochs for t in trials)
    hints = [t.train.epoch_seconds_hint for t in trials]
    gpu_hours = None
    if all(h is not None for h in hints):
        seconds = sum(t.train.epochs * t.train.epoch_seconds_hint for t in trials)  # type: ignore[operator]
        gpu_hours = seconds / 3600 * max(res.gpus_per_trial, 0)
    by_mode: dict[str, int] = {}
    for t in trials:
        by_mode[t.mixup.mode] = by_mode.get(t.mixup.mode, 0) + 1
    return {
        "name": spec.name,
        "trials": len(trials),
        "by_mode": by_mode,
        "axes": axes(spec),
        "epochs_total": epochs,
        "resources": res.model_dump(),
        "gpu_hours_estimate": gpu_hours,
        "target": "slurm" if spec.slurm else "local",
    }


def keys_help() -> str:
    """Every sweep-file key with its default, generated from the models (for --help)."""
    lines = []
    sections = {**{name: trial for name, (_, trial) in _SECTIONS.items()},
                "resources": ResourcesConfig, "tracking.wandb": WandbConfig, "slurm": SlurmConfig}
    for name, model in sections.items():
        keys = ", ".join(f"{k}={f.default!r}" for k, f in model.model_fields.items())
        lines.append(f"{name}: {keys}")
    lines.append("seeds: [0]  (name: the file's stem; runs_dir: 'runs')")
    lines.append("data.num_labels: a label count (equal per class) instead of labeled_fraction, "
                 "or a per-dataset map of axes, e.g. {cifar10: [250, 4000, null], svhn: [1000]}")
    lines.append("train.epoch_seconds_hint: seconds per epoch for the --dry-run GPU-hour "
                 "estimate, a number or a per-mode map, e.g. {erm: 1.0, sup: 1.0, unsup: 2.5}")
    lines.append("train.target_accuracy: a number or a per-dataset map; None uses "
                 + ", ".join(f"{k} {v}" for k, v in DEFAULT_TARGETS.items()))
    return "\n\n".join(lines)
