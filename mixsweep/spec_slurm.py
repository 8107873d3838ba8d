"""The sweep file's ``slurm:`` section: SLURM time limits, #SBATCH names and options that
mixsweep renders itself, and what a node of the job must give one trial."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator

from mixsweep.spec_fields import CONTROL, Frozen, Int

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
        mm, ss = time.split(":")
        raise ValueError(f"{time!r} is MM:SS to SLURM ({int(mm)} minutes {int(ss)} seconds); "
                         f"write HH:MM:SS: '{time}:00' for {int(mm)} hours, "
                         f"'00:{time}' for {int(mm)} minutes")
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


class SlurmConfig(Frozen):
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
        if v is not None and (CONTROL.search(v) or not v.strip()):
            raise ValueError("must be one path on one line")
        return v

    @field_validator("extra_sbatch")
    @classmethod
    def _options(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for opt in v:
            if not re.match(r"^--?[A-Za-z]", opt) or CONTROL.search(opt) or "#" in opt:
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
            if CONTROL.sub("", line.replace("\t", "")) != line.replace("\t", ""):
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




def _count(x: float, what: str) -> str:
    return f"{x:g} {what}" + ("" if x == 1 else "s")


def node_problems(slurm: SlurmConfig, cpus_per_trial: float, gpus_per_trial: float,
                  cuda: bool = False) -> list[str]:
    """Why one node of the SLURM job cannot run one trial (Ray would hold every trial pending
    for ever), one line per key to change; with ``cuda`` (a trial set to train.device cuda)
    a node without a GPU too (every trial would fail). The one rule of the sweep file's
    check and of launch's (placement.check_slurm)."""
    problems = []
    need = {"cpus": cpus_per_trial, "gpus": gpus_per_trial}
    for kind in ("cpus", "gpus"):
        have = getattr(slurm, f"{kind}_per_node")
        if need[kind] > have:
            problems.append(f"resources.{kind}_per_trial: {need[kind]:g} is more than "
                            f"slurm.{kind}_per_node {have}: no node can run a trial; lower "
                            f"resources.{kind}_per_trial or raise slurm.{kind}_per_node")
    if cuda and slurm.gpus_per_node == 0 and not problems:
        problems.append(
            f"one trial needs {_count(cpus_per_trial, 'CPU')} and a GPU (train.device is cuda) "
            f"but a node of the SLURM job has {_count(slurm.cpus_per_node, 'CPU')} and 0 GPUs "
            "(slurm.cpus_per_node, slurm.gpus_per_node): no trial could start; raise those, or "
            "lower resources.cpus_per_trial / resources.gpus_per_trial")
    return problems


def cluster_problems(slurm: SlurmConfig | None, cpus_per_trial: float,
                     gpus_per_trial: float) -> list[str]:
    """What the slurm: section cannot give: a grace period as long as the job, or nodes
    smaller than one trial."""
    if slurm is None:
        return []
    problems = []
    seconds = slurm_seconds(slurm.time)
    if slurm.grace_seconds >= seconds:
        problems.append(f"slurm.grace_seconds: {slurm.grace_seconds} is not shorter than slurm.time "
                        f"{slurm.time!r} ({seconds} s): the stop signal (USR1 grace_seconds before "
                        "the limit) would come as the job starts; lower it or give the job more time")
    return problems + node_problems(slurm, cpus_per_trial, gpus_per_trial)
