"""The steps more than one notebook needs: a run's data set, its split, its image arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utils import config, data, preprocessing, synthetic
from utils.parameters import Parameters

def dataset_folder(parameters: Parameters) -> Path:
    """The folder a run reads (for the synthetic default, where `prepare_dataset` generates it)."""
    if parameters.dataset == "synthetic":
        return config.SYNTHETIC_DIR / (
            f"n{parameters.synthetic_images}_px{parameters.synthetic_image_size}_seed{parameters.seed}"
        )
    folder = Path(parameters.dataset).expanduser()
    if not folder.is_absolute():
        folder = config.PROJECT_ROOT / folder
    if not folder.is_dir():
        raise ValueError(f"dataset folder {folder} does not exist (parameter 'dataset')")
    return folder.resolve()


def prepare_dataset(parameters: Parameters, progress: bool = True) -> Path:
    """The run's data folder, ready to read: the synthetic default is generated on first use."""
    folder = dataset_folder(parameters)
    if parameters.dataset == "synthetic":
        synthetic.generate_dataset(
            folder,
            parameters.synthetic_images,
            seed=parameters.seed,
            image_size=parameters.synthetic_image_size,
            progress=progress,
        )
    return folder


def dataset_name(parameters: Parameters) -> str:
    if parameters.dataset == "synthetic":
        return "synthetic"
    return Path(parameters.dataset).name


def load_table(parameters: Parameters, paths: config.RunPaths) -> pd.DataFrame:
    """The labelled rows of the run's data set (rows without a bone age cannot be studied)."""
    table = data.load_dataset(
        prepare_dataset(parameters),
        drop_invalid=parameters.drop_invalid,
        dropped_rows_csv=paths.dropped_rows if parameters.drop_invalid else None,
    )
    return table[table["boneage"].notna()].reset_index(drop=True)


def load_split_table(parameters: Parameters, paths: config.RunPaths) -> pd.DataFrame:
    """The table with the study split written by 02_preprocessing in column `split`."""
    if not paths.split.exists():
        raise ValueError(f"{paths.split} does not exist: run 02_preprocessing first")
    table = load_table(parameters, paths).rename(columns={"split": "source_split"})
    table["split"] = data.read_split(paths.split, table).to_numpy()
    return table


def load_images(table: pd.DataFrame, parameters: Parameters, progress: bool = True) -> np.ndarray:
    """Preprocessed uint8 images of `table`, from the cache after the first time."""
    return preprocessing.load_images(
        table,
        parameters.image_size,
        pad_to_square=parameters.pad_to_square,
        contrast=parameters.contrast,
        hand_crop=parameters.hand_crop,
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
