"""utils.model_card: the card's schema, its round trip through the file, and what a bad card gets told."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from utils import model_card
from utils.conformal import fit_conformal
from utils.model_card import CARD_VERSION, ModelCard, Preprocessing
from utils.quality import QualityReference

SIZE = 32
REFUSED_VERSION = (
    "model card version 1 (or missing), this code reads version 2: re-export the model by rerunning stage 04: "
    "python -m utils.pipeline --preset"
)


@pytest.fixture(scope="module")
def parts() -> dict:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 228, 200)
    images = rng.integers(0, 256, (30, SIZE, SIZE), dtype=np.uint8)
    return {
        "calibration": fit_conformal(truth, truth + rng.normal(0, 10, 200), coverage=0.9).to_dict(),
        "quality_reference": QualityReference.fit(images).to_dict(),
    }


def a_card(parts, **changes) -> ModelCard:
    fields = dict(
        preprocessing=Preprocessing(image_size=SIZE, pad_to_square=False, contrast="clahe", hand_crop="box"),
        tta="flip",
        target_mean=127.4,
        target_std=41.2,
        metrics={"n": 10, "mae": 9.5},
        split_counts={"train": 70, "validation": 10, "calibration": 5, "test": 15},
        parameters={"preset": "unit", "image_size": SIZE, "tta": "flip", "widths": [4, 8]},
        command="python -m utils.pipeline --preset unit -p epochs 3",
        git_commit="0123abc",
        **parts,
    )
    fields.update(changes)
    return ModelCard(**fields)


def write_raw(path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def test_a_card_round_trips_through_its_file(parts, tmp_path):
    card = a_card(parts)
    path = card.write(tmp_path / "model_card.json")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["model_card.json"]  # no temporary left
    restored = ModelCard.read(path)
    assert restored == card
    assert restored.preprocessing.hand_crop == "box" and restored.tta == "flip"
    assert restored.conformal_interval().coverage == 0.9
    assert restored.quality().image_shape == (SIZE, SIZE)
    data = json.loads(path.read_text())
    assert data["card_version"] == CARD_VERSION == 2
    assert data["preprocessing"] == {"image_size": SIZE, "pad_to_square": False, "contrast": "clahe", "hand_crop": "box"}


def test_the_file_describes_the_networks_inputs_and_output(parts, tmp_path):
    data = json.loads(a_card(parts).write(tmp_path / "card.json").read_text())
    inputs, outputs = data["network_data_format"]["inputs"], data["network_data_format"]["outputs"]
    assert inputs["image"]["dtype"] == "float32" and inputs["image"]["shape"] == ["N", SIZE, SIZE, 1]
    assert inputs["image"]["value_range"] == [0, 255]
    assert inputs["male"]["shape"] == ["N", 1] and inputs["male"]["value_range"] == [0, 1]
    assert list(outputs) == ["bone_age_months"] and outputs["bone_age_months"]["shape"] == ["N", 1]
    # A file that describes another network is refused.
    data["network_data_format"]["inputs"]["image"]["shape"] = ["N", 64, 64, 1]
    path = write_raw(tmp_path / "other.json", data)
    with pytest.raises(ValueError, match=rf"{path}: network_data_format describes"):
        ModelCard.read(path)


def test_from_run_takes_preprocessing_tta_and_command_from_the_parameters(parts):
    parameters = {"preset": "rsna100", "image_size": 96, "pad_to_square": False, "contrast": "clahe", "tta": True}
    card = ModelCard.from_run(
        parameters, overrides={"epochs": 60, "run_name": "x y"}, target_mean=1.0, target_std=2.0, metrics={},
        split_counts={}, git_commit="abc", **parts,
    )
    assert card.preprocessing == Preprocessing(96, False, "clahe", "none")  # hand_crop defaults to none
    assert card.tta == "shift"  # the boolean of older parameters
    assert card.command == "python -m utils.pipeline --preset rsna100 -p epochs 60 -p run_name 'x y'"
    assert card.parameters == parameters and card.parameters is not parameters


def test_a_parameters_object_becomes_a_plain_dict(parts):
    class Parameters:  # like utils.parameters.Parameters: attributes, and to_dict for JSON
        def to_dict(self):
            return {"preset": "demo", "image_size": SIZE, "pad_to_square": True, "contrast": "none",
                    "hand_crop": "rotated", "tta": "none"}

    card = ModelCard.from_run(Parameters(), target_mean=1.0, target_std=2.0, metrics={}, split_counts={},
                              git_commit="abc", **parts)
    assert card.parameters == Parameters().to_dict() and card.preprocessing.hand_crop == "rotated"


def test_a_missing_key_is_named_with_the_file(parts, tmp_path):
    data = a_card(parts).to_dict()
    del data["calibration"]
    path = write_raw(tmp_path / "no_calibration.json", data)
    with pytest.raises(ValueError, match=rf"^{path}: model card lacks calibration$"):
        ModelCard.read(path)
    data = a_card(parts).to_dict()
    del data["preprocessing"]["contrast"], data["tta"]
    path = write_raw(tmp_path / "no_contrast.json", data)
    with pytest.raises(ValueError, match=rf"^{path}: model card lacks tta, preprocessing.contrast$"):
        ModelCard.read(path)


def test_not_json_is_named_with_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"card_version": 2,', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}: not a model card: cannot be read as JSON"):
        ModelCard.read(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}: not a model card: expected a JSON object, got list"):
        ModelCard.read(path)


def test_a_card_of_another_version_is_refused_with_the_command_that_rewrites_it(parts, tmp_path):
    # A version 1 card as the committed models/rsna100 had it: flat preprocessing, no card_version.
    old = {
        "model": "bone_age.keras", "image_size": 96, "pad_to_square": False, "contrast": "clahe",
        "parameters": {"preset": "rsna100", "tta": True}, "command": "python -m utils.pipeline --preset rsna100",
        "conformal": parts["calibration"], "quality_reference": parts["quality_reference"],
    }
    path = write_raw(tmp_path / "v1.json", old)
    with pytest.raises(ValueError) as refused:
        ModelCard.read(path)
    assert str(refused.value) == f"{path}: {REFUSED_VERSION} rsna100 --stages 04,05"
    # Without a command, the preset of the parameters (or a placeholder) goes in its place.
    del old["command"]
    with pytest.raises(ValueError, match=r"--preset rsna100 --stages 04,05$"):
        ModelCard.read(write_raw(tmp_path / "v1.json", old))
    with pytest.raises(ValueError, match=r"--preset <preset> --stages 04,05$"):
        ModelCard.read(write_raw(tmp_path / "v1.json", {"card_version": 1}))
    newer = {**a_card(parts).to_dict(), "card_version": 3}
    with pytest.raises(ValueError, match=r"model card version 3, this code reads version 2: .* --preset unit -p epochs 3 --stages 04,05"):
        ModelCard.read(write_raw(tmp_path / "v3.json", newer))


def test_bad_values_are_named_with_the_file(parts, tmp_path):
    for change, message in [
        ({"tta": "mirror"}, "tta: expected one of none, shift, flip, shift_flip, got 'mirror'"),
        ({"target_std": 0}, "target_std: expected a positive number"),
        ({"preprocessing": {"image_size": "96", "pad_to_square": False, "contrast": "clahe"}}, "preprocessing.image_size"),
        ({"preprocessing": {"image_size": SIZE, "pad_to_square": False, "contrast": "gamma"}}, "preprocessing.contrast"),
        ({"calibration": {"method": "mondrian"}}, "calibration: conformal interval description lacks"),
        ({"quality_reference": {"method": "other"}}, "quality_reference: quality reference: method 'other'"),
        ({"metrics": [1, 2]}, "metrics: expected a mapping"),
    ]:
        data = {**a_card(parts).to_dict(), **change}
        if "preprocessing" in change:
            data.pop("network_data_format")
        path = write_raw(tmp_path / "bad.json", data)
        with pytest.raises(ValueError, match=rf"^{path}: ") as refused:
            ModelCard.read(path)
        assert message in str(refused.value), change


def test_the_prediction_command_refuses_an_old_card_before_loading_the_model(parts, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    # Not a model at all: the card is read first, so its refusal is what the user sees.
    (folder / "bone_age.onnx").write_bytes(b"not read")
    card = write_raw(folder / "model_card.json", {"image_size": SIZE, "pad_to_square": True, "contrast": "clahe",
                                                   "parameters": {"preset": "rsna100"}, **parts})
    image = tmp_path / "hand.png"
    cv2.imwrite(str(image), np.full((40, 40), 128, np.uint8))
    result = subprocess.run(
        [sys.executable, "-m", "utils.predict", str(image), "--sex", "F", "--model", str(folder)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == f"error: {card}: {REFUSED_VERSION} rsna100 --stages 04,05"


def test_run_command_quotes_what_the_shell_would_split():
    assert model_card.run_command("ci", {}) == "python -m utils.pipeline --preset ci"
    assert model_card.run_command("ci", {"dataset": "../a b", "tta": "flip"}) == (
        "python -m utils.pipeline --preset ci -p dataset '../a b' -p tta flip"
    )


def _run_metrics(with_baseline: bool) -> dict:
    from utils import evaluation

    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 228, 300)
    predicted = truth + rng.normal(0, 9, 300) - 0.08 * (truth - 114)  # shrunk towards the mean
    intervals = fit_conformal(truth, predicted, coverage=0.9)
    return evaluation.build_performance_metrics(
        parameters={"run_name": "unit", "preset": "unit"}, dataset_name="rsna-bone-age-100",
        dataset_source="../shared/data/rsna-bone-age-100",
        split_counts={"train": 70, "validation": 10, "calibration": 5, "test": 300},
        model_info={"architecture": "ours", "parameters_count": 123456, "image_size": SIZE, "path": "m"},
        y_true=truth, y_pred=predicted, male=rng.random(300) < 0.5, train_ages=rng.uniform(0, 228, 70),
        interval=intervals.interval(predicted), interval_method=intervals.method, interval_nominal=0.9,
        timing={key: None for key in evaluation.TIMING_KEYS},
        baseline_pred=truth + rng.normal(3, 15, 300) if with_baseline else None,
        prediction_runtime={"precision": "int8",
                            "test": evaluation.runtime_agreement(truth, predicted, predicted + 0.25)}
        if with_baseline else None,
    )


@pytest.mark.parametrize("with_baseline", [True, False])
def test_the_markdown_card_tells_people_what_the_model_is_for_and_how_good_it_is(parts, tmp_path, with_baseline):
    metrics = _run_metrics(with_baseline)
    card = a_card(parts, parameters={"preset": "unit", "run_name": "unit", "dataset": "../shared/data/rsna-bone-age-100",
                                     "architecture": "ours"})
    path = card.write_markdown(tmp_path / "MODEL_CARD.md", metrics)
    assert sorted(item.name for item in tmp_path.iterdir()) == ["MODEL_CARD.md"]
    text = path.read_text(encoding="utf-8")
    sections = ["## Intended use", "## Out-of-scope use", "## Data and licence", "## Preprocessing", "## Metrics",
                "## Subgroups", "## Known failure modes", "## Reproduce"]
    positions = [text.index(section) for section in sections]
    assert positions == sorted(positions)
    assert "Not a medical device" in text
    assert "non-commercial research and education" in text and "Halabi" in text and "Radiology 2019" in text
    mae = metrics["ci"]["mae"]
    assert f"{metrics['mae']:.2f} ({mae['low']:.2f} to {mae['high']:.2f})" in text
    for group in ["female", "male", "0-2 y", "15-19 y"]:
        assert f"| {group}" in text
    assert "Regression towards the mean" in text
    assert card.command in text and card.git_commit in text
    assert ("Seed baseline MAE minus ours" in text) == with_baseline
    runtime = "its ONNX export (int8), whose test MAE is"
    assert (runtime in text) == with_baseline
    if with_baseline:
        change = metrics["prediction_runtime"]["test"]["mae_change"]
        assert f"({change:+.3f} against the Keras model's; each prediction moves by 0.25 months" in text


def test_the_markdown_card_without_metrics_says_it_has_no_intervals(parts):
    text = a_card(parts).to_markdown()
    assert "no intervals" in text and "## Subgroups" not in text and "9.50" in text


def test_data_lines_say_when_the_network_was_refitted_on_validation():
    from utils.model_card import _data_lines

    parameters = {"dataset": "../shared/data/rsna-bone-age-100", "epochs": 40}
    counts = {"train": 7000, "validation": 1000, "calibration": 500, "test": 1500}
    assert not any("Refitted" in line for line in _data_lines(parameters, counts))
    refit = " ".join(_data_lines({**parameters, "refit_on_validation": True}, counts))
    assert "training and validation images together for 40 epochs" in refit and "test splits stayed out" in refit
    synthetic = " ".join(_data_lines({"dataset": "synthetic", "epochs": 8, "refit_on_validation": True}, counts))
    assert "Synthetic hand radiographs" in synthetic and "together for 8 epochs" in synthetic
