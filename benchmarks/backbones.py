"""Cost table: training and inference images/s of every network at 96, 160 and 224 px on this machine.

Usage: .venv/bin/python benchmarks/backbones.py [--sizes 96,160,224] [--architectures ours,efficientnetv2b0,...]
                                               [--train-steps 8] [--batch-size 16] [--note "..."]
Writes results/benchmarks/backbones.json and prints the table as Markdown for the README. Each
(network, size) runs in its own process on random images, random weights (speed does not depend
on them): a warm-up step, then `train-steps` timed training steps (train_on_batch, augmentation
on, the run's optimizer) and inference over `inference-batches` batches of 64 (Keras predict,
no TTA). Run it on an idle machine: it takes both cores for a while (30-60 minutes here, most of
it the large networks at 224 px); each cell records the numpy fp32 matmul speed and the load
average measured just before it, and the file is rewritten after every cell.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from utils import config
from utils.evaluation import benchmark_machine_facts, matmul_gflops
from utils.files import write_json_atomic
from utils.parameters import ARCHITECTURES, BACKBONE_MIN_IMAGE_SIZE

OUTPUT = config.benchmarks_dir() / "backbones.json"
DEFAULT_ARCHITECTURES = tuple(name for name in ARCHITECTURES if name != "seed_baseline")
DEFAULT_SIZES = (96, 160, 224)

TIMING = """
import json, sys, time
import keras, numpy as np
from utils import model
from utils.parameters import load_parameters
architecture, size, batch, train_steps, inference_batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
parameters = load_parameters("rsna100", {"architecture": architecture, "image_size": size, "batch_size": batch})
keras.utils.set_random_seed(0)
network = model.build_for_run(parameters, target_mean=127.0, target_std=41.0)
model.compile_model(network, architecture=architecture, learning_rate=parameters.learning_rate, steps_per_epoch=100,
                    epochs=10, **parameters.training_options())
rng = np.random.default_rng(0)
inputs = model.model_inputs(rng.integers(0, 256, (batch, size, size), dtype=np.uint8), rng.integers(0, 2, batch))
target = rng.uniform(0, 228, (batch, 1)).astype(np.float32)
network.train_on_batch(inputs, target)
start = time.perf_counter()
for _ in range(train_steps):
    network.train_on_batch(inputs, target)
train_seconds = time.perf_counter() - start
images = rng.integers(0, 256, (64 * inference_batches, size, size), dtype=np.uint8)
male = rng.integers(0, 2, len(images))
model.predict_months(network, images[:64], male[:64], batch_size=64)
start = time.perf_counter()
model.predict_months(network, images, male, batch_size=64)
inference_seconds = time.perf_counter() - start
print(json.dumps({"architecture": architecture, "image_size": size, "parameters": network.count_params(),
                  "train_images_per_second": train_steps * batch / train_seconds,
                  "inference_images_per_second": len(images) / inference_seconds}))
"""


def time_one(architecture: str, size: int, batch_size: int, train_steps: int, inference_batches: int) -> dict:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run(
        [sys.executable, "-c", TIMING, architecture, str(size), str(batch_size), str(train_steps), str(inference_batches)],
        capture_output=True, text=True, cwd=config.PROJECT_ROOT, env=environment, check=False,
    )
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines()
        return {"architecture": architecture, "image_size": size, "error": lines[-1] if lines else "failed"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], sizes: list[int]) -> str:
    header = "| network | parameters | " + " | ".join(f"train / infer images/s, {size} px" for size in sizes) + " |"
    lines = [header, "| --- | ---: | " + " | ".join("---:" for _ in sizes) + " |"]
    for architecture in dict.fromkeys(row["architecture"] for row in rows):
        cells, parameters = [], "—"
        for size in sizes:
            row = next((row for row in rows if row["architecture"] == architecture and row["image_size"] == size), None)
            if row is None or "error" in row:
                cells.append("—")
                continue
            parameters = f"{row['parameters'] / 1e6:.1f} M"
            cells.append(f"{row['train_images_per_second']:.1f} / {row['inference_images_per_second']:.0f}")
        lines.append(f"| `{architecture}` | {parameters} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", default=",".join(DEFAULT_ARCHITECTURES))
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--inference-batches", type=int, default=4)
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    arguments = parser.parse_args(argv)
    architectures = [name for name in arguments.architectures.split(",") if name]
    unknown = sorted(set(architectures) - set(ARCHITECTURES))
    if unknown:
        parser.error(f"unknown architecture(s) {unknown}; known: {', '.join(ARCHITECTURES)}")
    sizes = [int(size) for size in arguments.sizes.split(",") if size]
    load_before, gflops = os.getloadavg(), matmul_gflops()
    rows = []

    def write(complete: bool) -> None:
        # After every cell: an interrupted table keeps what it measured, marked incomplete.
        write_json_atomic(OUTPUT, {
            "what": "training and inference images/s of each network (random weights, random images), CPU, Keras",
            "command": "python benchmarks/backbones.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "complete": complete,
            "batch_size": arguments.batch_size,
            "train_steps": arguments.train_steps,
            "inference_images": 64 * arguments.inference_batches,
            "results": rows,
            "numpy_fp32_matmul_gflops": round(gflops, 1),
            **benchmark_machine_facts(load_before, arguments.note),
        })

    for architecture in architectures:
        for size in sizes:
            if size < BACKBONE_MIN_IMAGE_SIZE.get(architecture, 0):
                rows.append({"architecture": architecture, "image_size": size,
                             "error": f"needs at least {BACKBONE_MIN_IMAGE_SIZE[architecture]} px"})
                continue
            # The machine's speed drifts over a long table (shared cores): each cell records its own.
            cell_gflops, cell_load = matmul_gflops(), os.getloadavg()[0]
            rows.append({**time_one(architecture, size, arguments.batch_size, arguments.train_steps,
                                    arguments.inference_batches),
                         "numpy_fp32_matmul_gflops": round(cell_gflops, 1), "load_average_1_min": round(cell_load, 2)})
            print(json.dumps(rows[-1]), flush=True)
            write(complete=False)
    write(complete=True)
    print(markdown(rows, sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
