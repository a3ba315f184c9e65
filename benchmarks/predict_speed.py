"""Speed of the prediction command: cold start for one image, and throughput on a folder.

Usage: .venv/bin/python benchmarks/predict_speed.py [--model DIR] [--runs 5] [--repeats 3] [--out FILE]
Writes results/benchmarks/predict_speed.json (or FILE: another model's numbers beside the shipped one's).

- cold start: wall time of `python -m utils.predict one.png --sex F` in a fresh process (imports,
  model load, decode, predict, print), `runs` times after one untimed run that warms the disk
  cache; the median counts. Targets: <= 1.5 s (issue 11), and no TensorFlow import on the ONNX path.
- folder: the 10,617 images of ../shared/data/rsna-bone-age-100 (or a synthetic folder when that
  is absent), in process: model load, table loading (load_dataset's checks), then decoding and
  prediction, `repeats` times, whose images/s is the throughput after start-up (target >= 300; the
  best pass counts, since on a shared machine the slower ones measure the neighbours; the median
  is reported too). The whole command on the folder is timed once as well.

The model is models/rsna100 when it has been trained and exported; otherwise the same
architecture and input size, untrained, in a temporary folder (the speed does not depend on the
weights). The JSON says which.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime

from utils import config
from utils.parameters import load_parameters
from utils.evaluation import benchmark_machine_facts, matmul_gflops
from utils.files import write_json_atomic
from utils.predict import folder_table, load_predictor

DATA_FOLDER = config.RSNA100_DIR
OUTPUT = config.benchmarks_dir() / "predict_speed.json"
PRESET = "rsna100"
SYNTHETIC_IMAGES = 3000
QUALITY_IMAGES = 300


def untrained_model_dir(folder: Path, data_folder: Path) -> Path:
    """The preset's architecture at its image size, untrained, exported like a trained run's."""
    from utils.conformal import fit_conformal
    from utils.model_card import ModelCard
    from utils.onnx_runtime import export_onnx
    from utils.model import build_for_run
    from utils.preprocessing import load_images
    from utils.quality import QualityReference

    parameters = load_parameters(PRESET)
    model = build_for_run(parameters, target_mean=127.0, target_std=41.0, shipped=True)
    model.save(folder / config.MODEL_FILE)
    export_onnx(model, folder / config.ONNX_FILE)
    table, _ = folder_table(data_folder)
    images = load_images(
        table.head(QUALITY_IMAGES), parameters.image_size, pad_to_square=parameters.pad_to_square,
        contrast=parameters.contrast, cache_dir=folder, progress=False,
    )
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 228, 500)
    card = ModelCard.from_run(
        parameters,
        calibration=fit_conformal(truth, truth + rng.normal(0, 10, 500)).to_dict(),
        quality_reference=QualityReference.fit(images).to_dict(),
        target_mean=127.0,
        target_std=41.0,
        metrics={},
        split_counts={},
        git_commit="untrained",
    )
    card.write(folder / config.MODEL_CARD_FILE)
    return folder


def benchmark_data(scratch: Path) -> tuple[Path, str]:
    if DATA_FOLDER.is_dir():
        return DATA_FOLDER, "real (rsna-bone-age-100)"
    from utils.synthetic import generate_dataset

    folder = generate_dataset(scratch / "synthetic", SYNTHETIC_IMAGES, image_size=128, progress=False)
    return folder, f"synthetic ({SYNTHETIC_IMAGES} images, 128 px)"


def timed_command(arguments: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "utils.predict", *arguments], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"utils.predict {' '.join(arguments)} failed: {result.stderr.strip()}")
    return seconds


def cold_start(model_dir: Path, image: Path, runs: int) -> dict:
    arguments = [str(image), "--sex", "F", "--model", str(model_dir)]
    timed_command(arguments)  # warms the disk cache
    seconds = [timed_command(arguments) for _ in range(runs)]
    check = (
        "import sys, utils.predict as p; p.main(sys.argv[1:]);"
        "sys.stderr.write(str(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)))"
    )
    imported = subprocess.run([sys.executable, "-c", check, *arguments], capture_output=True, text=True)
    return {
        "command": f"python -m utils.predict {image.name} --sex F --model <model dir>",
        "seconds": [round(value, 3) for value in seconds],
        "median_seconds": round(statistics.median(seconds), 3),
        "target_seconds": 1.5,
        "heavy_modules_imported": imported.stderr.strip().splitlines()[-1],
    }


def folder_throughput(model_dir: Path, folder: Path, scratch: Path, repeats: int) -> dict:
    start = time.perf_counter()
    predictor = load_predictor(model_dir)
    loaded = time.perf_counter()
    table, errors = folder_table(folder)
    tabled = time.perf_counter()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictions, decode_errors = predictor.predict_table(table)
        seconds.append(time.perf_counter() - started)
    model_only = _model_throughput(predictor, n=2048)
    command_seconds = timed_command([str(folder), "--model", str(model_dir), "--out", str(scratch / "predictions.csv")])
    return {
        "n_images": len(table) + len(errors),
        "n_predicted": len(predictions),
        "n_left_out": len(errors) + len(decode_errors),
        "model_load_seconds": round(loaded - start, 3),
        "table_seconds": round(tabled - loaded, 3),
        "decode_and_predict_seconds": [round(value, 3) for value in seconds],
        "images_per_second_after_start_up": round(len(table) / min(seconds), 1),
        "images_per_second_after_start_up_median": round(len(table) / statistics.median(seconds), 1),
        "target_images_per_second": 300,
        "model_only_images_per_second": model_only,
        "command": "python -m utils.predict <folder> --model <model dir> --out predictions.csv",
        "command_seconds": round(command_seconds, 3),
        "command_images_per_second": round(len(predictions) / command_seconds, 1),
    }


def _model_throughput(predictor, n: int) -> float:
    """ONNX inference alone on random images: how much of the folder time is the network."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, predictor.image_size, predictor.image_size), dtype=np.uint8)
    male = rng.integers(0, 2, n)
    predictor.runtime.predict(images[:256], male[:256])
    start = time.perf_counter()
    predictor.runtime.predict(images, male)
    return round(n / (time.perf_counter() - start), 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder (default: models/rsna100 if exported)")
    parser.add_argument("--runs", type=int, default=5, help="timed cold starts (median reported)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the folder (best reported)")
    parser.add_argument("--note", default="", help="what else ran on the machine, recorded with the numbers")
    parser.add_argument("--out", type=Path, default=OUTPUT, help=f"the JSON file (default: {config.display_path(OUTPUT)})")
    arguments = parser.parse_args(argv)
    load_before, gflops = os.getloadavg(), matmul_gflops()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder, data_description = benchmark_data(scratch)
        model_dir = arguments.model or config.default_model_dir()
        if arguments.model is None and not (model_dir / "bone_age.onnx").is_file():
            model_dir = untrained_model_dir(Path(tempfile.mkdtemp(dir=scratch)), folder)
            model_description = f"untrained '{load_parameters(PRESET).architecture}' model of preset {PRESET} (no trained model yet)"
        else:
            model_description = str(model_dir)
        image = sorted((folder / "boneage-training-dataset").glob("*.png"))[0]
        results = {
            "benchmark": "python -m utils.predict: cold start (one image) and folder throughput",
            "numpy_fp32_matmul_gflops": round(gflops, 1),
            "onnxruntime": onnxruntime.__version__,
            "model": model_description,
            "image_size": load_predictor(model_dir).image_size,
            "data": data_description,
            "cold_start": cold_start(model_dir, image, arguments.runs),
            "folder": folder_throughput(model_dir, folder, scratch, arguments.repeats),
        }
    results.update(benchmark_machine_facts(load_before, arguments.note))
    write_json_atomic(arguments.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
