"""The hardened YAML loader of sweep and trial files: one SpecError line for every way a
file can be unreadable (missing, a folder, not UTF-8, too large, duplicate keys, an alias
bomb, nested too deeply), then validation (``parse_spec``)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from mixsweep.expand import axes, expand
from mixsweep.spec import SweepSpec, TrialConfig, parse_spec
from mixsweep.spec_errors import SpecError

MAX_FILE_BYTES = 1_000_000  # a sweep file is a page of YAML
MAX_VALUES = 100_000  # values a file may stand for with its aliases copied out: no "billion laughs"


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

    def compose_document(self):
        node = super().compose_document()
        if node is not None and _expanded_size(node, MAX_VALUES) > MAX_VALUES:
            raise _Problem(f"its aliases (*name) expand to more than {MAX_VALUES} values",
                           node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):
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

