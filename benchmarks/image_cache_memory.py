"""Peak memory of training's input pipeline with the image cache in memory and memory-mapped.

Usage: .venv/bin/python benchmarks/image_cache_memory.py [--sizes 96,224] [--note "..."]
Writes results/benchmarks/image_cache_memory.json. For each image size and each `image_cache`
mode, a fresh process loads the 10,617 rsna100 thumbnails (`rsna100` preprocessing, the cache in
data/cache, made beforehand and not measured), takes the training split of results/rsna100/split.csv and
iterates one epoch of `training.make_dataset` (shuffled, batches of 64) without a model. It
records the growth of the peak resident set (VmHWM, which counts the mapped cache pages the
epoch touched: the kernel can drop those, they are the page cache) and of the anonymous memory
(RssAnon, sampled every 5 ms: what the process itself holds), beyond the process after its
imports, and the input pipeline's images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from utils import config
from utils.evaluation import benchmark_machine_facts
from utils.files import write_json_atomic

OUTPUT = config.benchmarks_dir() / "image_cache_memory.json"
MODES = ("memory", "mmap")

MEASURE = """
import json, sys, threading, time
import numpy as np
import tensorflow as tf
from utils import config, data, preprocessing, study, training
from utils.parameters import load_parameters

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
mode, size = sys.argv[1], int(sys.argv[2])
prepare_only = len(sys.argv) > 3
parameters = load_parameters("rsna100", {"image_size": size, "image_cache": mode})
table = data.load_dataset(study.dataset_folder(parameters))
table = table[table["boneage"].notna()].reset_index(drop=True)
table["split"] = data.read_split(config.PROJECT_ROOT / "results" / "rsna100" / "split.csv", table).to_numpy()
if prepare_only:  # make the cache file, unmeasured
    study.load_images(table, parameters, progress=False)
    raise SystemExit(0)
list(training.make_dataset(np.zeros((2, size, size), np.uint8), np.zeros(2), np.zeros(2), batch_size=2, shuffle=True))
base_hwm, base_anon = status("VmHWM"), status("RssAnon")
peak = [base_anon]
running = True
def sample():
    while running:
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.005)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
images = study.load_images(table, parameters, progress=False, mmap=mode == "mmap")
train = study.split_arrays(table, images, "train")
start = time.perf_counter()
count = sum(int(batch[1].shape[0]) for batch in training.make_dataset(*train, batch_size=64, shuffle=True, seed=42))
seconds = time.perf_counter() - start
running = False
thread.join()
print(json.dumps({"image_cache": mode, "image_size": size, "images": len(table), "train_images": count,
                  "cache_megabytes": round(len(table) * size * size / 1e6, 1),
                  "peak_rss_growth_megabytes": round((status("VmHWM") - base_hwm) / 1e6, 1),
                  "peak_anonymous_growth_megabytes": round((peak[0] - base_anon) / 1e6, 1),
                  "epoch_seconds": round(seconds, 2), "input_images_per_second": round(count / seconds)}))
"""


def measure(mode: str, size: int, prepare_only: bool = False) -> dict:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run([sys.executable, "-c", MEASURE, mode, str(size), *(["prepare"] if prepare_only else [])],
                               capture_output=True, text=True, cwd=config.PROJECT_ROOT, env=environment, check=False)
    if prepare_only:
        return {}
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines()
        return {"image_cache": mode, "image_size": size, "error": lines[-1] if lines else "failed"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="96,224")
    parser.add_argument("--note", default="")
    arguments = parser.parse_args(argv)
    sizes = [int(size) for size in arguments.sizes.split(",")]
    for size in sizes:  # the cache files first, so that neither mode pays for decoding
        measure("memory", size, prepare_only=True)
    load_before = os.getloadavg()
    rows = [measure(mode, size) for size in sizes for mode in MODES]
    record = {
        "what": "peak memory of one epoch of training.make_dataset over the rsna100 training split, image cache in "
                "memory vs memory-mapped (image_cache: mmap)",
        "command": "python benchmarks/image_cache_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": rows,
        **benchmark_machine_facts(load_before, arguments.note),
    }
    write_json_atomic(OUTPUT, record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
