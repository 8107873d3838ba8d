"""A stand-in for `python -m mixsweep.cli launch SPEC --local --ray-address ADDR` in SLURM tests.

Used as the job's PYTHON: `fake_driver.py -m ray.scripts.scripts ...` (and any other
call but the launch, such as the nodes' `mixsweep.cli selftest --preflight`) runs the real
Python (so the real Ray cluster starts); `fake_driver.py -m mixsweep.cli launch ...`
connects to that cluster, runs one task on it, appends a line per start to
<sweep>/driver.log, then works for FAKE_DRIVER_SECONDS (stops cleanly on TERM).
"""

import os
import signal
import sys
import time
from pathlib import Path

args = sys.argv[1:]
if args[:3] != ["-m", "mixsweep.cli", "launch"]:  # Ray, and the nodes' real preflight
    os.execv(sys.executable, [sys.executable, *args])

spec = Path(args[3])
address = args[args.index("--ray-address") + 1]
log = spec.parent / "driver.log"
restart = os.environ.get("SLURM_RESTART_COUNT", "0")
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))

import ray  # noqa: E402

ray.init(address=address, log_to_driver=False)
signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))  # ray.init installs its own
nodes = len([n for n in ray.nodes() if n["Alive"]])
cpus = ray.cluster_resources().get("CPU", 0)
answer = ray.get(ray.remote(lambda: 6 * 7).remote())
with log.open("a") as f:
    f.write(f"start restart={restart} nodes={nodes} cpus={cpus:g} answer={answer}\n")
end = time.time() + float(os.environ.get("FAKE_DRIVER_SECONDS", "1"))
while time.time() < end and not stopped:
    time.sleep(0.2)
ray.shutdown()
with log.open("a") as f:
    f.write(f"{'stopped' if stopped else 'done'} restart={restart}\n")
sys.exit(0)
