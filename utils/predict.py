"""Predict bone age from the command line, for one radiograph or a folder of them.

    python -m utils.predict hand.png --sex F [--age-months 126]     # JSON on stdout
    python -m utils.predict study.dcm                                 # sex and age from the DICOM
    python -m utils.predict FOLDER [--out predictions.csv]            # CSV, one row per image
    python -m utils.predict visits.csv [--chart DIR]                  # follow-up visits: CSV, a chart per child
    options: --model FILE (.onnx or .keras; default models/rsna100), --gradcam DIR
    clinical outputs: --chart PNG (growth chart), --previous AGE:BONE_AGE (earlier visits, velocity),
    --format fhir (FHIR R4 Observation), --dicom-out DIR (DICOM SR), --reject-flagged (no age for
    an image whose quality flag is not ok; exit status 3 for one image)

The clinical outputs are made by utils.growth (visits, velocity, chart data), utils.plots
(the chart), utils.result_formats (FHIR, DICOM SR) and utils.rejection (the rejection policy).

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
import contextlib
import json
import os
import sys
import tempfile
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pydicom import dcmread
from tqdm import tqdm

from utils import config, rejection
from utils.clinical import MAX_AGE_MONTHS, clinical_readout, clinical_table
from utils.data import IMAGE_SUFFIXES, TABLE_SUFFIXES, image_problem, load_dataset, parse_sex, table_beside
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
# What libpng and libjpeg print about a damaged file, on their own (native_messages collects them).
DECODER_MESSAGES = ("libpng error", "libpng warning", "Premature end of JPEG", "Corrupt JPEG data")
GRADCAM_BATCH = 64
PREDICTION_COLUMNS = ["boneage_pred", "boneage_low", "boneage_high", "quality_flag", "quality_score"]
# The clinical reading in a CSV, where the chronological age is known (names as utils.clinical's).
CLINICAL_COLUMNS = [AGE_COLUMN, "difference_months", "bone_age_sds", "bone_age_centile", "category"]
VISITS_SUFFIX = ".csv"  # a CSV file as the path: a table of follow-up visits
SEX_UNKNOWN = "the patient's sex is unknown; pass --sex M or --sex F"
REJECTED_EXIT = 3  # the exit status of one image rejected by --reject-flagged


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
                with native_messages() as messages:
                    decoded = list(executor.map(self._decode, chunk["path"]))
                # The decoders' own lines name no file; the files they failed on are listed in errors.
                for message in messages:
                    if not message.startswith(DECODER_MESSAGES):
                        print(message, file=sys.stderr)
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
        runtime = _load_keras_runtime(path)
    return Predictor(runtime, card, path, card_path)


def _load_keras_runtime(path: Path):
    """KerasBoneAgeModel of a file that exists; a damaged one is named as damaged, not as missing
    (Keras says "File not found" for any file it cannot open as a .keras archive)."""
    if not zipfile.is_zipfile(path):
        raise PredictionError(f"{path}: not a readable Keras model (a .keras file is a zip archive; this one is "
                              f"damaged or truncated, {path.stat().st_size} bytes)")
    from utils.model import KerasBoneAgeModel  # imports Keras: only for a model without an ONNX export

    try:
        return KerasBoneAgeModel(path)
    except Exception as error:  # Keras raises many types for a damaged archive or an unknown layer
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PredictionError(f"{path}: not a readable Keras model ({type(error).__name__}: {detail})") from None


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
    image = decode_image(predictor, path)
    header_male, header_age = dicom_demographics(path)
    sex_source = "--sex" if male is not None else "DICOM PatientSex"
    male = header_male if male is None else male
    if male is None:
        raise UsageError(f"{path}: {SEX_UNKNOWN}")
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
    if result["quality_flag"] != "ok" and "category" in result:
        for key in CLINICAL_COLUMNS[1:]:
            result[key] = None
        result["clinical_reading_withheld"] = withheld_reason(result["quality_flag"])
        print(f"warning: {path}: {result['clinical_reading_withheld']}", file=sys.stderr)
    result["sex"] = "male" if male else "female"
    result["sex_source"] = sex_source
    if age_months is not None:
        result["age_source"] = age_source
    result["model"] = str(predictor.model_path)
    return result


def withheld_reason(quality_flag: str) -> str:
    """Why an image with this quality flag (not "ok") gets no clinical reading."""
    # The flags' meanings are utils.rejection's, which --reject-flagged reports.
    meaning = rejection._FLAG_MEANINGS.get(str(quality_flag), "the image failed the quality check")
    return (f"quality flag '{quality_flag}': {meaning}; its bone age is not a reading of this child's skeleton, "
            "so no clinical category (delayed / normal / advanced) is given")


@contextlib.contextmanager
def native_messages():
    """Collect what C libraries write to file descriptor 2 while the block runs (libpng prints
    `libpng error: Read Error`, naming no file), so that the command can say which file."""
    messages: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error at all
        yield messages
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield messages
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            messages.extend(line.strip() for line in text.splitlines() if line.strip())


def decode_image(predictor: Predictor, path: Path) -> np.ndarray:
    """One file as the model sees it. ImageError names the file and the problem: a truncated or
    damaged PNG or JPEG by the loader's cheap checks, else what the decoder said about it."""
    if path.suffix.lower() != ".dcm":  # DICOM without a preamble is read by suffix; the checks would refuse it
        problem = image_problem(path)
        if problem:
            raise ImageError(f"{path}: {problem}")
    failure = None
    with native_messages() as messages:
        try:
            image = predictor.preprocess(path)
        except ImageError as error:
            failure = error
    if failure is not None:
        raise ImageError(f"{failure}: {'; '.join(messages)}" if messages else str(failure)) from None
    for message in messages:  # what a decoder said about a file it decoded all the same
        print(f"{path}: {message}", file=sys.stderr)
    return image


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
    sex_unknown = SEX_UNKNOWN
    labels = table_beside(folder)
    if labels:
        sex_unknown += f", or the folder {folder.parent}, whose label table {labels.name} gives it"
    for path in paths:
        image_id = path.relative_to(folder).with_suffix("").as_posix()
        # The cheap checks load_dataset makes for a labelled folder (a truncated file, a bad header).
        problem = None if path.suffix.lower() == ".dcm" else image_problem(path)
        if problem:
            errors.append({"id": image_id, "file": str(path), "line": None, "reason": f"image unreadable: {problem}"})
            continue
        header_male, header_age = dicom_demographics(path)
        row_male = header_male if male is None else male
        if row_male is None:
            errors.append({"id": image_id, "file": str(path), "line": None, "reason": sex_unknown})
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
        # An image the quality check flags gets no clinical reading (withheld_reason says why).
        flagged = result["quality_flag"] != "ok"
        for column in CLINICAL_COLUMNS[1:]:
            result.loc[flagged, column] = None
    return result


def run_folder(predictor: Predictor, folder: Path, out: Path | None, male: bool | None, gradcam: Path | None,
               reject: bool = False) -> int:
    """Predict every image of `folder` into a CSV; the images left out go to `<out stem>.errors.csv`.
    With `reject`, a flagged image's row has no age and says why (`rejection.reject_rows`)."""
    gradcam_model = keras_model_for_gradcam(predictor) if gradcam else None
    table, errors = folder_table(folder, male)
    n_images = len(table) + len(errors)
    predictions, decode_errors = predictor.predict_table(table, progress=sys.stderr.isatty())
    if len(decode_errors):
        errors = pd.concat([errors, decode_errors], ignore_index=True)
    out = Path(out) if out else Path.cwd() / f"{folder.resolve().name}_predictions.csv"
    errors_csv = out.with_name(f"{out.stem}.errors.csv")
    if len(errors):
        with atomic_path(errors_csv) as temporary:
            errors.to_csv(temporary, index=False)
        _report_errors(errors, n_images, errors_csv)
    else:
        errors_csv.unlink(missing_ok=True)  # an earlier run's list would name images this run predicted
    if predictions.empty:
        print(f"error: {folder}: no image could be predicted", file=sys.stderr)
        return 1
    flagged = predictions.loc[predictions["quality_flag"] != "ok", "quality_flag"]
    if AGE_COLUMN in predictions and len(flagged):
        counts = ", ".join(f"{flag} {count}" for flag, count in flagged.value_counts().items())
        print(f"warning: {len(flagged)} image(s) flagged by the quality check ({counts}): no clinical category for "
              "them (see quality_flag)", file=sys.stderr)
    with atomic_path(out) as temporary:
        columns = prediction_columns(predictions)
        if reject:
            columns = rejection.reject_rows(columns, ["boneage_pred", "boneage_low", "boneage_high", *CLINICAL_COLUMNS[1:]])
        columns.to_csv(temporary, index=False, float_format="%.2f")
    print(f"wrote {len(predictions)} predictions to {out}")
    if reject and rejection.is_rejected(predictions["quality_flag"].to_numpy()).any():
        print(f"{int(rejection.is_rejected(predictions['quality_flag'].to_numpy()).sum())} of them rejected (quality flag "
              f"not ok): no age, the reason in column {rejection.REASON_COLUMN}")
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


def is_visits_table(path: Path) -> bool:
    """A .csv file given as the path is a table of follow-up visits (utils.growth.read_visits)."""
    return path.is_file() and path.suffix.lower() == VISITS_SUFFIX


def check_clinical_options(arguments) -> None:
    """UsageError for an option of the clinical outputs that does not fit the input (before any work)."""
    path = arguments.path
    kind = "folder" if path.is_dir() else "visits" if is_visits_table(path) else "image"
    single_only = {"--format fhir": arguments.format == "fhir", "--dicom-out": arguments.dicom_out is not None,
                   "--previous": bool(arguments.previous)}
    if kind == "folder":
        single_only["--chart"] = arguments.chart is not None
    if kind == "visits":
        single_only.update({"--age-months": arguments.age_months is not None, "--sex": arguments.sex is not None,
                            "--gradcam": arguments.gradcam is not None})
    refused = [option for option, given in single_only.items() if given]
    if kind != "image" and refused:
        what = "a folder" if kind == "folder" else "a visits CSV (its rows give each visit's sex and age)"
        raise UsageError(f"{', '.join(refused)}: for a single image, not {what}")
    if kind == "image" and arguments.dicom_out is not None:
        from utils.result_formats import dicom_identifiers

        if dicom_identifiers(path) is None:
            raise UsageError(f"--dicom-out: {path} is not DICOM; the structured report references the source study")


def _previous_visits(values, predictor: Predictor) -> pd.DataFrame:
    """--previous AGE:BONE_AGE[:LOW:HIGH] (months) as visits; without LOW:HIGH, the model's interval."""
    rows = []
    for value in values or []:
        try:
            numbers = [float(part) for part in value.split(":")]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 4) or not all(0 <= number <= MAX_AGE_MONTHS for number in numbers):
            raise UsageError(f"--previous {value!r}: expected AGE:BONE_AGE or AGE:BONE_AGE:LOW:HIGH, "
                             f"months in 0..{MAX_AGE_MONTHS}")
        if len(numbers) == 2:
            low, high = predictor.conformal.interval([numbers[1]])
            numbers += [float(low[0]), float(high[0])]
        rows.append(dict(zip((AGE_COLUMN, "boneage_pred", "boneage_low", "boneage_high"), numbers)))
    return pd.DataFrame(rows, columns=[AGE_COLUMN, "boneage_pred", "boneage_low", "boneage_high"])


def single_child_visits(result: dict, previous: pd.DataFrame) -> pd.DataFrame:
    """The visits of the child of one reading: the earlier ones (--previous) and this one, last,
    with their readings and velocities (utils.growth.visit_readings)."""
    from utils import growth

    age = result.get(AGE_COLUMN)
    if age is None:
        raise UsageError("--chart and --previous need the chronological age (--age-months or the DICOM header)")
    if (previous[AGE_COLUMN] >= age).any():
        raise UsageError(f"--previous: earlier visits must be at ages below this visit's {age:g} months")
    current = {AGE_COLUMN: age, "boneage_pred": result["bone_age_months"], "boneage_low": result["interval"]["low"],
               "boneage_high": result["interval"]["high"], "quality_flag": result["quality_flag"]}
    visits = pd.concat([previous.assign(quality_flag="ok"), pd.DataFrame([current])], ignore_index=True)
    visits = visits.assign(patient="this child", id=[f"previous {index + 1}" for index in range(len(previous))] + ["this visit"],
                           male=result["sex"] == "male")
    return growth.visit_readings(visits)


def velocity_reading(visits: pd.DataFrame, coverage_pct: float) -> dict | None:
    """The JSON of the last visit's velocity (value, low, high, per month of age; since_months), if any."""
    last = visits.iloc[-1]
    if pd.isna(last["bone_age_velocity"]):
        return None
    return {"value": round(float(last["bone_age_velocity"]), 3), "low": round(float(last["bone_age_velocity_low"]), 3),
            "high": round(float(last["bone_age_velocity_high"]), 3), "coverage_pct": coverage_pct,
            "since_months": round(float(last["months_since_previous"]), 2),
            "unit": "months of bone age per month of chronological age"}


def write_chart(visits: pd.DataFrame, title: str, coverage_pct: float, destination: Path) -> Path:
    """The growth chart PNG of one child's visits (utils.growth.chart_child, plots.growth_charts)."""
    import matplotlib.pyplot as plt

    from utils import growth, plots

    figure = growth.growth_chart([growth.chart_child(visits, title, coverage_pct)])
    try:
        return plots.save_figure(figure, destination)
    finally:
        plt.close(figure)


def run_visits(predictor: Predictor, csv_path: Path, out: Path | None, chart_dir: Path | None, reject: bool) -> int:
    """Predict every visit of a visits CSV into a CSV with the readings and velocities; one chart
    per child in `chart_dir`. Images that cannot be decoded go to `<out stem>.errors.csv`."""
    from utils import growth

    table = growth.read_visits(csv_path)
    predictions, errors = predictor.predict_table(table, progress=sys.stderr.isatty())
    out = Path(out) if out else Path.cwd() / f"{csv_path.stem}_bone_age.csv"
    if len(errors):
        errors_csv = out.with_name(f"{out.stem}.errors.csv")
        with atomic_path(errors_csv) as temporary:
            errors.to_csv(temporary, index=False)
        _report_errors(errors, len(table), errors_csv)
    if predictions.empty:
        print(f"error: {csv_path}: no visit could be predicted", file=sys.stderr)
        return 1
    if reject:
        predictions = rejection.reject_rows(predictions, ["boneage_pred", "boneage_low", "boneage_high"])
    readings = growth.visit_readings(predictions)
    columns = ["patient", "id", "male", *PREDICTION_COLUMNS, *CLINICAL_COLUMNS, *growth.VELOCITY_COLUMNS]
    columns += [rejection.REASON_COLUMN] if reject else []
    with atomic_path(out) as temporary:
        readings[columns].to_csv(temporary, index=False, float_format="%.3f")
    print(f"wrote {len(readings)} visits of {readings['patient'].nunique()} children to {out}")
    if reject and readings["boneage_pred"].isna().any():
        print(f"{int(readings['boneage_pred'].isna().sum())} of them rejected (quality flag not ok): no age, "
              f"the reason in column {rejection.REASON_COLUMN}")
    if chart_dir:
        coverage = round(100 * predictor.conformal.coverage, 1)
        charted = 0
        for patient, visits in readings.groupby("patient", sort=False):
            if visits["boneage_pred"].notna().any():
                sex = "boy" if visits["male"].iloc[0] else "girl"
                name = f"{str(patient).replace('/', '__')}_chart.png"
                write_chart(visits, f"patient {patient} ({sex})", coverage, Path(chart_dir) / name)
                charted += 1
        print(f"wrote {charted} charts to {chart_dir}")
    return 0


def clinical_outputs(predictor: Predictor, arguments, result: dict) -> tuple[dict, int]:
    """The single-image options of the clinical outputs: (what to print and --out, exit status).

    --reject-flagged replaces the reading of a flagged image by `rejection.rejected_reading`
    (exit status 3); --previous adds the bone-age velocity; --chart writes the growth chart;
    --dicom-out the DICOM SR; --format fhir turns the reading into a FHIR R4 Observation."""
    from utils import result_formats

    status = 0
    if arguments.reject_flagged and rejection.is_rejected(result["quality_flag"])[0]:
        result, status = rejection.rejected_reading(result), REJECTED_EXIT
    accepted = result["bone_age_months"] is not None
    coverage = round(100 * predictor.conformal.coverage, 1)
    if accepted and (arguments.chart or arguments.previous):
        visits = single_child_visits(result, _previous_visits(arguments.previous, predictor))
        velocity = velocity_reading(visits, coverage)
        if velocity:
            result["bone_age_velocity"] = velocity
        if arguments.chart:
            write_chart(visits, f"{arguments.path.name} ({'boy' if result['sex'] == 'male' else 'girl'})", coverage,
                        arguments.chart)
            print(f"wrote the growth chart to {arguments.chart}", file=sys.stderr)
    if arguments.dicom_out is not None:
        if accepted:
            written = result_formats.write_dicom_sr(result, arguments.path, arguments.dicom_out)
            print(f"wrote the DICOM structured report to {written}", file=sys.stderr)
        else:
            print("no DICOM structured report: the image was rejected", file=sys.stderr)
    if not accepted and arguments.chart:
        print("no growth chart: the image was rejected", file=sys.stderr)
    if arguments.format == "fhir":
        return result_formats.fhir_observation(result, result_formats.dicom_identifiers(arguments.path)), status
    return result, status


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m utils.predict", description="Predict bone age (months) from hand radiographs."
    )
    parser.add_argument("path", type=Path, help="an image (PNG, JPEG, DICOM), a folder of them, or a CSV of follow-up "
                        "visits (patient, id, path, sex, chronological_age_months)")
    parser.add_argument("--sex", help="M or F (male/female); for a single image or a folder without a label table")
    parser.add_argument("--age-months", type=float, help="chronological age in months, for the clinical reading")
    parser.add_argument("--model", type=Path, help=f"a .onnx or .keras file or a model folder (default {config.default_model_dir()})")
    parser.add_argument("--out", type=Path, help="output file: the CSV of a folder (default <folder>_predictions.csv), or the JSON of an image")
    parser.add_argument("--gradcam", type=Path, metavar="DIR", help="also write a Grad-CAM overlay PNG per image here")
    clinical = parser.add_argument_group("clinical outputs")
    clinical.add_argument("--chart", type=Path, metavar="PNG|DIR", help="the growth chart: a PNG for an image (needs the "
                          "chronological age), a folder with one PNG per child for a visits CSV")
    clinical.add_argument("--previous", action="append", metavar="AGE:BONE_AGE[:LOW:HIGH]", help="an earlier visit "
                          "(months; repeatable): drawn on the chart, and the bone-age velocity since the last one is added")
    clinical.add_argument("--format", choices=("json", "fhir"), default="json", help="the reading of an image as this "
                          "project's JSON (default) or a FHIR R4 Observation")
    clinical.add_argument("--dicom-out", type=Path, metavar="DIR", help="for a DICOM image: also write a DICOM "
                          "structured report of the reading, in the source study, to this folder")
    clinical.add_argument("--reject-flagged", action="store_true", help="no age for an image whose quality flag is not "
                          "ok: null with the reason (exit status 3 for an image), an empty value and the reason in a CSV")
    return parser.parse_args(argv)


def check_out(out: Path | None) -> None:
    """--out must name a file (not a folder) in a folder that exists: checked before any work."""
    if out is None:
        return
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name, e.g. --out {out / 'predictions.csv'}")
    if not out.parent.is_dir():
        what = "is not a folder" if out.parent.exists() else "does not exist"
        raise UsageError(f"--out {out}: the folder {out.parent} {what}")


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
        check_clinical_options(arguments)
        check_out(arguments.out)
        predictor = load_predictor(arguments.model)
        if arguments.path.is_dir():
            return run_folder(predictor, arguments.path, arguments.out, male, arguments.gradcam,
                              reject=arguments.reject_flagged)
        if is_visits_table(arguments.path):
            return run_visits(predictor, arguments.path, arguments.out, arguments.chart, arguments.reject_flagged)
        gradcam_model = keras_model_for_gradcam(predictor) if arguments.gradcam else None
        result = predict_file(predictor, arguments.path, male, arguments.age_months)
        result, status = clinical_outputs(predictor, arguments, result)
        if arguments.out:
            write_json_atomic(arguments.out, result)
        if arguments.gradcam:
            single = pd.DataFrame({"id": [arguments.path.stem], "path": [arguments.path], "male": [result["sex"] == "male"]})
            write_gradcam(predictor, gradcam_model, single, arguments.gradcam)
        print(json.dumps(result, indent=2))
        return status
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:  # PredictionError, ImageError, DatasetError and file errors
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
