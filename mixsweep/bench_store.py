"""``mixsweep bench --only store``: ``status`` and ``report`` on a large synthetic run folder.

The folder is made from REAL trial files: one tiny quickstart trial is trained
(digits, 2 epochs), then its config.json, metrics.jsonl and result.json are
copied into N trial folders of a quickstart grid widened by seeds (24 trials per
seed), with each copy's trial id, config, accuracy and epochs-to-target varied
(a few trials failed, a few never reached the target). spec.yaml and
results.csv are written as the driver writes them. Each command runs in its own
Python process: wall seconds (Python's start included: what a user waits for) and
the process's own peak memory (VmHWM). ``status`` and ``report`` are timed cold (an
empty cache folder: no row index, no curve cache) and warm (the same command again,
its caches kept); ``report --markdown`` warm.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIZES = {False: (1_000, 10_000), True: (48,)}
PER_SEED = 24  # quickstart's 6 mode/k cells x 4 labeled fractions
Log = Callable[[str], None]


def _spec(seeds: int) -> Any:
    """sweeps/quickstart.yaml's grid (written out here: an installed package has no sweeps/
    folder), 4 labeled fractions, 2 epochs, ``seeds`` seeds."""
    from mixsweep.spec import parse_spec

    return parse_spec({
        "name": "bench_store",
        "data": {"dataset": "digits", "labeled_fraction": [0.1, 0.25, 0.5, 1.0]},
        "model": {"arch": "cnn", "width": 16},
        "train": {"epochs": 2, "batch_size": 128, "lr": 0.05, "target_accuracy": 0.95,
                  "device": "cpu"},
        "mixup": {"mode": ["erm", "sup", "unsup", "mt"], "k": [2, 3], "alpha": 1.0},
        "linearity": {"probes": 64, "every": 1},
        "seeds": list(range(seeds)),
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2, "max_failures": 2},
        "tracking": {"wandb": {"project": "mixsweep", "mode": "offline"}},
    })


def real_trial(root: Path) -> dict[str, bytes]:
    """Train one tiny real trial under ``root``; its files' bytes by name."""
    import torch

    from mixsweep.expand import expand
    from mixsweep.trial import run_trial

    first = expand(_spec(1))[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_trial(first, root / first.trial_id)
    finally:
        torch.set_num_threads(threads)
    folder = root / first.trial_id
    return {n: (folder / n).read_bytes() for n in ("config.json", "metrics.jsonl", "result.json")}


def build_folder(runs: Path, n: int, files: dict[str, bytes], seed: int = 0) -> Path:
    """A run folder of about ``n`` trials (a multiple of 24) from one real trial's files."""
    from mixsweep.expand import expand
    from mixsweep.store import SweepPaths, collect_rows, write_results

    spec = _spec(max(1, round(n / PER_SEED)))
    sp = SweepPaths.of(runs, spec.name)
    sp.write_spec(spec)
    rng = random.Random(seed)
    result0 = json.loads(files["result.json"])
    trials = expand(spec)
    for cfg in trials:
        folder = sp.trial(cfg.trial_id).root
        folder.mkdir(parents=True)
        # plain writes: a throw-away bench folder, not results
        (folder / "config.json").write_text(json.dumps({"trial_id": cfg.trial_id, **cfg.model_dump(mode="json")}))
        (folder / "metrics.jsonl").write_bytes(files["metrics.jsonl"])
        res = dict(result0, trial_id=cfg.trial_id, config=cfg.model_dump(mode="json"))
        res["final_acc"] = min(1.0, max(0.0, result0["final_acc"] + rng.gauss(0, 0.03)))
        roll = rng.random()
        if roll < 0.03:  # a diverged trial
            res.update(status="failed", reason="non-finite loss at epoch 1", reached_target=False,
                       epochs_to_target=None)
        elif roll < 0.3:
            res.update(reached_target=False, epochs_to_target=None)
        else:
            res.update(reached_target=True, epochs_to_target=rng.choice([1, 2]))
        (folder / "result.json").write_text(json.dumps(res, indent=2))
    write_results(sp, collect_rows(sp, trials))
    return sp.root


# The child reports its own peak (VmHWM of its own address space): ru_maxrss from wait4
# would also count this process's memory, which a forked child inherits on Linux.
_RUN = """import atexit, runpy, sys
def _peak():
    try:
        hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))
        sys.stderr.write('\\nPEAK_KB ' + hwm.split()[1] + '\\n')
    except (OSError, StopIteration):
        import resource
        sys.stderr.write('\\nPEAK_KB %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
atexit.register(_peak)
sys.argv = ['mixsweep', *sys.argv[1:]]
runpy.run_module('mixsweep.cli', run_name='__main__')
"""


def timed(args: list[str], cache: Path | None = None) -> dict[str, float]:
    """Run ``mixsweep ARGS`` in a fresh Python process: wall and CPU seconds, its peak MB;
    ``cache``: the cache folder it gets (XDG_CACHE_HOME)."""
    env = dict(os.environ, COLUMNS="120", WANDB_MODE="offline", RAY_USAGE_STATS_ENABLED="0")
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _RUN, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)  # CPU seconds: this child's own (a busy machine's
    proc.returncode = os.waitstatus_to_exitcode(status)  # wall time includes waiting for a core)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mixsweep {' '.join(args)} exited {proc.returncode}: {err[-400:]}")
    peak = [ln for ln in err.splitlines() if ln.startswith("PEAK_KB ")]
    return {"seconds": round(wall, 2), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_mb": round(int(peak[-1].split()[1]) / 1024) if peak else -1}


def store_bench(quick: bool = False, log: Log = print, sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Time ``status`` and ``report`` (cold and warm) and ``report --markdown`` at each size."""
    out: dict[str, Any] = {"method": "fresh `python -m mixsweep.cli` per command: wall s (Python start "
                           "included), CPU s, peak RSS MB; cold: an empty cache folder, warm: the "
                           "same command again; folder from one real trial's files"}
    with tempfile.TemporaryDirectory(prefix="mixsweep-bench-store-") as tmp:
        t0 = time.perf_counter()
        files = real_trial(Path(tmp) / "real")
        log(f"store: one real trial in {time.perf_counter() - t0:.1f} s")
        for n in sizes or SIZES[quick]:
            runs = Path(tmp) / f"runs{n}"
            t0 = time.perf_counter()
            root = build_folder(runs, n, files)
            trials = sum(1 for _ in (root / "trials").iterdir())
            log(f"store: built {trials} trials in {time.perf_counter() - t0:.1f} s")
            html, md = Path(tmp) / f"r{n}.html", Path(tmp) / f"t{n}.md"
            cache = Path(tmp) / f"cache{n}"
            row: dict[str, Any] = {"trials": trials}
            for cmd, args in (("status", ["status", str(root)]),
                              ("report", ["report", str(root), "--out", str(html)])):
                shutil.rmtree(cache, ignore_errors=True)  # cold: no row index, no curve cache
                row[f"{cmd}_cold"] = timed(args, cache)
                row[f"{cmd}_warm"] = timed(args, cache)
            row["report_markdown_warm"] = timed(["report", str(root), "--out", str(html),
                                                 "--markdown", str(md)], cache)
            log(f"store: {trials} trials: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "trials"))
            out[f"n{trials}"] = row
    return out


if __name__ == "__main__":  # python -m mixsweep.bench_store [N ...]
    print(json.dumps(store_bench(sizes=tuple(int(a) for a in sys.argv[1:]) or None), indent=2))
