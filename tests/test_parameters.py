"""utils.parameters (the typed, validated parameters of a run) and utils.config (where files live)."""

import dataclasses

import pytest
import yaml

from utils import config
from utils.parameters import NAMES, NETWORK_OPTIONS, TRAINING_OPTIONS, Parameters, load_parameters, read_presets


def test_defaults_then_preset_then_overrides():
    parameters = load_parameters("ci", {"epochs": 1})
    presets = read_presets()
    assert parameters.image_size == presets["presets"]["ci"]["image_size"]
    assert parameters.seed == presets["defaults"]["seed"]
    assert parameters.epochs == 1
    assert parameters.run_name == "ci" and parameters.preset == "ci"


def test_every_field_has_a_default_in_presets_yaml_and_no_default_in_code():
    defaults = read_presets()["defaults"]
    assert set(NAMES) - {"preset", "run_name"} == set(defaults)
    assert all(item.default is dataclasses.MISSING for item in dataclasses.fields(Parameters))
    assert set(NETWORK_OPTIONS) | set(TRAINING_OPTIONS) <= set(NAMES)


def test_run_name_override_moves_every_path(tmp_path, monkeypatch):
    monkeypatch.setenv("BONE_AGE_RESULTS_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("BONE_AGE_MODELS_DIR", str(tmp_path / "m"))
    paths = config.RunPaths(load_parameters("ci", {"run_name": "other"}).run_name)
    assert paths.metrics == tmp_path / "r" / "other" / "performance_metrics.json"
    assert paths.model == tmp_path / "m" / "other" / "bone_age.keras"
    assert not (tmp_path / "r").exists(), "naming the paths must not create folders"
    paths.make()
    assert paths.figures.is_dir() and paths.models.is_dir()


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*demo"):
        load_parameters("nope")


def test_misspelt_override_is_refused():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['epoch'\]"):
        load_parameters("demo", {"epoch": 3})


def test_every_preset_loads():
    for name in read_presets()["presets"]:
        assert load_parameters(name).preset == name


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("epochs", "abc", "epochs: expected an integer >= 1, got 'abc'"),
        ("epochs", 0, "epochs: expected an integer >= 1, got 0"),
        ("learning_rate", -1, "learning_rate: expected a number > 0.0 and <= 1.0, got -1"),
        ("batch_size", 0, "batch_size: expected an integer from 1 to 4096, got 0"),
        ("run_name", "../x", "run_name: expected a plain name"),
        ("run_name", "a/b", "run_name: expected a plain name"),
        ("contrast", "sharp", "contrast: expected one of clahe, percentile, none, got 'sharp'"),
        ("augment", "yes", "augment: expected true or false, got 'yes'"),
        ("widths", [32, 0], "widths: expected a list of positive integers"),
        ("interval_coverage", 1.5, "interval_coverage: expected a number > 0.5 and < 1.0"),
        ("split_fractions", {"train": 0.85, "test": 0.15}, "split_fractions: .*validation is 0"),
        ("split_fractions", {"train": 0.5, "validation": 0.1, "calibration": 0.1, "test": 0.1},
         "split_fractions: expected fractions that sum to 1"),
        ("folds", 0, "folds: expected an integer from 1 to 20, got 0"),
        ("fold", 2, "fold: expected a fold from 1 to folds (1), got 2"),
        ("data_seed", -1, "data_seed: expected an integer >= 0, got -1"),
    ],
)
def test_bad_values_are_named_with_what_they_expect(name, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_parameters("ci", {name: value})


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(ValueError) as caught:
        load_parameters("ci", {"epochs": "abc", "batch_size": 0, "tta": "sideways"})
    assert all(name in str(caught.value) for name in ("epochs:", "batch_size:", "tta:"))


def test_values_are_cleaned_to_their_types():
    parameters = load_parameters("ci", {"tta": True, "learning_rate": 1, "epochs": 3.0, "widths": [8, 16]})
    assert parameters.tta == "shift" and load_parameters("ci", {"tta": False}).tta == "none"
    assert isinstance(parameters.learning_rate, float) and parameters.epochs == 3 and isinstance(parameters.epochs, int)
    assert parameters.widths == (8, 16)
    assert parameters.to_dict()["widths"] == [8, 16]
    yaml.safe_dump(parameters.to_dict())  # plain values only


def test_replace_checks_like_load():
    parameters = load_parameters("ci")
    assert parameters.replace(epochs=5).epochs == 5
    with pytest.raises(ValueError, match="epochs"):
        parameters.replace(epochs=-1)


def test_a_presets_file_without_a_default_is_refused(tmp_path):
    presets = read_presets()
    del presets["defaults"]["loss"]
    broken = tmp_path / "presets.yaml"
    broken.write_text(yaml.safe_dump(presets))
    with pytest.raises(ValueError, match="`defaults` lacks loss"):
        load_parameters("ci", presets_file=broken)


def test_the_data_seed_is_the_seed_unless_given():
    assert load_parameters("ci", {"seed": 7}).resolved_data_seed == 7
    assert load_parameters("ci", {"seed": 7, "data_seed": 42}).resolved_data_seed == 42


def test_progressive_resizing_is_checked_against_the_run():
    assert load_parameters("ci", {"progressive_image_size": 32, "progressive_epochs": 3}).progressive_schedule == (32, 3)
    assert load_parameters("ci").progressive_schedule is None
    with pytest.raises(ValueError) as refused:
        load_parameters("ci", {"progressive_image_size": 48, "progressive_epochs": 8, "architecture": "seed_baseline",
                               "ema": True})
    assert str(refused.value).splitlines()[1:] == [
        "  progressive_image_size: progressive resizing is for our network; architecture is 'seed_baseline'",
        "  progressive_image_size: expected a side from 16 (the network's total stride) to below image_size (48), "
        "got 48",
        "  progressive_image_size: progressive resizing cannot be combined with ema (each phase ends by writing the "
        "averaged weights into the network)",
        "  progressive_epochs: expected 1 to epochs - 1 (7) epochs at progressive_image_size, got 8",
    ]
    with pytest.raises(ValueError, match="expected a side from 16 .* got 8"):  # stride 2, then 3 poolings
        load_parameters("ci", {"progressive_image_size": 8, "progressive_epochs": 3})
    with pytest.raises(ValueError, match="progressive_epochs: 3 epochs at which side. Set progressive_image_size too"):
        load_parameters("ci", {"progressive_epochs": 3})
