"""Model search on rsna-bone-age-100: what gives the most accuracy per CPU minute.

  python benchmarks/model_search.py throughput            # training/inference images/s per config
  python benchmarks/model_search.py train NAME [NAME...]  # fit named configs under a time budget

Results are merged into results/benchmarks/model_search.json (one entry per config name);
checkpoints go to /tmp/boneage_bench/<name>/ so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rsna100_arrays  # noqa: E402

from utils import config  # noqa: E402
from utils.files import write_json_atomic  # noqa: E402
from utils.model import build_model, measure_inference_speed, predict_months  # noqa: E402
from utils.training import make_dataset, train_model  # noqa: E402

RESULTS = config.RESULTS_DIR / "benchmarks" / "model_search.json"
WORK = Path("/tmp/boneage_bench")

BASE = {"architecture": "ours", "image_size": 96, "batch_size": 64, "learning_rate": 2e-3, "epochs": 14, "budget": 420, "options": {}}
CONFIGS = {
    "ours_96": {},
    "ours_64": {"image_size": 64},
    "ours_80": {"image_size": 80},
    "ours_100": {"image_size": 100},
    "ours_96_narrow": {"options": {"widths": (16, 32, 64, 128)}},
    "ours_96_separable": {"options": {"separable": True}},
    "ours_96_stem1": {"options": {"stem_stride": 1, "widths": (16, 32, 64, 128)}},
    "ours_96_deep": {"options": {"widths": (32, 64, 128, 256, 256)}},
    "ours_96_flip": {"options": {"horizontal_flip": True}},
    "ours_96_b32": {"batch_size": 32},
    "ours_96_b128": {"batch_size": 128, "learning_rate": 3e-3},
    "seed_96": {"architecture": "seed_baseline", "batch_size": 32, "learning_rate": 1e-3},
    "seed_64": {"architecture": "seed_baseline", "image_size": 64, "batch_size": 32, "learning_rate": 1e-3},
}


def settings(name: str, overrides: dict | None = None) -> dict:
    return {**BASE, **CONFIGS[name], **(overrides or {})}


def load_data(image_size: int):
    table = rsna100_arrays.labels()
    images = rsna100_arrays.images(table, image_size)
    split = rsna100_arrays.split(table)
    parts = {
        name: (images[split == name], table["male"].to_numpy()[split == name], table["boneage"].to_numpy(np.float32)[split == name])
        for name in ("train", "validation", "test")
    }
    return parts


def merge_result(name: str, result: dict) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[name] = result
    write_json_atomic(RESULTS, results)


def throughput(names: list[str], steps: int = 25) -> None:
    """Training images/s on real batches (after a warm-up), and inference speed, per config."""
    for name in names:
        run = settings(name)
        data = load_data(run["image_size"])
        mean, std = float(data["train"][2].mean()), float(data["train"][2].std())
        keras.utils.set_random_seed(0)
        model = build_model(run["image_size"], architecture=run["architecture"], target_mean=mean, target_std=std, **run["options"])
        model.compile(optimizer="adam", loss="mae")
        dataset = make_dataset(*data["train"], batch_size=run["batch_size"], shuffle=True).repeat()
        model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0)  # trace
        start = time.perf_counter()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        train_rate = steps * run["batch_size"] / (time.perf_counter() - start)
        inference = measure_inference_speed(model, run["image_size"], n=1024)
        row = {"train_images_per_second": train_rate, "parameters": model.count_params(), **inference}
        print(name, json.dumps(row), flush=True)
        merge_result(f"throughput/{name}", {"settings": run, **row})


def within(y_true, y_pred, months=12.0) -> float:
    return float(np.mean(np.abs(y_pred - y_true) <= months) * 100)


def train(name: str, overrides: dict | None = None) -> None:
    run = settings(name, overrides)
    data = load_data(run["image_size"])
    train_part, validation, test = data["train"], data["validation"], data["test"]
    mean, std = float(train_part[2].mean()), float(train_part[2].std())
    keras.utils.set_random_seed(42)
    model = build_model(run["image_size"], architecture=run["architecture"], target_mean=mean, target_std=std, **run["options"])
    start = time.perf_counter()
    history = train_model(
        model, train_part, validation,
        checkpoint_dir=WORK / name, history_path=WORK / name / "history.json",
        epochs=run["epochs"], batch_size=run["batch_size"], learning_rate=run["learning_rate"],
        patience=run["epochs"], seed=42, time_budget_seconds=run["budget"], architecture=run["architecture"],
    )
    wall = time.perf_counter() - start
    result = {"settings": run, "wall_seconds": wall, "parameters": model.count_params(), "history": history}
    for split_name, (images, male, boneage) in (("validation", validation), ("test", test)):
        for tta in (False, True):
            start = time.perf_counter()
            predicted = predict_months(model, images, male, tta=tta)
            key = f"{split_name}{'_tta' if tta else ''}"
            result[key] = {
                "mae": float(np.mean(np.abs(predicted - boneage))),
                "within_12_pct": within(boneage, predicted),
                "images_per_second": len(images) / (time.perf_counter() - start),
            }
    result["inference"] = measure_inference_speed(model, run["image_size"], n=1024)
    print(name, json.dumps({key: result[key] for key in ("validation", "validation_tta", "test", "test_tta", "wall_seconds")}), flush=True)
    merge_result(name, result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("throughput", "train"))
    parser.add_argument("names", nargs="*")
    parser.add_argument("--set", default="{}", help="JSON overrides of the settings, e.g. '{\"budget\": 900}'")
    parser.add_argument("--suffix", default="", help="appended to the result name")
    arguments = parser.parse_args()
    names = arguments.names or list(CONFIGS)
    if arguments.mode == "throughput":
        throughput(names)
    else:
        overrides = json.loads(arguments.set)
        for name in names:
            # A suffix names the variant, so that it does not overwrite the plain config's result.
            CONFIGS[name + arguments.suffix] = {**CONFIGS[name], **overrides}
            train(name + arguments.suffix)
