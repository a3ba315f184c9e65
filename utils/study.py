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
            f"n{parameters.synthetic_images}_px{parameters.synthetic_image_size}_seed{parameters.resolved_data_seed}"
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
            seed=parameters.resolved_data_seed,
            image_size=parameters.synthetic_image_size,
            progress=progress,
        )
    return folder


def dataset_name(parameters: Parameters) -> str:
    if parameters.dataset == "synthetic":
        return "synthetic"
    return Path(parameters.dataset).name


def load_table(parameters: Parameters, paths: config.RunPaths) -> pd.DataFrame:
    """The labelled rows of the run's data set (rows without a bone age cannot be studied).

    Images that only a full decode finds damaged count as bad rows too: reported with the others
    or, with drop_invalid, dropped and listed in dropped_rows.csv. Decoding them fills the image
    cache, so that this costs a cache read after the first time.
    """
    table = data.load_dataset(
        prepare_dataset(parameters),
        drop_invalid=parameters.drop_invalid,
        dropped_rows_csv=paths.dropped_rows if parameters.drop_invalid else None,
        check_images=lambda rows: undecodable_images(rows, parameters),
    )
    return table[table["boneage"].notna()].reset_index(drop=True)


def undecodable_images(rows: pd.DataFrame, parameters: Parameters) -> dict[str, str]:
    """{path: problem} of the labelled rows' images that cannot be decoded and preprocessed."""
    try:
        load_images(rows[rows["boneage"].notna()], parameters)
    except preprocessing.ImageErrors as error:
        return error.failures
    return {}


def load_split_table(parameters: Parameters, paths: config.RunPaths) -> pd.DataFrame:
    """The table with the study split written by 02_preprocessing in column `split`."""
    if not paths.split.exists():
        raise ValueError(f"{paths.split} does not exist: run 02_preprocessing first")
    table = load_table(parameters, paths).rename(columns={"split": "source_split"})
    table["split"] = data.read_split(paths.split, table).to_numpy()
    return table


def load_images(table: pd.DataFrame, parameters: Parameters, progress: bool = True, mmap: bool = False) -> np.ndarray:
    """Preprocessed uint8 images of `table`, from the cache after the first time; `mmap`: the
    cache file memory-mapped (stage 03 with `image_cache: mmap`)."""
    return preprocessing.load_images(
        table,
        parameters.image_size,
        pad_to_square=parameters.pad_to_square,
        contrast=parameters.contrast,
        hand_crop=parameters.hand_crop,
        progress=progress,
        mmap=mmap,
    )


def split_arrays(table: pd.DataFrame, images: np.ndarray, split: str):
    """(images, male, boneage) of one split, as the model and train_model take them; from a
    memory-mapped cache the images are `preprocessing.CachedRows`, read batch by batch."""
    mask = (table["split"] == split).to_numpy()
    return (
        preprocessing.CachedRows(images, np.flatnonzero(mask)) if isinstance(images, np.memmap) else images[mask],
        table.loc[mask, "male"].to_numpy(dtype="float32"),
        table.loc[mask, "boneage"].to_numpy(dtype="float32"),
    )


def external_check(parameters: Parameters, predict, interval, quality_reference, *, folder=None,
                   known_ids=()) -> dict:
    """The run's model on the official test images of `folder` (default config.FULLRES_SAMPLE_DIR),
    whose labels are the mean of six radiologists: the external_check.json object.

    `predict(images, male) -> months` is the run's model with its test-time augmentation;
    `interval` its calibrated `conformal.ConformalInterval`; `quality_reference` its
    `quality.QualityReference`. The images get this run's preprocessing. Skipped (with the reason,
    `evaluation.external_check_skipped`) when the folder is absent, when the run's model learnt
    from synthetic images, or when the run trains on that folder; images whose id is among
    `known_ids` (the run's own data set) are left out, so that none was seen in training.
    """
    from utils import evaluation

    folder = Path(folder or config.FULLRES_SAMPLE_DIR)
    if parameters.dataset == "synthetic":
        return evaluation.external_check_skipped(
            "this run's model learnt from synthetic images, so real radiographs are outside what it knows", folder)
    if not folder.is_dir():
        return evaluation.external_check_skipped(f"{config.display_path(folder)} is not here (it is not part of "
                                                 "the repository)", folder)
    if dataset_folder(parameters) == folder.resolve():
        return evaluation.external_check_skipped("this run trains on that folder", folder)
    sample = data.load_dataset(folder)
    rows = sample[(sample["split"] == "test") & sample["boneage"].notna()]
    known = {str(identifier) for identifier in known_ids}
    left_out = int(rows["id"].astype(str).isin(known).sum())
    rows = rows[~rows["id"].astype(str).isin(known)].reset_index(drop=True)
    if rows.empty:
        return evaluation.external_check_skipped(f"no labelled test images in {folder} that the run has not seen",
                                                 folder)
    images = preprocessing.preprocess_paths(
        rows["path"], parameters.image_size, pad_to_square=parameters.pad_to_square, contrast=parameters.contrast,
        hand_crop=parameters.hand_crop, progress=False,
    )
    male = rows["male"].to_numpy(dtype="float32")
    predicted = np.asarray(predict(images, male), dtype=float).ravel()
    low, high = interval.interval(predicted)
    check = evaluation.external_check(
        rows["boneage"].to_numpy(dtype=float), predicted, low, high, ids=rows["id"], male=rows["male"],
        quality_flags=quality_reference.flag(images), folder=config.display_path(folder),
        labels="official RSNA 2017 test ground truth: the mean of six radiologists' readings",
    )
    check["left_out_seen_ids"] = left_out
    return check
