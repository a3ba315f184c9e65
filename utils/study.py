"""The steps more than one notebook needs: a run's data set, its split, its image arrays, its model card."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from utils import config, data, preprocessing, synthetic
from utils.files import write_json_atomic

SPLITS = ("train", "validation", "calibration", "test")


def dataset_folder(parameters: dict, progress: bool = True) -> Path:
    """The folder a run reads; the synthetic default is generated on first use."""
    if parameters["dataset"] == "synthetic":
        folder = config.SYNTHETIC_DIR / (
            f"n{parameters['synthetic_images']}_px{parameters['synthetic_image_size']}_seed{parameters['seed']}"
        )
        return synthetic.generate_dataset(
            folder,
            parameters["synthetic_images"],
            seed=parameters["seed"],
            image_size=parameters["synthetic_image_size"],
            progress=progress,
        )
    folder = Path(parameters["dataset"]).expanduser()
    if not folder.is_absolute():
        folder = config.PROJECT_ROOT / folder
    if not folder.is_dir():
        raise ValueError(f"dataset folder {folder} does not exist (parameter 'dataset')")
    return folder.resolve()


def dataset_name(parameters: dict) -> str:
    if parameters["dataset"] == "synthetic":
        return "synthetic"
    return Path(parameters["dataset"]).name


def load_table(parameters: dict, paths: config.RunPaths) -> pd.DataFrame:
    """The labelled rows of the run's data set (rows without a bone age cannot be studied)."""
    table = data.load_dataset(
        dataset_folder(parameters),
        drop_invalid=parameters["drop_invalid"],
        dropped_rows_csv=paths.dropped_rows if parameters["drop_invalid"] else None,
    )
    return table[table["boneage"].notna()].reset_index(drop=True)


def load_split_table(parameters: dict, paths: config.RunPaths) -> pd.DataFrame:
    """The table with the study split written by 02_preprocessing in column `split`."""
    if not paths.split.exists():
        raise ValueError(f"{paths.split} does not exist: run 02_preprocessing first")
    table = load_table(parameters, paths).rename(columns={"split": "source_split"})
    table["split"] = data.read_split(paths.split, table).to_numpy()
    return table


def load_images(table: pd.DataFrame, parameters: dict, progress: bool = True) -> np.ndarray:
    """Preprocessed uint8 images of `table`, from the cache after the first time."""
    return preprocessing.load_images(
        table,
        parameters["image_size"],
        pad_to_square=parameters["pad_to_square"],
        contrast=parameters["contrast"],
        progress=progress,
    )


def split_arrays(table: pd.DataFrame, images: np.ndarray, split: str):
    """(images, male, boneage) of one split, as the model and train_model take them."""
    mask = (table["split"] == split).to_numpy()
    return (
        images[mask],
        table.loc[mask, "male"].to_numpy(dtype="float32"),
        table.loc[mask, "boneage"].to_numpy(dtype="float32"),
    )


def run_command(preset: str, overrides: dict) -> str:
    """The runner command that reproduces a run."""
    # Values are read back as YAML, of which JSON is a part; strings go as they are.
    options = "".join(
        f" -p {name} {shlex.quote(value if isinstance(value, str) else json.dumps(value))}"
        for name, value in overrides.items()
    )
    return f"python -m utils.pipeline --preset {preset}{options}"


def write_model_card(paths: config.RunPaths, parameters: dict, **content) -> Path:
    """models/<run>/model_card.json: what the prediction CLI needs, and what a reader should know."""
    card = {
        "model": paths.model.name,
        "image_size": parameters["image_size"],
        "pad_to_square": parameters["pad_to_square"],
        "contrast": parameters["contrast"],
        "parameters": parameters,
        "command": run_command(parameters["preset"], content.get("overrides", {})),
        **content,
    }
    return write_json_atomic(paths.model_card, card)
