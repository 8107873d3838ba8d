"""Run the 'loader' part of `mixsweep bench` and print it as JSON (`--quick`: tiny sizes)."""

import json
import sys

from mixsweep.bench import run_bench

if __name__ == "__main__":
    res = run_bench(quick="--quick" in sys.argv, parts=["loader"], log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(res, indent=2))
