"""The prediction command end to end, on a tiny model folder built here: JSON, CSV, DICOM, errors."""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from utils import predict
from utils.conformal import fit_conformal
from utils.model import predict_months
from utils.model_card import ModelCard, Preprocessing
from utils.onnx_runtime import export_onnx
from utils.predict import PREDICTION_COLUMNS, dicom_demographics, load_predictor, resolve_model
from utils.quality import QualityReference
from utils.synthetic import render_hand

from test_onnx_runtime import IMAGE_SIZE, tiny_model  # the same tiny model, with an augmentation layer

JSON_KEYS = {
    "file", "bone_age_months", "bone_age_years", "bone_age_type", "interval", "quality_flag", "quality_score", "sex",
    "sex_source", "model",
}
CLINICAL_KEYS = {
    "chronological_age_months", "difference_months", "reference_sd_months", "bone_age_sds", "bone_age_centile", "category",
}


def hand(age_months: float, male: bool, seed: int) -> np.ndarray:
    return render_hand(age_months, male, np.random.default_rng(seed), image_size=64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """bone_age.keras, bone_age.onnx and a model card with a real conformal interval and quality reference."""
    folder = tmp_path_factory.mktemp("model")
    model = tiny_model()
    model.save(folder / "bone_age.keras")
    export_onnx(model, folder / "bone_age.onnx")
    rng = np.random.default_rng(0)
    training_images = np.stack([
        cv2.resize(hand(age, bool(index % 2), index), (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
        for index, age in enumerate(rng.uniform(12, 216, 40))
    ])
    truth = rng.uniform(0, 228, 200)
    interval = fit_conformal(truth, truth + rng.normal(0, 10, 200), coverage=0.9)
    ModelCard(
        preprocessing=Preprocessing(image_size=IMAGE_SIZE, pad_to_square=True, contrast="clahe"),
        tta="none",
        calibration=interval.to_dict(),
        quality_reference=QualityReference.fit(training_images).to_dict(),
        target_mean=120.0,
        target_std=40.0,
        metrics={},
        split_counts={},
        parameters={"preset": "unit"},
        command="python -m utils.pipeline --preset unit",
        git_commit="unknown",
    ).write(folder / "model_card.json")
    return folder


def copy_model_dir(model_dir: Path, folder: Path, names=("bone_age.keras", "bone_age.onnx", "model_card.json"), **card_changes) -> Path:
    """A copy of the test model folder (some of its files), its card changed by `card_changes`."""
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes((model_dir / name).read_bytes())
    if card_changes:
        dataclasses.replace(ModelCard.read(model_dir / "model_card.json"), **card_changes).write(folder / "model_card.json")
    return folder


@pytest.fixture(scope="module")
def kaggle_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kaggle")
    images = folder / "boneage-training-dataset"
    images.mkdir()
    rows = []
    for index in range(6):
        age, male = 20 + 30 * index, bool(index % 2)
        cv2.imwrite(str(images / f"{100 + index}.png"), hand(age, male, index))
        rows.append({"id": 100 + index, "boneage": age, "male": male})
    pd.DataFrame(rows).to_csv(folder / "boneage-training-dataset.csv", index=False)
    return folder


def run_cli(*arguments, cwd=None, own_process=False) -> subprocess.CompletedProcess:
    """The command's status, stdout and stderr. In this process by default (a new interpreter
    per call cost most of this file's time); `own_process` where what a C library writes to the
    process's stderr, or the command's imports, are under test."""
    arguments = [str(argument) for argument in arguments]
    if own_process:
        return subprocess.run([sys.executable, "-m", "utils.predict", *arguments],
                              capture_output=True, text=True, cwd=cwd, timeout=120)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or Path.cwd()), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = predict.main(arguments)
        except SystemExit as exit_:  # argparse's usage errors
            status = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(["utils.predict", *arguments], status, stdout.getvalue(), stderr.getvalue())


def write_png(path: Path, age=100, male=False, seed=7) -> Path:
    cv2.imwrite(str(path), hand(age, male, seed))
    return path


def write_dicom(path: Path, pixels: np.ndarray, sex="F", age="010Y") -> Path:
    """A MONOCHROME1 DICOM: low values are white, so the stored pixels are the negative."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientSex = sex
    dataset.PatientAge = age
    dataset.Modality = "CR"
    stored = (4095 - pixels.astype(np.uint16) * 16).astype(np.uint16)
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = stored.tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_one_png_prints_the_reading_as_json(model_dir, tmp_path):
    image = write_png(tmp_path / "hand.png")
    result = run_cli(image, "--sex", "f", "--model", model_dir, own_process=True)  # `python -m` end to end
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)
    assert set(reading) == JSON_KEYS
    assert reading["sex"] == "female" and reading["sex_source"] == "--sex"
    assert reading["model"].endswith("bone_age.onnx")
    assert reading["bone_age_years"] == pytest.approx(reading["bone_age_months"] / 12, abs=0.01)
    interval = reading["interval"]
    assert interval["low"] <= reading["bone_age_months"] <= interval["high"]
    assert interval["coverage_pct"] == 90.0
    # The number is the Keras model's on the image preprocessed as the model card says.
    predictor = load_predictor(model_dir / "bone_age.keras")
    pixels = predictor.preprocess(image)[np.newaxis, ..., np.newaxis].astype("float32")
    expected = keras.models.load_model(model_dir / "bone_age.keras").predict(
        {"image": pixels, "male": np.zeros((1, 1), "float32")}, verbose=0
    )
    assert reading["bone_age_months"] == pytest.approx(float(expected[0, 0]), abs=0.01)


def test_chronological_age_adds_the_clinical_reading(model_dir, tmp_path):
    image = write_png(tmp_path / "hand.png")
    result = run_cli(image, "--sex", "Male", "--age-months", "60", "--model", model_dir / "bone_age.onnx")
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)
    assert set(reading) == JSON_KEYS | CLINICAL_KEYS | {"age_source"}
    assert reading["sex"] == "male" and reading["chronological_age_months"] == 60
    assert reading["difference_months"] == pytest.approx(reading["bone_age_months"] - 60, abs=0.02)
    assert reading["category"] in {"delayed", "normal", "advanced"}


def test_dicom_gives_sex_and_age_and_the_command_line_overrides_them(model_dir, tmp_path):
    dicom = write_dicom(tmp_path / "study.dcm", hand(120, False, 3), sex="F", age="010Y")
    assert dicom_demographics(dicom) == (False, 120.0)
    result = run_cli(dicom, "--model", model_dir)
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)
    assert (reading["sex"], reading["sex_source"]) == ("female", "DICOM PatientSex")
    assert (reading["chronological_age_months"], reading["age_source"]) == (120, "DICOM header")
    overridden = json.loads(run_cli(dicom, "--sex", "M", "--age-months", "90", "--model", model_dir).stdout)
    assert (overridden["sex"], overridden["chronological_age_months"]) == ("male", 90)
    # MONOCHROME1 is inverted on reading: the DICOM reads like the same hand saved as PNG.
    png = json.loads(run_cli(write_png(tmp_path / "same.png", 120, False, 3), "--sex", "F", "--model", model_dir).stdout)
    assert reading["bone_age_months"] == pytest.approx(png["bone_age_months"], abs=2.0)


def test_dicom_age_in_months_or_from_dates(tmp_path):
    pixels = hand(60, True, 1)
    assert dicom_demographics(write_dicom(tmp_path / "a.dcm", pixels, sex="M", age="006M")) == (True, 6.0)
    dated = write_dicom(tmp_path / "b.dcm", pixels, sex="", age="")
    header = pydicom.dcmread(dated)
    header.PatientBirthDate, header.StudyDate = "20100101", "20200101"
    header.save_as(dated)
    male, age = dicom_demographics(dated)
    assert male is None and age == pytest.approx(120.0, abs=0.1)
    assert dicom_demographics(write_png(tmp_path / "c.png")) == (None, None)


def test_kaggle_folder_writes_one_row_per_image(model_dir, kaggle_folder, tmp_path):
    result = run_cli(kaggle_folder, "--model", model_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / f"{kaggle_folder.name}_predictions.csv"
    assert str(out) in result.stdout
    table = pd.read_csv(out, dtype={"id": str})
    assert list(table.columns) == ["id", "male", "boneage", *PREDICTION_COLUMNS]
    assert sorted(table["id"]) == [str(100 + index) for index in range(6)]
    assert table.set_index("id").loc["103", "boneage"] == 110
    assert (table["boneage_low"] <= table["boneage_pred"]).all() and (table["boneage_pred"] <= table["boneage_high"]).all()
    assert not (tmp_path / f"{kaggle_folder.name}_predictions.errors.csv").exists()
    # The same numbers as the library call on the same images.
    predictor = load_predictor(model_dir)
    images = np.stack([predictor.preprocess(kaggle_folder / "boneage-training-dataset" / f"{i}.png") for i in table["id"]])
    expected = predictor.predict_images(images, table["male"].to_numpy())
    np.testing.assert_allclose(table["boneage_pred"], expected["boneage_pred"], atol=0.01)
    assert list(table["quality_flag"]) == list(expected["quality_flag"])


def test_folder_with_a_corrupt_image_predicts_the_others_and_lists_it(model_dir, tmp_path):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    for index in range(3):
        write_png(folder / "images" / f"good{index}.png", seed=index)
    # A valid PNG header and end marker around garbage: only a full decode finds the damage.
    good_bytes = (folder / "images" / "good0.png").read_bytes()
    (folder / "images" / "bad.png").write_bytes(good_bytes[:60] + b"\x00" * 200 + good_bytes[-20:])
    (folder / "images" / "missing_end.png").write_bytes(good_bytes[: len(good_bytes) // 2])
    paths = ["images/good0.png", "images/good1.png", "images/bad.png", "images/good2.png", "images/missing_end.png"]
    pd.DataFrame({"path": paths, "boneage": 100, "sex": "F"}).to_csv(folder / "labels.csv", index=False)
    out = tmp_path / "out" / "predictions.csv"
    out.parent.mkdir()  # --out does not create folders
    result = run_cli(folder, "--model", model_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(pd.read_csv(out)["id"]) == ["good0", "good1", "good2"]
    errors = pd.read_csv(tmp_path / "out" / "predictions.errors.csv")
    # The truncated file is caught by load_dataset's check of the table (a row of labels.csv),
    # the damaged one by decoding.
    listed = {(Path(row.file).name, None if pd.isna(row.line) else int(row.line)): row.reason for row in errors.itertuples()}
    assert set(listed) == {("labels.csv", 6), ("bad.png", None)}
    assert "missing_end.png" in listed[("labels.csv", 6)]
    assert "cannot be decoded" in listed[("bad.png", None)]
    assert "warning: 2 of 5 images left out" in result.stderr and "bad.png" in result.stderr


def test_bare_folder_uses_file_names_and_needs_the_sex(model_dir, tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in ("a", "b"):
        write_png(folder / f"{name}.png")
    result = run_cli(folder, "--sex", "F", "--model", model_dir, "--out", tmp_path / "bare.csv")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "bare.csv")
    assert list(table["id"]) == ["a", "b"] and list(table.columns) == ["id", "male", *PREDICTION_COLUMNS]
    no_sex = run_cli(folder, "--model", model_dir, "--out", tmp_path / "no_sex.csv")
    assert no_sex.returncode == 1 and "pass --sex" in no_sex.stderr
    assert not (tmp_path / "no_sex.csv").exists()


def test_image_folder_of_a_kaggle_layout_points_to_its_label_table(model_dir, tmp_path):
    images = tmp_path / "boneage-test-dataset"
    images.mkdir()
    write_png(images / "1.png")
    pd.DataFrame({"id": [1], "boneage": [100], "male": [True]}).to_csv(tmp_path / "boneage-test-dataset.csv", index=False)
    inside = run_cli(images, "--model", model_dir, "--out", tmp_path / "inside.csv")
    assert inside.returncode == 1 and f"or the folder {tmp_path}, whose label table boneage-test-dataset.csv" in inside.stderr
    root = run_cli(tmp_path, "--model", model_dir, "--out", tmp_path / "root.csv")
    assert root.returncode == 0, root.stderr
    assert pd.read_csv(tmp_path / "root.csv")["male"].tolist() == [True]


def test_bare_dicom_folder_adds_the_clinical_columns(model_dir, tmp_path):
    folder = tmp_path / "dicoms"
    folder.mkdir()
    write_dicom(folder / "girl.dcm", hand(120, False, 1), sex="F", age="010Y")
    write_dicom(folder / "boy.dcm", hand(60, True, 2), sex="M", age="005Y")
    result = run_cli(folder, "--model", model_dir, "--out", tmp_path / "dicoms.csv")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "dicoms.csv").set_index("id")
    assert table.loc["girl", "chronological_age_months"] == 120 and table.loc["boy", "male"]
    assert {"difference_months", "bone_age_sds", "bone_age_centile", "category"} <= set(table.columns)


def test_corrupt_file_fails_naming_it_and_writes_nothing(model_dir, tmp_path):
    corrupt = tmp_path / "scan.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    out = tmp_path / "out" / "reading.json"
    out.parent.mkdir()  # --out does not create folders
    result = run_cli(corrupt, "--sex", "F", "--model", model_dir, "--out", out)
    assert result.returncode == 1
    assert result.stdout == ""
    assert str(corrupt) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any(out.parent.iterdir())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--sex", "X"], "--sex 'X': expected M or F"),
        ([], "pass --sex M or --sex F"),
        (["--sex", "F", "--age-months", "300"], "--age-months 300"),
    ],
)
def test_wrong_or_missing_command_line_values_exit_2(model_dir, tmp_path, arguments, message):
    result = run_cli(write_png(tmp_path / "hand.png"), *arguments, "--model", model_dir)
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""


@pytest.mark.slow
def test_missing_model_fails_naming_it(tmp_path):
    image = write_png(tmp_path / "hand.png")
    for missing in (tmp_path / "nowhere" / "bone_age.onnx", tmp_path):
        result = run_cli(image, "--sex", "F", "--model", missing)
        assert result.returncode == 1
        assert str(missing) in result.stderr and result.stdout == ""


def test_onnx_path_does_not_import_tensorflow(model_dir, tmp_path):
    image = write_png(tmp_path / "hand.png")
    code = (
        "import sys, utils.predict as p; status = p.main([sys.argv[1], '--sex', 'F', '--model', sys.argv[2]]);"
        "sys.stderr.write(f'tensorflow={\"tensorflow\" in sys.modules} keras={\"keras\" in sys.modules}')"
    )
    result = subprocess.run([sys.executable, "-c", code, str(image), str(model_dir)], capture_output=True, text=True)
    assert result.returncode == 0 and "tensorflow=False keras=False" in result.stderr


def test_keras_file_agrees_with_onnx_and_a_stale_export_is_not_used(model_dir, tmp_path):
    keras_only = tmp_path / "keras_only"
    keras_only.mkdir()
    for name in ("bone_age.keras", "model_card.json"):
        (keras_only / name).write_bytes((model_dir / name).read_bytes())
    images = np.random.default_rng(0).integers(0, 256, (5, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    male = np.array([0, 1, 0, 1, 1])
    from_keras = load_predictor(keras_only / "bone_age.keras").predict_images(images, male)
    from_onnx = load_predictor(model_dir).predict_images(images, male)
    assert list(from_keras.columns) == ["boneage_pred", "boneage_low", "boneage_high", "quality_score", "quality_flag"]
    np.testing.assert_allclose(from_keras["boneage_pred"], from_onnx["boneage_pred"], atol=1e-3)
    assert resolve_model(model_dir)[0].name == "bone_age.onnx"
    (keras_only / "bone_age.onnx").write_bytes((model_dir / "bone_age.onnx").read_bytes())
    modified = (keras_only / "bone_age.keras").stat().st_mtime
    os.utime(keras_only / "bone_age.onnx", (modified - 60, modified - 60))
    assert resolve_model(keras_only)[0].name == "bone_age.keras"


@pytest.mark.slow
def test_gradcam_writes_an_overlay_per_image(model_dir, kaggle_folder, tmp_path):
    pytest.importorskip("utils.explain")
    image = write_png(tmp_path / "hand.png")
    result = run_cli(image, "--sex", "F", "--model", model_dir, "--gradcam", tmp_path / "cams")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sex"] == "female"
    overlay = cv2.imread(str(tmp_path / "cams" / "hand_gradcam.png"), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    result = run_cli(kaggle_folder, "--model", model_dir, "--out", tmp_path / "p.csv", "--gradcam", tmp_path / "folder_cams")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "folder_cams").iterdir()) == [f"{100 + i}_gradcam.png" for i in range(6)]


def test_gradcam_without_the_keras_model_fails_before_writing(model_dir, tmp_path):
    onnx_only = tmp_path / "onnx_only"
    onnx_only.mkdir()
    for name in ("bone_age.onnx", "model_card.json"):
        (onnx_only / name).write_bytes((model_dir / name).read_bytes())
    out = tmp_path / "reading.json"
    result = run_cli(write_png(tmp_path / "hand.png"), "--sex", "F", "--model", onnx_only, "--gradcam", tmp_path / "cams", "--out", out)
    assert result.returncode == 1
    assert str(onnx_only / "bone_age.keras") in result.stderr and "--gradcam" in result.stderr
    assert result.stdout == "" and not out.exists() and not (tmp_path / "cams").exists()


def test_the_cards_tta_mode_is_the_one_predicted_with(model_dir, tmp_path):
    folder = copy_model_dir(model_dir, tmp_path / "flipped", tta="shift_flip")
    predictor = load_predictor(folder)
    assert predictor.tta == "shift_flip" and predictor.model_path.suffix == ".onnx"
    images = np.random.default_rng(1).integers(0, 256, (6, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    male = np.array([0, 1, 0, 1, 1, 0])
    predicted = predictor.predict_images(images, male)["boneage_pred"].to_numpy()
    keras_model = keras.models.load_model(model_dir / "bone_age.keras")
    np.testing.assert_allclose(predicted, predict_months(keras_model, images, male, tta="shift_flip"), atol=1e-3)
    assert not np.allclose(predicted, load_predictor(model_dir).predict_images(images, male)["boneage_pred"])


@pytest.mark.parametrize("hand_crop", ["none", "box"])
def test_the_cards_hand_crop_reaches_the_preprocessing(model_dir, tmp_path, monkeypatch, hand_crop):
    folder = copy_model_dir(model_dir, tmp_path / "cropped", names=("bone_age.onnx",),
                            preprocessing=Preprocessing(IMAGE_SIZE, pad_to_square=False, contrast="percentile", hand_crop=hand_crop))
    calls = []
    monkeypatch.setattr(predict, "preprocess_image", lambda image, size, **options: calls.append((size, options)) or image)
    load_predictor(folder).preprocess(write_png(tmp_path / "hand.png"))
    (size, options), = calls
    assert size == IMAGE_SIZE and options["pad_to_square"] is False and options["contrast"] == "percentile"
    assert options.get("hand_crop", "none") == hand_crop


# The clinical outputs (issue 16): growth chart and earlier visits, a visits CSV, FHIR, DICOM SR, rejection.


def test_chart_and_previous_visits_add_the_velocity(model_dir, tmp_path):
    chart = tmp_path / "charts" / "chart.png"
    result = run_cli(write_png(tmp_path / "hand.png"), "--sex", "F", "--age-months", "126", "--model", model_dir,
                     "--chart", chart, "--previous", "102:110", "--previous", "114:120:104:136")
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)
    velocity = reading["bone_age_velocity"]
    assert velocity["since_months"] == 12
    assert velocity["value"] == pytest.approx((reading["bone_age_months"] - 120) / 12, abs=0.01)
    # 90% interval from the two visits' intervals: ± sqrt(16² + h²) / 12, h the larger side of this one.
    interval = reading["interval"]
    side = max(reading["bone_age_months"] - interval["low"], interval["high"] - reading["bone_age_months"])
    assert velocity["high"] - velocity["value"] == pytest.approx(np.hypot(16, side) / 12, abs=0.01)
    image = cv2.imread(str(chart))
    assert image is not None and image.shape[0] > 600 and image.shape[1] > 600


def test_chart_needs_the_chronological_age_and_earlier_visits_at_younger_ages(model_dir, tmp_path):
    image = write_png(tmp_path / "hand.png")
    no_age = run_cli(image, "--sex", "F", "--model", model_dir, "--chart", tmp_path / "c.png")
    assert no_age.returncode == 2 and "need the chronological age" in no_age.stderr
    later = run_cli(image, "--sex", "F", "--age-months", "100", "--model", model_dir, "--previous", "110:100")
    assert later.returncode == 2 and "ages below this visit" in later.stderr
    assert not (tmp_path / "c.png").exists()


def test_visits_csv_gives_readings_velocities_and_a_chart_per_child(model_dir, tmp_path):
    images = tmp_path / "visits" / "images"
    images.mkdir(parents=True)
    rows = ["patient,id,path,sex,chronological_age_months"]
    for patient, male, ages in (("anna", False, (110, 122, 134)), ("ben", True, (60, 84))):
        for visit, age in enumerate(ages):
            write_png(images / f"{patient}{visit}.png", age, male, seed=visit + 10 * male)
            rows.append(f"{patient},{patient}{visit},images/{patient}{visit}.png,{'M' if male else 'F'},{age}")
    csv = tmp_path / "visits" / "visits.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out" / "visits_read.csv"
    out.parent.mkdir()  # --out does not create folders
    result = run_cli(csv, "--model", model_dir, "--out", out, "--chart", tmp_path / "charts")
    assert result.returncode == 0, result.stderr
    assert "wrote 5 visits of 2 children" in result.stdout
    table = pd.read_csv(out)
    assert table["id"].tolist() == ["anna0", "anna1", "anna2", "ben0", "ben1"]
    assert {"bone_age_sds", "bone_age_centile", "category", "bone_age_velocity", "bone_age_velocity_low"} <= set(table.columns)
    anna = table[table["patient"] == "anna"]
    expected = np.diff(anna["boneage_pred"]) / 12
    np.testing.assert_allclose(anna["bone_age_velocity"].iloc[1:], expected, atol=0.002)
    assert table.groupby("patient")["bone_age_velocity"].apply(lambda rates: rates.isna().iloc[0]).all()
    assert sorted(path.name for path in (tmp_path / "charts").iterdir()) == ["anna_chart.png", "ben_chart.png"]
    refused = run_cli(csv, "--model", model_dir, "--sex", "F")
    assert refused.returncode == 2 and "not a visits CSV" in refused.stderr


def with_study(path: Path) -> Path:
    """The DICOM of write_dicom with the study, series and patient identifiers of a real one."""
    dataset = pydicom.dcmread(path)
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.PatientID, dataset.PatientName, dataset.StudyDate = "P-16", "Doe^Jane", "20240105"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_fhir_format_prints_an_observation_of_the_same_reading(model_dir, tmp_path):
    from test_result_formats import schema_errors

    dicom = with_study(write_dicom(tmp_path / "study.dcm", hand(120, False, 3), sex="F", age="010Y"))
    reading = json.loads(run_cli(dicom, "--model", model_dir).stdout)
    result = run_cli(dicom, "--model", model_dir, "--format", "fhir", "--out", tmp_path / "observation.json")
    assert result.returncode == 0, result.stderr
    observation = json.loads(result.stdout)
    assert observation == json.loads((tmp_path / "observation.json").read_text())
    assert schema_errors(observation) == []
    assert observation["resourceType"] == "Observation" and observation["valueQuantity"]["value"] == reading["bone_age_months"]
    assert observation["subject"]["identifier"]["value"] == "P-16"
    assert observation["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{pydicom.dcmread(dicom).StudyInstanceUID}"
    refused = run_cli(tmp_path, "--model", model_dir, "--format", "fhir")
    assert refused.returncode == 2 and "for a single image" in refused.stderr


def test_dicom_out_writes_a_structured_report_in_the_source_study(model_dir, tmp_path):
    dicom = with_study(write_dicom(tmp_path / "study.dcm", hand(120, False, 3), sex="F", age="010Y"))
    result = run_cli(dicom, "--model", model_dir, "--dicom-out", tmp_path / "reports")
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)
    sr = pydicom.dcmread(tmp_path / "reports" / "study_bone_age_sr.dcm")
    source = pydicom.dcmread(dicom)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == "P-16"
    referenced = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID

    def items(dataset):
        for item in getattr(dataset, "ContentSequence", []):
            yield item
            yield from items(item)

    bone_age = [float(item.MeasuredValueSequence[0].NumericValue) for item in items(sr)
                if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == "37362-1"]
    assert bone_age == [pytest.approx(reading["bone_age_months"])]
    png = run_cli(write_png(tmp_path / "hand.png"), "--sex", "F", "--model", model_dir, "--dicom-out", tmp_path / "x")
    assert png.returncode == 2 and "is not DICOM" in png.stderr and not (tmp_path / "x").exists()


def broken_images(folder: Path) -> dict[str, Path]:
    """PNGs of the images the quality tests make (tests/test_quality.py: anomalies), from hands of this module."""
    from test_quality import anomalies

    hands = np.stack([hand(60 + 20 * index, bool(index % 2), 100 + index) for index in range(4)])
    paths = {}
    for kind, images in anomalies(np.random.default_rng(8), hands).items():
        if kind in ("blank", "inverted", "rotated", "chest"):
            paths[kind] = folder / f"{kind}.png"
            cv2.imwrite(str(paths[kind]), images[0])
    return paths


def test_reject_flagged_gives_no_age_for_the_broken_images(model_dir, tmp_path):
    broken = broken_images(tmp_path)
    expected_flags = {"blank": "blank", "inverted": "inverted", "rotated": "rotated", "chest": "unusual"}
    for kind, path in broken.items():
        result = run_cli(path, "--sex", "F", "--age-months", "100", "--model", model_dir, "--reject-flagged")
        assert result.returncode == 3, (kind, result.stderr)
        reading = json.loads(result.stdout)
        assert reading["bone_age_months"] is None and reading["rejected"] is True
        assert reading["quality_flag"] == expected_flags[kind]
        assert f"quality flag '{expected_flags[kind]}'" in reading["rejection_reason"]
        assert "interval" not in reading and "category" not in reading and reading["chronological_age_months"] == 100
    # Without the option the same image still gets an age; a good image is never rejected.
    assert json.loads(run_cli(broken["blank"], "--sex", "F", "--model", model_dir).stdout)["bone_age_months"] is not None
    good = run_cli(write_png(tmp_path / "hand.png"), "--sex", "F", "--model", model_dir, "--reject-flagged")
    assert good.returncode == 0 and json.loads(good.stdout)["bone_age_months"] is not None
    fhir = run_cli(broken["rotated"], "--sex", "F", "--model", model_dir, "--reject-flagged", "--format", "fhir")
    assert fhir.returncode == 3 and json.loads(fhir.stdout)["status"] == "cancelled"


def test_reject_flagged_in_a_folder_empties_the_value_and_gives_the_reason(model_dir, tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    broken = broken_images(folder)
    for name in ("a", "b"):
        write_png(folder / f"{name}.png")
    out = tmp_path / "rejected.csv"
    result = run_cli(folder, "--sex", "F", "--model", model_dir, "--out", out, "--reject-flagged")
    assert result.returncode == 0, result.stderr
    assert f"{len(broken)} of them rejected" in result.stdout
    table = pd.read_csv(out).set_index("id")
    rejected = table.loc[list(broken)]
    assert rejected["boneage_pred"].isna().all() and rejected["boneage_low"].isna().all()
    assert rejected["rejection_reason"].str.contains("no age is given").all()
    assert table.loc[["a", "b"], "boneage_pred"].notna().all() and table.loc[["a", "b"], "rejection_reason"].isna().all()


# ---- every bad input named: the file and the problem -----------------------------------------


def noise_png(path: Path, side=512) -> bytes:
    """An incompressible PNG, large enough that libpng reads it in several blocks."""
    data = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (side, side), dtype=np.uint8))[1].tobytes()
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("damage, problem", [
    (lambda data: data[: len(data) // 3], "PNG end marker missing (truncated file?)"),
    # Cut in the middle with the end marker kept: only the decoder finds it, and libpng says so on its own.
    (lambda data: data[:100_000] + data[-12:], "cannot be decoded (corrupt or not an image): libpng error: Read Error"),
])
def test_a_damaged_png_is_named_on_the_first_line(model_dir, tmp_path, damage, problem):
    image = tmp_path / "hand.png"
    image.write_bytes(damage(noise_png(tmp_path / "hand.png")))
    result = run_cli(image, "--sex", "F", "--model", model_dir, own_process=True)  # libpng writes to fd 2
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {image}: {problem}"]


def test_a_damaged_keras_file_is_not_called_missing(model_dir, tmp_path):
    folder = copy_model_dir(model_dir, tmp_path / "model", names=("model_card.json",))
    keras_file = folder / "bone_age.keras"
    keras_file.write_bytes((model_dir / "bone_age.keras").read_bytes()[:2000])
    result = run_cli(write_png(tmp_path / "hand.png"), "--sex", "F", "--model", keras_file)
    assert result.returncode == 1
    assert f"error: {keras_file}: not a readable Keras model" in result.stderr and "not found" not in result.stderr


@pytest.mark.parametrize("out, message", [
    (lambda tmp: tmp, "is a folder; give a file name, e.g. --out"),
    (lambda tmp: tmp / "nonexistent" / "x.json", "does not exist"),
])
def test_out_must_be_a_file_in_a_folder_that_exists(model_dir, tmp_path, out, message):
    image = write_png(tmp_path / "hand.png")
    result = run_cli(image, "--sex", "F", "--model", model_dir, "--out", out(tmp_path))
    assert result.returncode == 2 and message in result.stderr and str(out(tmp_path)) in result.stderr
    assert not (tmp_path / "nonexistent").exists() and sorted(path.name for path in tmp_path.iterdir()) == ["hand.png"]


def test_a_rerun_without_errors_removes_the_old_errors_file(model_dir, tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    write_png(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    out = tmp_path / "predictions.csv"
    assert run_cli(folder, "--sex", "F", "--model", model_dir, "--out", out).returncode == 0
    assert (tmp_path / "predictions.errors.csv").exists()
    (folder / "b.png").unlink()
    assert run_cli(folder, "--sex", "F", "--model", model_dir, "--out", out).returncode == 0
    assert not (tmp_path / "predictions.errors.csv").exists() and len(pd.read_csv(out)) == 1


def test_a_truncated_image_of_a_bare_folder_is_listed_by_name(model_dir, tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    write_png(folder / "a.png")
    (folder / "cut.png").write_bytes(noise_png(tmp_path / "whole.png")[:50_000])
    out = tmp_path / "predictions.csv"
    result = run_cli(folder, "--sex", "F", "--model", model_dir, "--out", out)
    assert result.returncode == 0 and "libpng" not in result.stderr
    errors = pd.read_csv(tmp_path / "predictions.errors.csv")
    assert errors["file"].tolist() == [str(folder / "cut.png")] and "truncated" in errors["reason"].iloc[0]


@pytest.mark.parametrize("separator, works", [(";", True), ("\t", True), (":", False)])
def test_a_label_table_of_another_separator_is_read_or_named(model_dir, tmp_path, separator, works):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("a", "b"):
        write_png(folder / f"{name}.png")
    (folder / "labels.csv").write_text("\n".join(separator.join(row) for row in
                                                 [("path", "boneage", "sex"), ("a.png", "100", "F"), ("b.png", "90", "M")]) + "\n")
    out = tmp_path / "predictions.csv"
    result = run_cli(folder, "--model", model_dir, "--out", out)
    if works:
        assert result.returncode == 0, result.stderr
        assert pd.read_csv(out)["id"].tolist() == ["a", "b"]
    else:
        assert result.returncode == 1 and "required column missing" in result.stderr
        assert "read as separated by commas" in result.stderr and "semicolons" in result.stderr


def test_a_blank_image_gets_no_clinical_category_and_says_why(model_dir, tmp_path):
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((256, 200), np.uint8))
    result = run_cli(black, "--sex", "M", "--age-months", "160", "--model", model_dir)
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)
    assert reading["quality_flag"] == "blank" and reading["bone_age_months"] is not None
    assert reading["category"] is None and reading["bone_age_sds"] is None and reading["difference_months"] is None
    assert reading["chronological_age_months"] == 160
    assert "quality flag 'blank'" in reading["clinical_reading_withheld"] and "nearly uniform" in reading["clinical_reading_withheld"]
    assert f"warning: {black}: quality flag 'blank'" in result.stderr


def test_a_folder_gives_flagged_images_no_clinical_category(model_dir, tmp_path):
    folder = tmp_path / "dicoms"
    folder.mkdir()
    write_dicom(folder / "girl.dcm", hand(120, False, 1), sex="F", age="010Y")
    write_dicom(folder / "blank.dcm", np.zeros((64, 64), np.uint8), sex="M", age="013Y")
    out = tmp_path / "dicoms.csv"
    result = run_cli(folder, "--model", model_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out).set_index("id")
    assert table.loc["blank", "quality_flag"] == "blank" and pd.isna(table.loc["blank", "category"])
    assert table.loc["blank", "chronological_age_months"] == 156
    assert "1 image(s) flagged by the quality check (blank 1): no clinical category" in result.stderr
