"""Predict bone age from the command line, for one radiograph or a folder of them.

    python -m utils.predict hand.png --sex F [--age-months 126]     # JSON on stdout
    python -m utils.predict study.dcm                                 # sex and age from the DICOM
    python -m utils.predict FOLDER [--out predictions.csv]            # CSV, one row per image
    options: --model FILE (.onnx or .keras; default models/rsna100), --gradcam DIR

A folder is any layout `utils.data.load_dataset` reads (its table gives the sex), or a folder
of bare images (PNG, JPEG, DICOM; ids are the file names, the sex comes from --sex or the
DICOM header). Bad images of a folder are left out and listed in `<out stem>.errors.csv`.

This module is the command: it finds the model folder, reads the model card, decodes and
preprocesses the images, and writes JSON or CSV. The network runs in a runtime: the folder's
bone_age.onnx through `utils.onnx_runtime.OnnxBoneAgeModel` when present (no TensorFlow import,
so the answer for one image comes in about a second), else bone_age.keras through
`utils.model.KerasBoneAgeModel`. model_card.json (`utils.model_card.ModelCard`) gives the
preprocessing, the test-time augmentation, the conformal interval and the image-quality reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pydicom import dcmread
from tqdm import tqdm

from utils import config
from utils.clinical import MAX_AGE_MONTHS, clinical_readout, clinical_table
from utils.data import IMAGE_SUFFIXES, TABLE_SUFFIXES, load_dataset, parse_sex
from utils.files import atomic_path, write_json_atomic
from utils.model_card import CARD_FILE, ModelCard
from utils.onnx_runtime import THREADS, OnnxBoneAgeModel
from utils.preprocessing import ImageError, preprocess_image, read_grayscale

MODEL_FILES = (config.MODEL_FILE, config.ONNX_FILE)
CHUNK_SIZE = 2048  # images decoded and predicted at a time: bounds memory on large folders
DAYS_PER_MONTH = 365.25 / 12
DICOM_AGE_UNITS = {"D": 1 / DAYS_PER_MONTH, "W": 7 / DAYS_PER_MONTH, "M": 1.0, "Y": 12.0}
AGE_COLUMN = "chronological_age_months"
ERROR_COLUMNS = ["id", "file", "line", "reason"]  # the columns of load_dataset's dropped-rows CSV
MAX_LISTED_ERRORS = 10
GRADCAM_BATCH = 64
PREDICTION_COLUMNS = ["boneage_pred", "boneage_low", "boneage_high", "quality_flag", "quality_score"]
# The clinical reading in a CSV, where the chronological age is known (names as utils.clinical's).
CLINICAL_COLUMNS = [AGE_COLUMN, "difference_months", "bone_age_sds", "bone_age_centile", "category"]


class PredictionError(ValueError):
    """A problem with the command's input (model, file, folder); the message names it."""


class UsageError(PredictionError):
    """A wrong or missing command-line value (exit status 2, like argparse)."""


class Predictor:
    """A bone-age model with its preprocessing, prediction interval and quality reference."""

    def __init__(self, runtime, card: ModelCard, model_path: Path, card_path: Path):
        self.runtime = runtime
        self.model_path = model_path
        self.card = card
        self.image_size = card.preprocessing.image_size
        # Predict as the run that calibrated the intervals did: with its test-time augmentation.
        self.tta = card.tta
        if runtime.image_size != self.image_size:
            raise PredictionError(
                f"{card_path}: image_size {self.image_size} but {model_path.name} takes {runtime.image_size} px"
            )
        self.conformal = card.conformal_interval()
        self.quality = card.quality()

    def preprocess(self, path) -> np.ndarray:
        """One file as the model sees it: uint8 (S, S); ImageError names an unreadable file."""
        preprocessing = self.card.preprocessing
        options = {"pad_to_square": preprocessing.pad_to_square, "contrast": preprocessing.contrast}
        if preprocessing.hand_crop != "none":
            options["hand_crop"] = preprocessing.hand_crop
        return preprocess_image(read_grayscale(path), self.image_size, **options)

    def predict_images(self, images, male) -> pd.DataFrame:
        """boneage_pred, boneage_low, boneage_high, quality_score, quality_flag of preprocessed images."""
        images = np.asarray(images)
        # The quality checks run beside the network: onnxruntime releases the GIL, and together
        # they keep both cores busy (the checks cost about as much as the network).
        with ThreadPoolExecutor(max_workers=1) as executor:
            quality = executor.submit(self.quality.assess, images)
            predicted = self.runtime.predict(images, male, tta=self.tta)
            quality_score, quality_flag = quality.result()
        months = predicted.astype(float)  # both runtimes clip to the data's age range
        low, high = self.conformal.interval(months)
        return pd.DataFrame(
            {
                "boneage_pred": months,
                "boneage_low": low,
                "boneage_high": high,
                "quality_score": quality_score,
                "quality_flag": quality_flag,
            }
        )

    def predict_table(self, table: pd.DataFrame, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(predictions, errors) for a table with id, path, male: images that cannot be decoded
        are left out of the predictions and listed in errors (id, file, line, reason)."""
        predictions, errors = [], []
        with ThreadPoolExecutor(max_workers=THREADS) as executor, tqdm(
            total=len(table), desc="predicting", unit="image", disable=not progress
        ) as bar:
            for start in range(0, len(table), CHUNK_SIZE):
                chunk = table.iloc[start : start + CHUNK_SIZE]
                decoded = list(executor.map(self._decode, chunk["path"]))
                good = np.array([image is not None for image, _ in decoded], dtype=bool)
                errors += [
                    {"id": image_id, "file": path, "line": None, "reason": reason}
                    for (image, reason), image_id, path in zip(decoded, chunk["id"], chunk["path"])
                    if image is None
                ]
                if good.any():
                    images = np.stack([image for image, _ in decoded if image is not None])
                    rows = self.predict_images(images, chunk["male"].to_numpy(dtype=np.float32)[good])
                    rows.index = chunk.index[good]
                    predictions.append(rows)
                bar.update(len(chunk))
        predicted = pd.concat(predictions) if predictions else pd.DataFrame()
        return table.join(predicted, how="inner"), pd.DataFrame(errors, columns=ERROR_COLUMNS)

    def _decode(self, path):
        """(image, None), or (None, reason) for a file that cannot be decoded."""
        try:
            return self.preprocess(path), None
        except ImageError as error:
            return None, str(error)


def resolve_model(model_path=None) -> tuple[Path, Path]:
    """(model file, model card) for a model folder, a .onnx or a .keras file.

    A .keras file is replaced by the .onnx beside it (fast start) unless that export is older.
    """
    path = Path(model_path) if model_path else config.default_model_dir()
    if path.is_dir():
        found = [path / name for name in MODEL_FILES if (path / name).is_file()]
        if not found:
            raise PredictionError(f"{path}: no model file ({' or '.join(MODEL_FILES)}) in this folder")
        path = found[0]
    elif not path.is_file():
        raise PredictionError(f"{path}: model file not found")
    if path.suffix not in (".onnx", ".keras"):
        raise PredictionError(f"{path}: expected a .onnx or .keras model file")
    export = path.with_suffix(".onnx")
    if path.suffix == ".keras" and export.is_file():
        if export.stat().st_mtime >= path.stat().st_mtime:
            path = export
        else:
            print(f"warning: {export} is older than {path.name}; using the Keras model", file=sys.stderr)
    card = path.parent / CARD_FILE
    if not card.is_file():
        raise PredictionError(f"{card}: model card not found (it holds the preprocessing of {path.name})")
    return path, card


def load_predictor(model_path=None) -> Predictor:
    """The predictor of a model folder or file (default: config.default_model_dir())."""
    path, card_path = resolve_model(model_path)
    # The card first: a card this code cannot read is refused before a model is loaded.
    try:
        card = ModelCard.read(card_path)
    except ValueError as error:
        raise PredictionError(str(error)) from error
    if path.suffix == ".onnx":
        runtime = OnnxBoneAgeModel(path)
    else:
        from utils.model import KerasBoneAgeModel  # imports Keras: only for a model without an ONNX export

        runtime = KerasBoneAgeModel(path)
    return Predictor(runtime, card, path, card_path)


def dicom_demographics(path) -> tuple[bool | None, float | None]:
    """(male, chronological age in months) from a DICOM header, None where absent; (None, None) for
    other files. The age is PatientAge ("012Y", "006M", "010W", "005D"), else StudyDate - PatientBirthDate;
    an age outside the 0..240 months of the clinical reference counts as unknown."""
    path = Path(path)
    try:
        header = dcmread(path, stop_before_pixels=True, force=path.suffix.lower() == ".dcm")
    except Exception:  # not DICOM, or a damaged header (pydicom raises many types): decoding reports it
        return None, None
    male = {"M": True, "F": False}.get(str(header.get("PatientSex", "")).strip().upper())
    age = _dicom_age_months(header)
    return male, age if age is not None and 0 <= age <= MAX_AGE_MONTHS else None


def _dicom_age_months(header) -> float | None:
    age = str(header.get("PatientAge", "")).strip().upper()
    if len(age) >= 2 and age[:-1].isdigit() and age[-1] in DICOM_AGE_UNITS:
        return int(age[:-1]) * DICOM_AGE_UNITS[age[-1]]
    try:
        born = datetime.strptime(str(header.get("PatientBirthDate", "")), "%Y%m%d")
        studied = datetime.strptime(str(header.get("StudyDate", "")), "%Y%m%d")
    except ValueError:
        return None
    return (studied - born).days / DAYS_PER_MONTH


def predict_file(predictor: Predictor, path, male: bool | None = None, age_months: float | None = None) -> dict:
    """The reading of one image; `male` and `age_months` override what a DICOM header says."""
    path = Path(path)
    image = predictor.preprocess(path)
    header_male, header_age = dicom_demographics(path)
    sex_source = "--sex" if male is not None else "DICOM PatientSex"
    male = header_male if male is None else male
    if male is None:
        raise UsageError(f"{path}: the patient's sex is unknown; pass --sex M or --sex F")
    if age_months is not None and not 0 <= age_months <= MAX_AGE_MONTHS:
        raise UsageError(f"--age-months {age_months:g}: expected months in 0..{MAX_AGE_MONTHS}")
    age_source = "--age-months" if age_months is not None else "DICOM header"
    age_months = header_age if age_months is None else age_months
    row = predictor.predict_images(image[np.newaxis], [male]).iloc[0]
    result = {"file": str(path.resolve())}
    result.update(_rounded(clinical_readout(row["boneage_pred"], male, age_months)))
    result["interval"] = {
        "low": round(float(row["boneage_low"]), 2),
        "high": round(float(row["boneage_high"]), 2),
        "coverage_pct": round(100 * predictor.conformal.coverage, 1),
    }
    result["quality_flag"] = str(row["quality_flag"])
    result["quality_score"] = round(float(row["quality_score"]), 3)
    result["sex"] = "male" if male else "female"
    result["sex_source"] = sex_source
    if age_months is not None:
        result["age_source"] = age_source
    result["model"] = str(predictor.model_path)
    return result


def _rounded(values: dict) -> dict:
    return {key: round(value, 2) if isinstance(value, float) else value for key, value in values.items()}


def folder_table(folder: Path, male: bool | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table with id, path, male[, boneage, chronological_age_months], errors) of a folder.

    A folder with a label table is read by load_dataset, bad rows going to errors; a folder of
    bare images takes the sex from `male` or each DICOM header.
    """
    files = _visible_files(folder)
    if any(path.suffix.lower() in TABLE_SUFFIXES for path in files):
        return _labelled_table(folder)
    return _bare_table(folder, [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES], male)


def _visible_files(folder: Path) -> list[Path]:
    """The files below `folder`, sorted, without hidden ones (dot files, dot folders, as load_dataset)."""
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _labelled_table(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # load_dataset warns about dropped rows; they are reported with the decode errors instead.
        warnings.simplefilter("ignore", UserWarning)
        dropped_csv = Path(scratch) / "dropped.csv"
        table = load_dataset(folder, drop_invalid=True, dropped_rows_csv=dropped_csv)
        dropped = pd.read_csv(dropped_csv, dtype={"id": str})
    return table, dropped[ERROR_COLUMNS]


def _bare_table(folder: Path, paths: list[Path], male: bool | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not paths:
        raise PredictionError(
            f"{folder}: no label table and no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"
        )
    rows, errors = [], []
    for path in paths:
        image_id = path.relative_to(folder).with_suffix("").as_posix()
        header_male, header_age = dicom_demographics(path)
        row_male = header_male if male is None else male
        if row_male is None:
            errors.append({"id": image_id, "file": str(path), "line": None,
                           "reason": "the patient's sex is unknown; pass --sex M or --sex F"})
            continue
        rows.append({"id": image_id, "path": str(path), "male": row_male, AGE_COLUMN: header_age})
    table = pd.DataFrame(rows, columns=["id", "path", "male", AGE_COLUMN])
    if table[AGE_COLUMN].isna().all():
        table = table.drop(columns=AGE_COLUMN)
    return table, pd.DataFrame(errors, columns=ERROR_COLUMNS)


def prediction_columns(predictions: pd.DataFrame) -> pd.DataFrame:
    """The CSV of a folder: predictions, the true age where known, the clinical reading where the
    chronological age is known."""
    result = predictions[["id", "male", *PREDICTION_COLUMNS]].copy()
    if "boneage" in predictions and predictions["boneage"].notna().any():
        result.insert(2, "boneage", predictions["boneage"])
    if AGE_COLUMN in predictions:
        known = predictions[AGE_COLUMN].notna()
        readout = clinical_table(
            predictions.loc[known, "boneage_pred"], predictions.loc[known, "male"].to_numpy(dtype=bool),
            predictions.loc[known, AGE_COLUMN],
        ).set_index(predictions.index[known])
        for column in CLINICAL_COLUMNS:
            result[column] = readout[column]
    return result


def run_folder(predictor: Predictor, folder: Path, out: Path | None, male: bool | None, gradcam: Path | None) -> int:
    """Predict every image of `folder` into a CSV; the images left out go to `<out stem>.errors.csv`."""
    gradcam_model = keras_model_for_gradcam(predictor) if gradcam else None
    table, errors = folder_table(folder, male)
    n_images = len(table) + len(errors)
    predictions, decode_errors = predictor.predict_table(table, progress=sys.stderr.isatty())
    if len(decode_errors):
        errors = pd.concat([errors, decode_errors], ignore_index=True)
    out = Path(out) if out else Path.cwd() / f"{folder.resolve().name}_predictions.csv"
    if len(errors):
        errors_csv = out.with_name(f"{out.stem}.errors.csv")
        with atomic_path(errors_csv) as temporary:
            errors.to_csv(temporary, index=False)
        _report_errors(errors, n_images, errors_csv)
    if predictions.empty:
        print(f"error: {folder}: no image could be predicted", file=sys.stderr)
        return 1
    with atomic_path(out) as temporary:
        prediction_columns(predictions).to_csv(temporary, index=False, float_format="%.2f")
    print(f"wrote {len(predictions)} predictions to {out}")
    if gradcam:
        write_gradcam(predictor, gradcam_model, predictions, gradcam)
        print(f"wrote {len(predictions)} Grad-CAM overlays to {gradcam}")
    return 0


def _report_errors(errors: pd.DataFrame, total: int, errors_csv: Path) -> None:
    print(f"warning: {len(errors)} of {total} images left out; each is listed in {errors_csv}", file=sys.stderr)
    for error in errors.head(MAX_LISTED_ERRORS).itertuples():
        location = error.file if pd.isna(error.line) else f"{error.file}, line {int(error.line)}"
        print(f"  {location}: {error.reason}", file=sys.stderr)
    if len(errors) > MAX_LISTED_ERRORS:
        print(f"  ... and {len(errors) - MAX_LISTED_ERRORS} more", file=sys.stderr)


def keras_model_for_gradcam(predictor: Predictor):
    """The Keras model beside the predictor's model file: Grad-CAM needs its gradients."""
    if predictor.model_path.suffix == ".keras":  # a KerasBoneAgeModel already
        return predictor.runtime.model
    keras_path = predictor.model_path.with_suffix(".keras")
    if not keras_path.is_file():
        raise PredictionError(f"{keras_path}: not found; --gradcam needs the Keras model beside {predictor.model_path.name}")
    from utils.model import KerasBoneAgeModel

    return KerasBoneAgeModel(keras_path).model


def write_gradcam(predictor: Predictor, model, table: pd.DataFrame, folder: Path) -> None:
    """One overlay PNG per row of `table` (id, path, male): `<folder>/<id>_gradcam.png`."""
    from utils import explain

    for start in range(0, len(table), GRADCAM_BATCH):
        rows = table.iloc[start : start + GRADCAM_BATCH]
        images = np.stack([predictor.preprocess(path) for path in rows["path"]])
        heatmaps = explain.grad_cam(model, images, rows["male"].to_numpy(dtype=np.float32))
        for image_id, image, heatmap in zip(rows["id"], images, heatmaps):
            destination = folder / f"{str(image_id).replace('/', '__')}_gradcam.png"
            with atomic_path(destination) as temporary:
                # explain.overlay returns RGB; OpenCV writes BGR.
                cv2.imwrite(str(temporary), cv2.cvtColor(explain.overlay(image, heatmap), cv2.COLOR_RGB2BGR))


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m utils.predict", description="Predict bone age (months) from hand radiographs."
    )
    parser.add_argument("path", type=Path, help="an image (PNG, JPEG, DICOM) or a folder of them")
    parser.add_argument("--sex", help="M or F (male/female); for a single image or a folder without a label table")
    parser.add_argument("--age-months", type=float, help="chronological age in months, for the clinical reading")
    parser.add_argument("--model", type=Path, help=f"a .onnx or .keras file or a model folder (default {config.default_model_dir()})")
    parser.add_argument("--out", type=Path, help="output file: the CSV of a folder (default <folder>_predictions.csv), or the JSON of an image")
    parser.add_argument("--gradcam", type=Path, metavar="DIR", help="also write a Grad-CAM overlay PNG per image here")
    return parser.parse_args(argv)


def _parsed_sex(value: str | None) -> bool | None:
    if value is None:
        return None
    try:
        return parse_sex(value)
    except ValueError:
        raise UsageError(f"--sex {value!r}: expected M or F (male or female)") from None


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    # OpenCV logs its own lines for a damaged file; the message below names the file once.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        male = _parsed_sex(arguments.sex)
        if not arguments.path.exists():
            raise PredictionError(f"{arguments.path}: no such file or folder")
        if arguments.path.is_dir() and arguments.age_months is not None:
            raise UsageError("--age-months is for a single image; a folder's ages come from DICOM headers")
        predictor = load_predictor(arguments.model)
        if arguments.path.is_dir():
            return run_folder(predictor, arguments.path, arguments.out, male, arguments.gradcam)
        gradcam_model = keras_model_for_gradcam(predictor) if arguments.gradcam else None
        result = predict_file(predictor, arguments.path, male, arguments.age_months)
        if arguments.out:
            write_json_atomic(arguments.out, result)
        if arguments.gradcam:
            single = pd.DataFrame({"id": [arguments.path.stem], "path": [arguments.path], "male": [result["sex"] == "male"]})
            write_gradcam(predictor, gradcam_model, single, arguments.gradcam)
        print(json.dumps(result, indent=2))
        return 0
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:  # PredictionError, ImageError, DatasetError and file errors
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
