"""Wall time of a sweep with one worker against two (issue 15): does `--jobs 2` pay on this machine?

Usage: .venv/bin/python benchmarks/sweep_speed.py [--preset ci] [--seeds 1,2] [--jobs 1,2] [--note "..."]
Writes results/benchmarks/sweep_speed.json. Each setting is the command a user types,
`python -m utils.pipeline --preset PRESET --sweep seed=SEEDS --jobs J`, run in a subprocess with
the results and models roots redirected to a temporary folder (nothing lands in the repository's
results/ or models/, and no setting resumes another's checkpoints). The wall time and each run's
minutes are read from the sweep's own sweep.json. The file records the machine's numpy float32
matmul speed before each setting and the load average, because neighbours on a shared machine
change the numbers; say in `note` what else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from utils import config, sweep
from utils.evaluation import benchmark_machine_facts, machine_speed_now, matmul_gflops
from utils.files import write_json_atomic

OUTPUT = config.benchmarks_dir() / "sweep_speed.json"


def time_sweep(preset: str, seeds: list[int], jobs: int, root: Path) -> dict:
    command = ["-m", "utils.pipeline", "--preset", preset, "--sweep", "seed=" + ",".join(map(str, seeds)),
               "--jobs", str(jobs)]
    environment = {**os.environ, "BONE_AGE_RESULTS_DIR": str(root / "results"),
                   "BONE_AGE_MODELS_DIR": str(root / "models")}
    speed = machine_speed_now()
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, *command], cwd=config.PROJECT_ROOT, env=environment,
                               capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"python {' '.join(command)} failed:\n{completed.stderr.strip()[-2000:]}")
    name = sweep.plan(preset, {}, [("seed", seeds)]).name
    record = json.loads((root / "results" / name / "sweep.json").read_text(encoding="utf-8"))
    return {
        "jobs": jobs,
        "command": "python " + " ".join(command),
        "wall_seconds": record["wall_seconds"],
        "command_seconds": round(seconds, 1),
        "run_seconds": {run["run_name"]: run["seconds"] for run in record["runs"]},
        **speed,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ci")
    parser.add_argument("--seeds", default="1,2", help="the sweep's seeds, comma-separated")
    parser.add_argument("--jobs", default="1,2", help="the worker counts to time, comma-separated")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    arguments = parser.parse_args(argv)
    try:
        seeds = [int(seed) for seed in arguments.seeds.split(",")]
        jobs = [int(count) for count in arguments.jobs.split(",")]
    except ValueError:
        parser.error(f"--seeds and --jobs take comma-separated integers, got {arguments.seeds!r} and {arguments.jobs!r}")
    load_before = os.getloadavg()
    settings = []
    for count in jobs:
        # A fresh root per setting: the second must not find the first's finished runs.
        with tempfile.TemporaryDirectory(prefix="bone-age-sweep-speed-") as root:
            settings.append(time_sweep(arguments.preset, seeds, count, Path(root)))
            print(json.dumps(settings[-1]), flush=True)
    first = settings[0]["wall_seconds"]
    for setting in settings:
        setting["speed_up_vs_first"] = round(first / setting["wall_seconds"], 2)
    record = {
        "what": f"wall time of a {len(seeds)}-run seed sweep of the {arguments.preset} preset by number of Dask workers",
        "command": "python benchmarks/sweep_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "preset": arguments.preset,
        "seeds": seeds,
        "settings": settings,
        "numpy_fp32_matmul_gflops": round(matmul_gflops(), 1),
        **benchmark_machine_facts(load_before, arguments.note),
    }
    write_json_atomic(OUTPUT, record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
