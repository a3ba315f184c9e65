"""Wall time of the fast tests (issue 10: `make test-fast` under a minute on 2 cores).

Usage: .venv/bin/python benchmarks/test_speed.py [--runs 2] [--note "..."]
Writes results/benchmarks/test_speed.json. Each run is the command `make test-fast` runs,
`python -m pytest -m "not slow" -n auto --dist loadscope`, in a subprocess from the project root; the file records
each run's wall time and pytest's count of passed tests, the machine's numpy float32 matmul
speed before each run and the load average, because neighbours on a shared machine change the
numbers; say in `note` what else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

from utils import config
from utils.evaluation import benchmark_machine_facts, machine_speed_now
from utils.files import write_json_atomic

OUTPUT = config.benchmarks_dir() / "test_speed.json"
COMMAND = ["-m", "pytest", "-m", "not slow", "-n", "auto", "--dist", "loadscope", "-q", "-p", "no:cacheprovider"]


def time_tests() -> dict:
    speed = machine_speed_now()
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, *COMMAND], cwd=config.PROJECT_ROOT, capture_output=True, text=True,
                               check=False)
    seconds = time.perf_counter() - started
    summary = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else completed.stderr.strip()
    if completed.returncode != 0:
        raise RuntimeError(f"the fast tests failed: {summary}")
    passed = re.search(r"(\d+) passed", summary)
    return {
        "wall_seconds": round(seconds, 1),
        "passed": int(passed.group(1)) if passed else None,
        "pytest_summary": summary,
        **speed,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="timed runs (the median and each are recorded)")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    arguments = parser.parse_args(argv)
    if arguments.runs < 1:
        parser.error(f"--runs: expected an integer >= 1, got {arguments.runs}")
    load_before = os.getloadavg()
    runs = []
    for _ in range(arguments.runs):
        runs.append(time_tests())
        print(json.dumps(runs[-1]), flush=True)
    record = {
        "what": "wall time of the fast tests, as `make test-fast` runs them",
        "command": "python benchmarks/test_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tests_command": "python " + " ".join(COMMAND),
        "median_wall_seconds": round(statistics.median(run["wall_seconds"] for run in runs), 1),
        "target_seconds": 60,
        "runs": runs,
        **benchmark_machine_facts(load_before, arguments.note),
    }
    write_json_atomic(OUTPUT, record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
