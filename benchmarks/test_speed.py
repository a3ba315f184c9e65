"""Wall time of the fast tests (issue 10: `make test-fast` under a minute on 2 cores).

Usage: .venv/bin/python benchmarks/test_speed.py [--runs 2] [--note "..."]
Writes results/benchmarks/test_speed.json. Each run is `make test-fast` itself (quiet output through
PYTEST_ADDOPTS), in a subprocess from the project root, after one untimed `make setup`; the file records
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
# The Makefile is the one home of the fast tests' options; these only quieten pytest's output.
COMMAND = ["make", "--no-print-directory", "test-fast"]
ENVIRONMENT = {**os.environ, "PYTEST_ADDOPTS": "-q -p no:cacheprovider"}


def time_tests() -> dict:
    speed = machine_speed_now()
    started = time.perf_counter()
    completed = subprocess.run(COMMAND, cwd=config.PROJECT_ROOT, env=ENVIRONMENT, capture_output=True, text=True,
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
    subprocess.run(["make", "--no-print-directory", "setup"], cwd=config.PROJECT_ROOT, check=True)  # never timed
    load_before = os.getloadavg()
    runs = []
    for _ in range(arguments.runs):
        runs.append(time_tests())
        print(json.dumps(runs[-1]), flush=True)
    record = {
        "what": "wall time of the fast tests, as `make test-fast` runs them",
        "command": "python benchmarks/test_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tests_command": f"PYTEST_ADDOPTS='{ENVIRONMENT['PYTEST_ADDOPTS']}' " + " ".join(COMMAND),
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
