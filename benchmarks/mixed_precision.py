"""Training speed of our network under each Keras dtype policy on this machine (a short timing).

Usage: .venv/bin/python benchmarks/mixed_precision.py [--steps 24] [--rounds 2] [--image-size 96] [--batch-size 64]
Writes results/benchmarks/mixed_precision.json. Each policy runs in its own process (the policy
is global state of Keras) on random images: a few warm-up steps, then `steps` timed training
steps of the `rsna100` network (96 px). The policies take turns, `rounds` times, so that a
neighbour's load that changes meanwhile does not favour one of them; the best round counts. The file records the machine's numpy float32 matmul
speed (`evaluation.matmul_gflops`) and the load average before and after, because on a shared
machine the neighbours change the numbers; say in `note` what else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from utils import config
from utils.evaluation import benchmark_machine_facts, cpuinfo_fields, matmul_gflops
from utils.files import write_json_atomic

OUTPUT = config.benchmarks_dir() / "mixed_precision.json"
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
WARMUP_STEPS = 3

TIMING = """
import json, sys, time
import keras, numpy as np
from utils import model
from utils.parameters import load_parameters
policy, steps, size, batch, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
parameters = load_parameters("rsna100", {"image_size": size, "batch_size": batch})
model.set_precision("none" if policy == "float32" else policy)
keras.utils.set_random_seed(0)
network = model.build_for_run(parameters, target_mean=127.0, target_std=41.0)
model.compile_model(network, architecture="ours", learning_rate=parameters.learning_rate, steps_per_epoch=100,
                    epochs=10, **parameters.training_options())
rng = np.random.default_rng(0)
inputs = model.model_inputs(rng.integers(0, 256, (batch, size, size), dtype=np.uint8), rng.integers(0, 2, batch))
target = rng.uniform(0, 228, (batch, 1)).astype(np.float32)
for _ in range(warmup):
    network.train_on_batch(inputs, target)
start = time.perf_counter()
for _ in range(steps):
    loss = network.train_on_batch(inputs, target)
seconds = time.perf_counter() - start
print(json.dumps({"policy": policy, "steps": steps, "seconds": seconds, "train_images_per_second": steps * batch / seconds,
                  "final_loss_finite": bool(np.isfinite(np.asarray(loss, dtype=float)).all())}))
"""


def time_policy(policy: str, steps: int, image_size: int, batch_size: int) -> dict:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run(
        [sys.executable, "-c", TIMING, policy, str(steps), str(image_size), str(batch_size), str(WARMUP_STEPS)],
        capture_output=True, text=True, cwd=config.PROJECT_ROOT, env=environment, check=False,
    )
    if completed.returncode != 0:
        return {"policy": policy, "error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _cpu_flags() -> list[str]:
    """The CPU's bfloat16/float16/int8 instruction sets (Linux), which decide whether low precision pays."""
    flags = set(cpuinfo_fields().get("flags", "").split())
    return sorted(flags & {"avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_int8", "avx512_vnni", "avx_vnni",
                           "f16c"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="turns of every policy, interleaved")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    arguments = parser.parse_args(argv)
    load_before, gflops = os.getloadavg(), matmul_gflops()
    rounds = [[time_policy(policy, arguments.steps, arguments.image_size, arguments.batch_size) for policy in POLICIES]
              for _ in range(arguments.rounds)]
    results = []
    for policy in POLICIES:
        runs = [row for turn in rounds for row in turn if row["policy"] == policy and "error" not in row]
        best = max(runs, key=lambda row: row["train_images_per_second"]) if runs else \
            next(row for turn in rounds for row in turn if row["policy"] == policy)
        results.append({**best, "train_images_per_second_each_round": [round(row["train_images_per_second"], 1)
                                                                      for row in runs]})
    reference = next((row["train_images_per_second"] for row in results if row["policy"] == "float32" and "error" not in row), None)
    for row in results:
        if reference and "train_images_per_second" in row:
            row["speed_vs_float32"] = round(row["train_images_per_second"] / reference, 3)
    record = {
        "what": "training steps per second of our network (rsna100 settings) under each Keras dtype policy, CPU",
        "command": "python benchmarks/mixed_precision.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "image_size": arguments.image_size,
        "batch_size": arguments.batch_size,
        "timed_steps": arguments.steps,
        "rounds": arguments.rounds,
        "warmup_steps": WARMUP_STEPS,
        "results": results,
        "numpy_fp32_matmul_gflops": round(gflops, 1),
        "cpu_low_precision_flags": _cpu_flags(),
        **benchmark_machine_facts(load_before, arguments.note),
    }
    write_json_atomic(OUTPUT, record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
