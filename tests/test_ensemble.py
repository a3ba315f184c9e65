"""utils.ensemble: members averaged into one model that saves, exports and predicts like any other."""

import keras
import numpy as np
import pytest

from utils import ensemble
from utils.model import build_model, predict_months
from utils.parameters import load_parameters

SIZE = 32
TINY = {**load_parameters("ci").network_options(), "widths": (4, 8), "dense_units": 8}


def member(seed, size=SIZE):
    keras.utils.set_random_seed(seed)
    return build_model(size, target_mean=100.0 + seed, target_std=40.0, **TINY)


def inputs(n=5):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8), rng.integers(0, 2, n).astype(np.float32)


@pytest.mark.slow
def test_the_ensemble_predicts_the_mean_of_its_members(tmp_path):
    members = [member(seed) for seed in (1, 2, 3)]
    images, male = inputs()
    expected = np.mean([predict_months(m, images, male) for m in members], axis=0)
    model = ensemble.average(members)
    np.testing.assert_allclose(predict_months(model, images, male), expected, rtol=1e-5)
    assert set(model.input) == {"image", "male"} and tuple(model.output.shape) == (None, 1)
    model.save(tmp_path / "ensemble.keras")
    reloaded = keras.models.load_model(tmp_path / "ensemble.keras")
    np.testing.assert_allclose(predict_months(reloaded, images, male), expected, rtol=1e-5)
    assert len(ensemble.members_of(reloaded)) == 3 and ensemble.explainable(reloaded).name == "member1"


@pytest.mark.slow
def test_the_onnx_export_of_an_ensemble_matches_keras(tmp_path):
    from utils.onnx_runtime import OnnxBoneAgeModel, export_onnx

    model = ensemble.average([member(1), member(2)])
    images, male = inputs()
    export_onnx(model, tmp_path / "ensemble.onnx")
    np.testing.assert_allclose(OnnxBoneAgeModel(tmp_path / "ensemble.onnx").predict(images, male),
                               predict_months(model, images, male), atol=1e-3)


def test_one_member_is_the_model_itself_and_mixed_inputs_are_refused():
    single = member(1)
    assert ensemble.average([single]) is single and ensemble.members_of(single) == [single]
    with pytest.raises(ValueError, match="share preprocessing"):
        ensemble.average([member(1), member(2, size=40)])
    with pytest.raises(ValueError, match="at least one"):
        ensemble.average([])


def test_an_ensemble_of_runs_needs_two_finished_runs():
    with pytest.raises(ValueError, match="at least two runs, got 1"):
        ensemble.check_members(["one"])
    with pytest.raises(ValueError, match="run 'never-ran': .*performance_metrics.json.* missing; an ensemble is made of runs"):
        ensemble.check_members(["never-ran", "never-ran-either"])
