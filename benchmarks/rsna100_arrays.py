"""Load rsna-bone-age-100 once into uint8 arrays (cached as .npy in /tmp) and split it like the pipeline.

Used by the model-search benchmarks so that each experiment starts in seconds. Images are
read with OpenCV, given CLAHE contrast on the 100 px thumbnail, then resized to the model size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from utils import config

DATASET = config.PROJECT_ROOT.parent / "shared" / "data" / "rsna-bone-age-100"
CACHE = Path("/tmp/boneage_bench")
AGE_EDGES = [0, 24, 60, 120, 180, 240]  # the contract's AGE_BANDS, months


def labels() -> pd.DataFrame:
    table = pd.read_csv(DATASET / "boneage-training-dataset.csv")
    table["male"] = table["male"].astype(str).str.lower().eq("true")
    return table


def images(table: pd.DataFrame, image_size: int, contrast: str = "clahe") -> np.ndarray:
    """uint8 (N, S, S), cached per (size, contrast)."""
    cache_file = CACHE / f"rsna100_{image_size}_{contrast}_{len(table)}.npy"
    if cache_file.exists():
        return np.load(cache_file)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    array = np.empty((len(table), image_size, image_size), np.uint8)
    for row, image_id in enumerate(table["id"]):
        image = cv2.imread(str(DATASET / "boneage-training-dataset" / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
        if contrast == "clahe":
            image = clahe.apply(image)
        if image.shape[0] != image_size:
            image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
        array[row] = image
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache_file, array)
    return array


def split(table: pd.DataFrame, seed: int = 42) -> np.ndarray:
    """'train' 75% / 'validation' 10% / 'test' 15%, stratified by age band x sex, seeded."""
    strata = pd.cut(table["boneage"], AGE_EDGES, right=False, labels=False).astype(str) + table["male"].astype(str)
    index = np.arange(len(table))
    rest, test = train_test_split(index, test_size=0.15, stratify=strata, random_state=seed)
    train, validation = train_test_split(rest, test_size=0.10 / 0.85, stratify=strata.iloc[rest], random_state=seed)
    names = np.empty(len(table), dtype=object)
    names[train], names[validation], names[test] = "train", "validation", "test"
    return names


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 80, 96, 100])
    parser.add_argument("--contrast", default="clahe")
    arguments = parser.parse_args()
    table = labels()
    for size in arguments.sizes:
        print(size, images(table, size, arguments.contrast).shape, flush=True)
    print(pd.Series(split(table)).value_counts())
