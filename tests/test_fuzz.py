"""The fuzzer: generated sweep files, YAML texts, CLI calls and corrupted run folders go
through the real entry points (``launch --dry-run``, ``trial`` parsing, ``status``,
``report``, the other verbs' argument handling), in process through typer's CliRunner.

Properties, for every generated case:
- the exit code is 0 or 2 (or the call reached the point where real work starts:
  training, a benchmark, a .beton write; those are replaced by a sentinel here);
- never a traceback, never an exception escaping the command;
- exit 2 prints only ``error: ...`` lines;
- done within BOUND_S seconds;
- nothing written outside the case's own temporary folder (the working directory, HOME
  and the repository are checked).

Profiles (Hypothesis): ``ci`` (the default) is derandomised, i.e. a fixed seed, and runs
2,000+ cases in all (~2-3 min on 2 cores); ``MIXSWEEP_FUZZ=soak`` multiplies the counts by
MIXSWEEP_FUZZ_SCALE (default 25) with a fresh random seed each run (printed by Hypothesis on
a failure); ``MIXSWEEP_FUZZ=examples`` runs only the @example cases. A failure found by either becomes an ``@example`` below, or a file in
tests/bad_inputs/ when it is a sweep file with one clear problem.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from pydantic import BaseModel
from typer.testing import CliRunner

from mixsweep.cli import app
from mixsweep.spec import SweepSpec

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "sweeps").rglob("*.yaml"))
BOUND_S = 10.0  # per call; a dry-run of the largest seed sweep takes ~0.1 s

# Hypothesis writes failure patches under its home folder: keep them out of the working tree
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="mixsweep-hypothesis-"))
PROFILE = os.environ.get("MIXSWEEP_FUZZ", "ci")
SCALE = int(os.environ.get("MIXSWEEP_FUZZ_SCALE", "25")) if PROFILE == "soak" else 1
_COMMON = {"database": None, "deadline": None, "print_blob": True,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture]}
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("soak", derandomize=False, **_COMMON)
# only the @example cases (the defects found so far): a quick regression check
settings.register_profile("examples", phases=[Phase.explicit], **_COMMON)
PROFILE_SETTINGS = settings.get_profile(PROFILE if PROFILE in ("ci", "soak", "examples") else "ci")
# cases per test in CI (x SCALE in a soak run); 2,000 in all
CASES = {"sweep": 900, "yaml": 400, "cli": 450, "run_folder": 250}


def cases(kind: str) -> settings:
    return settings(PROFILE_SETTINGS, max_examples=CASES[kind] * SCALE)


class Reached(Exception):
    """Raised by the stand-in for real work (training, benchmarks, writing .beton files):
    the input was accepted and the command got as far as starting that work."""


def _reached(*_a: Any, **_k: Any) -> None:
    raise Reached


@contextlib.contextmanager
def _stand_ins() -> Iterator[None]:
    """Real work is replaced by a sentinel; ``status --watch`` stops after its first view."""

    def one_view(_seconds: float) -> None:
        raise KeyboardInterrupt

    with contextlib.ExitStack() as stack:
        for target in ("mixsweep.trial.run_trial", "mixsweep.tune.run_sweep",
                       "mixsweep.slurm._run", "mixsweep.bench.run_bench",
                       "mixsweep.data.ffcv_loader.prepare", "mixsweep.tracking.sync"):
            stack.enter_context(mock.patch(target, _reached))
        stack.enter_context(mock.patch("time.sleep", one_view))
        yield


def _tree(root: Path) -> dict[str, float]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".git", "__pycache__", ".venv",
                                                          ".pytest_cache", ".ruff_cache")]
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                out[str(p.relative_to(root))] = p.lstat().st_mtime
    return out


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """One HOME for the module's cases, checked to stay untouched."""
    with tempfile.TemporaryDirectory(prefix="mixsweep-fuzz-home-") as d:
        old = os.environ.get("HOME")
        os.environ["HOME"] = d
        before = _tree(Path(d))
        repo_before = set(os.listdir(REPO))
        try:
            yield Path(d)
        finally:
            if old is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = old
        assert _tree(Path(d)) == before, "a fuzz case wrote into HOME"
        assert set(os.listdir(REPO)) <= repo_before, "a fuzz case wrote into the repository"


@contextlib.contextmanager
def case_dir() -> Iterator[Path]:
    """A fresh empty working directory for one case."""
    old = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="mixsweep-fuzz-") as d:
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(old)


def run(args: list[str], *, allow_reached: bool = True) -> tuple[int, str]:
    """Invoke the CLI in process and check the properties; (exit code, output)."""
    t0 = time.monotonic()
    with _stand_ins():
        result = CliRunner().invoke(app, args)
    took = time.monotonic() - t0
    out = result.output
    exc = result.exception
    if allow_reached and isinstance(exc, Reached):
        assert took < BOUND_S, (args, took)
        event(f"{args[0]}: reached the work")
        return -1, out
    assert exc is None or isinstance(exc, SystemExit), (args, repr(exc), out[-2000:])
    assert "Traceback" not in out, (args, out[-2000:])
    assert result.exit_code in (0, 2), (args, result.exit_code, out[-2000:])
    if result.exit_code == 2:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert lines and all(ln.startswith("error: ") for ln in lines), (args, out[-2000:])
    assert took < BOUND_S, (args, f"{took:.1f} s")
    event(f"{args[0]}: exit {result.exit_code}")  # --hypothesis-show-statistics
    return result.exit_code, out


# --------------------------------------------------------------------------- values

_SPECIAL_STRINGS = [
    "", " ", "nan", "NaN", ".nan", "inf", "-inf", "1e309", "-1", "0", "1", "true", "yes", "~",
    "null", "24:00", "0:00:00", "1-00:00:00", "$(touch PWNED)", "`id`", "a;b", "a b", "'q'",
    '"q"', "../../escape", "/", "/dev/null", "\t", "\n", "x\ny", "\x00", "\x1b[31m", "é",
    "名前", "💥", "a" * 300, "--time=1:00:00", "--output=x", "-J x", "{root}/{nope}", "{",
]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2.0, max_value=2.0),
    st.sampled_from(_SPECIAL_STRINGS),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(["cifar10", "erm", "digits"])),
                      inner, max_size=4),
    max_leaves=12,
)


def _nested(depth: int) -> Any:
    v: Any = 1
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


deep = st.integers(min_value=50, max_value=400).map(_nested)


def _schema() -> dict[str, list[str]]:
    """Section -> keys, read from the pydantic models (the top level under '')."""
    out: dict[str, list[str]] = {"": list(SweepSpec.model_fields)}
    for name, field in SweepSpec.model_fields.items():
        ann = field.annotation
        cands = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in cands if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is not None:
            out[name] = list(model.model_fields)
    return out


SCHEMA = _schema()
BASES = [yaml.safe_load(p.read_text()) for p in SWEEP_FILES]


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, str, str, Any]:
    """(operation, section, key, value): set, delete or replace one key of a sweep file."""
    section = draw(st.sampled_from(sorted(SCHEMA)))
    key = draw(st.sampled_from(SCHEMA[section]) | st.text(min_size=1, max_size=15)
               | st.sampled_from(["labeled-fraction", "1", "alfa", "Mode", " k", "k "]))
    op = draw(st.sampled_from(["set", "set", "set", "axis", "delete", "section"]))
    value = draw(values | deep) if op != "axis" else draw(st.lists(scalars, min_size=0, max_size=4))
    return op, section, key, value


def _apply(doc: Any, op: str, section: str, key: str, value: Any) -> Any:
    if not isinstance(doc, dict):
        return doc
    if op == "section":
        doc[section or key] = value
        return doc
    target = doc if not section else doc.get(section)
    if section == "tracking" and isinstance(target, dict):
        target = target.get("wandb", target)
    if not isinstance(target, dict):
        doc[section] = target = {}
    if op == "delete":
        target.pop(key, None)
    else:
        target[key] = value
    return doc


@st.composite
def sweep_doc(draw: st.DrawFn) -> Any:
    doc = json.loads(json.dumps(draw(st.sampled_from(BASES))))  # a deep copy
    for m in draw(st.lists(mutation(), min_size=0, max_size=3)):
        doc = _apply(doc, *m)
    return doc


def _dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, RecursionError, ValueError):
        return json.dumps(doc, default=str)  # JSON is YAML too


def _check_sweep_text(text: str | bytes, name: str = "sweep.yaml") -> int:
    with case_dir() as d:
        f = d / name
        f.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        code, _ = run(["launch", str(f), "--dry-run"], allow_reached=False)
        run(["trial", str(f), "--out", str(d / "t")])  # parsing; training is the sentinel
        leftovers = {p.name for p in d.iterdir()} - {name, "t"}
        assert not leftovers, leftovers  # a dry-run writes nothing
        return code


# --------------------------------------------------------------------------- sweep files


@cases("sweep")
@given(doc=sweep_doc())
@example(doc={"data": {"labeled-fraction": 0.5}})
@example(doc={"seeds": [True]})
@example(doc={"train": {"lr": float("nan")}})
@example(doc={"mixup": {"mode": "unsup", "unsup_weight": None}})
@example(doc={"slurm": {"time": "24:00"}, "resources": {"cpus_per_trial": 4}})
def test_fuzz_sweep_file(doc: Any, home: Path) -> None:
    _check_sweep_text(_dump(doc))


# --------------------------------------------------------------------------- YAML texts

_YAML_FEATURES = [
    "%YAML 1.1\n---\n", "---\n", "...\n", "--- |\n  text\n", "a: &x [1, 2]\nb: *x\n",
    "<<: {seeds: [1]}\n", "? [a, b]\n: c\n", "!!binary aGVsbG8=\n", "x: !!set {a, b}\n",
    "x: !!omap [a: 1]\n", "x: !!python/object/apply:os.system ['touch PWNED']\n",
    "x: !custom 1\n", "\ufeff", "\t", "\r\n", "x: 0x1F\ny: 0o17\nz: 1_000\n",
    "x: 2001-12-14t21:59:43.10-05:00\n", "seeds: [*undefined]\n", "x: 'unterminated\n",
    "{", "[", "- a\n- b\n", "x:\n  - y: [\n", "x: " + "[" * 300 + "]" * 300 + "\n",
]


@st.composite
def yaml_text(draw: st.DrawFn) -> str | bytes:
    base = SWEEP_FILES[draw(st.integers(0, len(SWEEP_FILES) - 1))].read_text()
    kind = draw(st.sampled_from(["insert", "truncate", "bytes", "replace_line"]))
    if kind == "insert":
        feature = draw(st.sampled_from(_YAML_FEATURES))
        pos = draw(st.integers(0, len(base)))
        return base[:pos] + feature + base[pos:]
    if kind == "truncate":
        return base[: draw(st.integers(0, len(base)))]
    if kind == "bytes":
        raw = bytearray(base.encode())
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    lines = base.splitlines()
    i = draw(st.integers(0, max(0, len(lines) - 1)))
    lines[i:i + 1] = [draw(st.sampled_from(_YAML_FEATURES) | st.text(max_size=40))]
    return "\n".join(lines)


@cases("yaml")
@given(text=yaml_text())
@example(text="data:\n  dataset: digits\n" + "x: " + "[" * 300 + "]" * 300 + "\n")
@example(text='"\\ud83d\\udca5": 1\n')  # found by the soak run: lone surrogates in a key
def test_fuzz_yaml_text(text: str | bytes, home: Path) -> None:
    _check_sweep_text(text)


# --------------------------------------------------------------------------- CLI calls

_PATH_KINDS = ["missing", "file", "dir", "devnull", "proc_file", "long", "nul", "loop", "empty"]


def _path(kind: str, d: Path) -> str:
    if kind == "file":
        (d / "afile").write_text("x: 1\n")
        return "afile"
    if kind == "dir":
        (d / "adir").mkdir(exist_ok=True)
        return "adir"
    if kind == "loop":
        if not (d / "loop").is_symlink():
            (d / "loop").symlink_to("loop")
        return "loop"
    return {"missing": "nope/x", "devnull": "/dev/null", "proc_file": "/proc/version",
            "long": "n" * 300, "nul": "a\x00b", "empty": ""}[kind]


_OPTION_VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "2.5", "nan", "inf", "-inf", "1e400", "", ",", " , ",
                     "abc", "offline", "online", "disabled", "none", "fraction", "k",
                     "mode=erm", "=", "x=", "loader,gpu", "loader", "profile", "cpu", "cuda",
                     "cuda:7", "tpu", "127.0.0.1:1", "💥"]),
    st.text(max_size=12),
)

_VERBS: dict[str, dict[str, str]] = {  # verb -> option -> kind of value ("path" or "value")
    "status": {"--runs-dir": "path", "--watch": "value"},
    "report": {"--out": "path", "--by": "value", "--png": "path", "--markdown": "path",
               "--early-epoch": "value", "--where": "value", "--figures": "value"},
    "trial": {"--out": "path", "--device": "value"},
    "cancel": {"--runs-dir": "path"},
    "sync": {"--runs-dir": "path", "--jobs": "value"},
    "bench": {"--only": "value"},
    "data prepare": {"--format": "value", "--out": "path", "--root": "path"},
    "launch": {"--max-concurrent": "value", "--wandb": "value", "--expect-nodes": "value",
               "--join-timeout": "value"},
}
_ARG = {"status": "name", "report": "path", "trial": "path", "cancel": "name", "sync": "name",
        "bench": None, "data prepare": "dataset", "launch": "sweep"}


@st.composite
def cli_call(draw: st.DrawFn) -> tuple[str, str | None, str, list[tuple[str, str, str]]]:
    verb = draw(st.sampled_from(sorted(_VERBS)))
    arg_kind = _ARG[verb]
    arg = None
    if arg_kind == "path":
        arg = draw(st.sampled_from(_PATH_KINDS))
    elif arg_kind == "name":
        arg = draw(st.sampled_from(["quickstart", "", "../x", "a b", "💥"]) | st.text(max_size=8))
    elif arg_kind == "dataset":
        arg = draw(st.sampled_from(["digits", "synthetic", "cifar10", "svhn", "imagenet", ""]))
    elif arg_kind == "sweep":
        arg = draw(st.sampled_from(["quickstart", *_PATH_KINDS]))
    opts = []
    for opt in draw(st.lists(st.sampled_from(sorted(_VERBS[verb])), max_size=3, unique=True)):
        kind = _VERBS[verb][opt]
        value = draw(st.sampled_from(_PATH_KINDS)) if kind == "path" else draw(_OPTION_VALUES)
        opts.append((opt, kind, value))
    mode = draw(st.sampled_from(["", "--dry-run", "--json", "--quick", "--download"]))
    return verb, arg, mode, opts


@cases("cli")
@given(call=cli_call())
@example(call=("status", "quickstart", "", [("--watch", "value", "nan")]))
@example(call=("status", "quickstart", "", [("--watch", "value", "-1")]))
@example(call=("bench", None, "", [("--only", "value", "")]))
@example(call=("bench", None, "", [("--only", "value", ",")]))
@example(call=("trial", "file", "", [("--device", "value", "tpu")]))
@example(call=("report", "dir", "", [("--out", "path", "dir")]))
@example(call=("status", "quickstart", "", [("--runs-dir", "path", "file")]))
def test_fuzz_cli_call(call: tuple, home: Path, quickstart_run: Path) -> None:
    verb, arg, mode, opts = call
    with case_dir() as d:
        shutil.copytree(quickstart_run, d / "runs" / "quickstart")  # a real sweep to point at
        args = verb.split()
        if arg is not None:
            if _ARG[verb] == "path":
                arg = _path(arg, d)
            elif _ARG[verb] == "sweep":
                arg = str(REPO / "sweeps" / "quickstart.yaml") if arg == "quickstart" else _path(arg, d)
            args.append(arg)
        for opt, kind, value in opts:
            args += [opt, _path(value, d) if kind == "path" else value]
        if mode == "--dry-run" and verb == "launch" or mode == "--json" and verb == "bench" \
                or mode == "--quick" and verb == "bench" or mode == "--download" and verb == "data prepare":
            args.append(mode)
        elif verb == "launch":
            args.append("--dry-run")  # a real launch would start Ray: only its parsing is fuzzed
        run(args)


# --------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, tiny finished sweep folder (2 trials, 1 epoch), written as launch writes it."""
    import torch

    from mixsweep.expand import expand
    from mixsweep.spec import parse_spec
    from mixsweep.store import SweepPaths, atomic_write_text, collect_rows, write_results
    from mixsweep.trial import run_trial

    raw = {"name": "quickstart", "data": {"dataset": "digits"},
           "model": {"arch": "cnn", "width": 4},
           "train": {"epochs": 2, "batch_size": 256, "device": "cpu", "target_accuracy": 0.3},
           "mixup": {"mode": ["erm", "sup"]}, "linearity": {"probes": 16, "every": 1}}
    spec = parse_spec(raw)
    sp = SweepPaths.of(tmp_path_factory.mktemp("runs"), spec.name)
    atomic_write_text(sp.spec, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    sp.sweep_id()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trials = expand(spec)
        for cfg in trials:
            run_trial(cfg, sp.trial(cfg.trial_id).root)
    finally:
        torch.set_num_threads(threads)
    write_results(sp, collect_rows(sp, trials))
    atomic_write_text(sp.root / "trials" / trials[0].trial_id / "error.json",
                      json.dumps({"trial_id": trials[0].trial_id, "error": "RuntimeError: x"}))
    return sp.root


_CORRUPTIONS = ["truncate", "garbage", "json", "yaml", "delete", "dir", "empty", "field",
                "append_line"]


@st.composite
def corruption(draw: st.DrawFn) -> tuple[int, str, Any]:
    return (draw(st.integers(0, 10_000)), draw(st.sampled_from(_CORRUPTIONS)),
            draw(st.binary(max_size=64) | values))


def _corrupt(root: Path, pick: int | str, how: str, payload: Any) -> None:
    """Damage one file (``pick``: an index into the folder's files, or a glob: every match)."""
    if isinstance(pick, str):
        for path in sorted(root.glob(pick)):
            _corrupt_file(root, path, 0, how, payload)
        return
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "checkpoint.pt")
    files += [root / "slurm" / "job_id"]  # a SLURM sweep's recorded job
    _corrupt_file(root, files[pick % len(files)], pick, how, payload)


def _corrupt_file(root: Path, path: Path, pick: int, how: str, payload: Any) -> None:
    if path.is_dir():  # made a folder by an earlier damage of this case
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.read_bytes() if path.is_file() else b""
    if how == "truncate":
        path.write_bytes(data[: pick % (len(data) + 1)])
    elif how == "garbage":
        path.write_bytes(payload if isinstance(payload, bytes) else os.urandom(32))
    elif how in ("json", "yaml"):
        obj = payload.decode("latin-1") if isinstance(payload, bytes) else payload
        path.write_text(json.dumps(obj, default=str) if how == "json" else _dump(obj))
    elif how == "delete":
        path.unlink(missing_ok=True)
    elif how == "dir":
        path.unlink(missing_ok=True)
        path.mkdir()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "field":  # one key of a JSON object / first record set to the payload
        with contextlib.suppress(ValueError):
            lines = data.decode().splitlines() or ["{}"]
            obj = json.loads(lines[0])
            if isinstance(obj, dict) and obj:
                key = sorted(obj)[pick % len(obj)]
                obj[key] = payload.decode("latin-1") if isinstance(payload, bytes) else payload
                lines[0] = json.dumps(obj, default=str)
                path.write_text("\n".join(lines) + "\n")
    elif how == "append_line":
        with path.open("ab") as f:
            f.write(json.dumps(payload if not isinstance(payload, bytes) else payload.hex(),
                               default=str).encode() + b"\n")


@cases("run_folder")
@given(damage=st.lists(corruption(), min_size=1, max_size=3))
@example(damage=[(0, "json", [1, 2])])
# found by this fuzzer (each crashed status or report before it was fixed):
@example(damage=[("spec.yaml", "garbage", b"\x00"), ("results.csv", "garbage", b"trial_id,sta")])
@example(damage=[("trials/*/metrics.jsonl", "garbage", b"\xff")])
@example(damage=[("trials/*/result.json", "field", "x")])
@example(damage=[(1, "json", {"\U00010000": None})])  # found by the soak run (spec.yaml)
@example(damage=[(3530, "dir", b""), (3530, "delete", b"")])  # the fuzzer's own bug: a file made a folder
def test_fuzz_run_folder(damage: list, home: Path, quickstart_run: Path) -> None:
    with case_dir() as d:
        root = d / "runs" / "quickstart"
        shutil.copytree(quickstart_run, root)
        for c in damage:
            _corrupt(root, *c)
        code, out = run(["status", str(root)])
        run(["report", str(root), "--out", str(d / "r.html"), "--figures", "profile"])

