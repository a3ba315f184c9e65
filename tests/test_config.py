import pytest

from utils import config


def test_defaults_then_preset_then_overrides():
    parameters = config.load_parameters("ci", {"epochs": 1})
    presets = config.read_presets()
    assert parameters["image_size"] == presets["presets"]["ci"]["image_size"]
    assert parameters["seed"] == presets["defaults"]["seed"]
    assert parameters["epochs"] == 1
    assert parameters["run_name"] == "ci" and parameters["preset"] == "ci"


def test_run_name_override_moves_every_path():
    paths = config.RunPaths(config.load_parameters("ci", {"run_name": "other"})["run_name"])
    assert paths.metrics == config.RESULTS_DIR / "other" / "performance_metrics.json"
    assert paths.model == config.MODELS_DIR / "other" / "bone_age.keras"


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*demo"):
        config.load_parameters("nope")


def test_misspelt_override_is_refused():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['epoch'\]"):
        config.load_parameters("demo", {"epoch": 3})


def test_every_preset_loads():
    for name in config.read_presets()["presets"]:
        assert config.load_parameters(name)["preset"] == name
