"""Throughput of `preprocess_paths` (no cache) on the real data, against its alternatives.

Usage: .venv/bin/python benchmarks/preprocessing_throughput.py [--repeats 3]
Writes results/benchmarks/preprocessing_throughput.json. Each mode runs `repeats` times after
one untimed pass that warms the disk cache; the best time counts, since on a shared machine the
other runs measure the neighbours. Modes: "threads" is `preprocess_paths` itself; "serial" is one
core; "processes" is a ProcessPoolExecutor over all cores (spawned workers: their start-up counts),
the alternative threads were chosen over.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone

import cv2
import numpy as np

from utils import config
from utils.files import write_json_atomic
from utils.preprocessing import _preprocess_file, preprocess_paths

DATA_ROOT = config.SHARED_DATA_DIR
OUTPUT = config.benchmarks_dir() / "preprocessing_throughput.json"
# Image folders are globbed directly: the benchmark measures decoding, not the label loader.
WORKLOADS = {
    "rsna-bone-age-100": {"pattern": "rsna-bone-age-100/*/*.png", "image_size": 96, "pad_to_square": False},
    "rsna-fullres-sample": {"pattern": "rsna-fullres-sample/*/*.png", "image_size": 256, "pad_to_square": True},
}
CONTRAST = "clahe"


def run_threads(paths, image_size, pad_to_square):
    return preprocess_paths(paths, image_size, pad_to_square=pad_to_square, contrast=CONTRAST, progress=False)


def run_serial(paths, image_size, pad_to_square):
    return np.stack([_preprocess_file(path, image_size, pad_to_square, CONTRAST) for path in paths])


def run_processes(paths, image_size, pad_to_square):
    work = functools.partial(_preprocess_file, image_size=image_size, pad_to_square=pad_to_square, contrast=CONTRAST)
    # "spawn": a forked child inherits OpenCV's thread pool in a locked state and can hang (seen here).
    with ProcessPoolExecutor(max_workers=os.cpu_count(), mp_context=multiprocessing.get_context("spawn")) as executor:
        # Chunks amortise the pickling round trip of each small image.
        return np.stack(list(executor.map(work, paths, chunksize=max(1, len(paths) // (8 * os.cpu_count())))))


MODES = {"threads": run_threads, "serial": run_serial, "processes": run_processes}


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def benchmark_workload(name: str, workload: dict, repeats: int) -> dict:
    paths = sorted(str(path) for path in DATA_ROOT.glob(workload["pattern"]))
    if not paths:
        raise FileNotFoundError(f"no images match {DATA_ROOT / workload['pattern']}")
    arguments = (paths, workload["image_size"], workload["pad_to_square"])
    reference = run_threads(*arguments)  # untimed: warms the disk cache
    result = {
        "n_images": len(paths),
        "image_size": workload["image_size"],
        "pad_to_square": workload["pad_to_square"],
        "contrast": CONTRAST,
        "modes": {},
    }
    for mode, run in MODES.items():
        seconds, cpu_seconds = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), _cpu_seconds()
            images = run(*arguments)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(_cpu_seconds() - start_cpu)
        result["modes"][mode] = {
            "seconds": [round(value, 3) for value in seconds],
            "images_per_second": round(len(paths) / min(seconds), 1),
            # CPU time of this process and its worker processes: how much of the 2 cores a mode uses.
            "cpu_seconds": [round(value, 3) for value in cpu_seconds],
            "identical_to_threads": bool(np.array_equal(images, reference)),
        }
        print(f"{name:22s} {mode:10s} {result['modes'][mode]['images_per_second']:9.1f} images/s  {seconds}")
    result["images_per_second"] = result["modes"]["threads"]["images_per_second"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    report = {
        "benchmark": "preprocess_paths throughput (decode + pad/resize + CLAHE, no cache)",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(value, 2) for value in os.getloadavg()],
            "platform": platform.platform(),
            "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads(),
        },
        "repeats": arguments.repeats,
        "workloads": {
            name: benchmark_workload(name, workload, arguments.repeats) for name, workload in WORKLOADS.items()
        },
    }
    report["machine"]["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    write_json_atomic(OUTPUT, report)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
