"""utils.evaluation: metrics against hand-computed examples, interval coverage, the metrics file."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from utils import config, conformal, evaluation


# --- accuracy ----------------------------------------------------------------------------------


def test_regression_metrics_hand_computed():
    # errors: +1, -2, +6
    metrics = evaluation.regression_metrics([0, 10, 20], [1, 8, 26])
    assert metrics["n"] == 3
    assert metrics["mae"] == pytest.approx(3.0)
    assert metrics["bias"] == pytest.approx(5 / 3)
    assert metrics["mse"] == pytest.approx(41 / 3)
    assert metrics["rmse"] == pytest.approx(math.sqrt(41 / 3))
    # R² = 1 - 41 / 200 (sum of squares about the mean of 0, 10, 20)
    assert metrics["r2"] == pytest.approx(1 - 41 / 200)
    assert metrics["pearson_r"] == pytest.approx(np.corrcoef([0, 10, 20], [1, 8, 26])[0, 1])
    # "within k months" includes an error of exactly k: the +6 counts as within 6.
    assert metrics["within_6_pct"] == pytest.approx(100.0)
    assert set(metrics) == set(evaluation.FLAT_METRIC_KEYS)


def test_within_pct_counts_the_boundary_and_excludes_beyond():
    metrics = evaluation.regression_metrics([0, 0, 0, 0], [5, -6, 6.5, 30])
    assert metrics["within_6_pct"] == pytest.approx(50.0)
    assert metrics["within_12_pct"] == pytest.approx(75.0)
    assert metrics["within_24_pct"] == pytest.approx(75.0)


def test_regression_metrics_constant_truth_gives_nan_correlation_without_warning():
    with np.errstate(all="raise"):
        metrics = evaluation.regression_metrics([50, 50], [40, 70])
    assert math.isnan(metrics["pearson_r"]) and math.isnan(metrics["r2"])
    assert metrics["mae"] == pytest.approx(15.0)


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [([1, 2], [1], "2 values but y_pred has 1"), ([], [], "empty"), ([1, np.nan], [1, 2], r"y_true\[1\]")],
)
def test_regression_metrics_rejects_bad_input(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        evaluation.regression_metrics(y_true, y_pred)


def test_age_band_edges_are_half_open_and_out_of_range_is_clamped():
    bands = evaluation.age_band([-3, 0, 23.99, 24, 59.9, 60, 120, 179, 180, 239, 240, 260])
    assert bands.tolist() == [
        "0-2 y", "0-2 y", "0-2 y", "2-5 y", "2-5 y", "5-10 y",
        "10-15 y", "10-15 y", "15-19 y", "15-19 y", "15-19 y", "15-19 y",
    ]


def test_metrics_by_group_values_and_age_order():
    y_true = [200, 10, 12, 100]
    y_pred = [190, 13, 12, 130]
    groups = evaluation.age_band(y_true)  # 15-19 y, 0-2 y, 0-2 y, 5-10 y: not in age order
    result = evaluation.metrics_by_group(y_true, y_pred, groups)
    assert list(result) == ["0-2 y", "5-10 y", "15-19 y"]
    assert result["0-2 y"] == {"n": 2, "mae": 1.5, "bias": 1.5, "within_12_pct": 100.0}
    assert result["5-10 y"] == {"n": 1, "mae": 30.0, "bias": 30.0, "within_12_pct": 0.0}
    assert result["15-19 y"] == {"n": 1, "mae": 10.0, "bias": -10.0, "within_12_pct": 100.0}


def test_metrics_by_sex_lists_female_first():
    result = evaluation.metrics_by_group([10, 20, 30], [12, 20, 30], evaluation.sex_label([True, False, True]))
    assert list(result) == ["female", "male"]
    assert result["male"]["n"] == 2 and result["male"]["mae"] == pytest.approx(1.0)
    assert result["female"]["mae"] == 0.0


def test_baseline_mae_mean_predictor():
    # training mean 20; test errors 10, 0, 40
    assert evaluation.baseline_mae_mean_predictor([10, 20, 30], [10, 20, 60]) == pytest.approx(50 / 3)


# --- paired comparison, interval coverage (the intervals themselves: test_conformal.py) -------


def test_paired_mae_difference_of_a_model_with_itself_is_exactly_zero():
    rng = np.random.default_rng(0)
    y_true = rng.uniform(0, 228, 300)
    prediction = y_true + rng.normal(0, 12, 300)
    result = evaluation.paired_mae_difference(y_true, prediction, prediction)
    assert result["difference"] == result["low"] == result["high"] == 0.0


def test_paired_mae_difference_finds_a_real_gap_and_brackets_it():
    rng = np.random.default_rng(1)
    y_true = rng.uniform(0, 228, 2000)
    noise = rng.normal(0, 10, 2000)
    # b errs 20% more than a on every image: a gap of 0.2 x MAE(a), about 1.6 months.
    result = evaluation.paired_mae_difference(y_true, y_true + noise, y_true + 1.2 * noise)
    assert result["difference"] == pytest.approx(0.2 * result["mae_a"])
    assert 0 < result["low"] < result["difference"] < result["high"]
    # Paired, the interval is far narrower than the sampling noise of either MAE (SE ~0.13).
    assert result["high"] - result["low"] < 0.2


def test_paired_mae_difference_refuses_misaligned_predictions():
    with pytest.raises(ValueError, match="y_true has 3 values but y_pred has 2"):
        evaluation.paired_mae_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0])


def test_interval_metrics_hand_computed():
    result = evaluation.interval_metrics([10, 20, 30, 40], [5, 21, 25, 30], [15, 25, 30, 35], groups=["a", "a", "b", "b"])
    # covered: yes, no, yes (on the edge), no; widths 10, 4, 5, 5
    assert result["coverage_pct"] == pytest.approx(50.0)
    assert result["mean_width"] == pytest.approx(6.0)
    assert result["by_group"] == {
        "a": {"n": 2, "coverage_pct": 50.0, "mean_width": 7.0},
        "b": {"n": 2, "coverage_pct": 50.0, "mean_width": 5.0},
    }


# --- bias analysis -----------------------------------------------------------------------------


def test_regression_to_mean_recovers_shrinkage():
    y_true = np.linspace(0, 228, 100)
    result = evaluation.regression_to_mean(y_true, 0.8 * y_true + 20)  # residual = -0.2·true + 20
    assert result["slope"] == pytest.approx(-0.2)
    assert result["intercept"] == pytest.approx(20.0)
    unbiased = evaluation.regression_to_mean(y_true, y_true + 3)
    assert unbiased["slope"] == pytest.approx(0.0, abs=1e-12) and unbiased["intercept"] == pytest.approx(3.0)


def test_calibration_bins():
    y_pred = np.arange(100.0)
    y_true = y_pred + 5
    table = evaluation.calibration_bins(y_true, y_pred, n_bins=4)
    assert list(table.columns) == ["bin", "predicted_low", "predicted_high", "mean_predicted", "mean_true", "n"]
    assert table["n"].tolist() == [25, 25, 25, 25]
    assert table["mean_predicted"].tolist() == [12.0, 37.0, 62.0, 87.0]
    np.testing.assert_allclose(table["mean_true"] - table["mean_predicted"], 5.0)
    assert (table["predicted_low"] <= table["mean_predicted"]).all()
    assert (table["mean_predicted"] <= table["predicted_high"]).all()


def test_calibration_bins_merge_tied_predictions():
    table = evaluation.calibration_bins([1, 2, 3, 6], [5, 5, 5, 5], n_bins=4)
    assert table[["predicted_low", "predicted_high", "mean_predicted", "mean_true", "n"]].values.tolist() == [
        [5.0, 5.0, 5.0, 3.0, 4]
    ]


# --- the metrics file --------------------------------------------------------------------------


def _example_metrics(baseline_pred=None):
    rng = np.random.default_rng(11)
    y_true = rng.uniform(0, 228, 60)
    y_pred = y_true + rng.normal(0, 8, 60)
    intervals = conformal.fit_conformal(y_true, y_pred, coverage=0.9)
    return evaluation.build_performance_metrics(
        parameters={"run_name": "unit", "preset": "ci", "epochs": 2},
        dataset_name="synthetic",
        dataset_source="data/synthetic",
        split_counts={"train": 140, "validation": 20, "calibration": 20, "test": 60},
        model_info={"architecture": "ours", "parameters_count": 1234, "image_size": 48, "path": "models/unit/bone_age.keras"},
        y_true=y_true,
        y_pred=y_pred,
        male=rng.random(60) < 0.5,
        train_ages=rng.uniform(0, 228, 140),
        interval=intervals.interval(y_pred),
        interval_method=intervals.method,
        interval_nominal=0.9,
        baseline_pred=baseline_pred if baseline_pred is None else baseline_pred(y_true),
        timing={
            "training_seconds": 12.5,
            "training_images_per_second": 100.0,
            "inference_images_per_second": 900.0,
            "inference_seconds_single_image": None,
            "numpy_fp32_matmul_gflops_at_training": 150.0,
            "numpy_fp32_matmul_gflops_at_evaluation": 151.0,
        },
    )


def test_build_performance_metrics_schema():
    metrics = _example_metrics()
    expected = {
        "schema_version", "run", "dataset", "model", *evaluation.FLAT_METRIC_KEYS,
        "baseline_mae_mean_predictor", "by_age_band", "by_sex", "prediction_interval",
        "regression_to_mean", "seed_baseline", "timing",
    }
    assert set(metrics) == expected
    assert metrics["schema_version"] == 1
    assert set(metrics["run"]) == {"name", "preset", "parameters", "git_commit", "created_utc", "library_versions"}
    assert metrics["run"]["name"] == "unit" and metrics["run"]["preset"] == "ci"
    assert set(metrics["run"]["library_versions"]) == {
        "python", "numpy", "pandas", "scikit-learn", "tensorflow", "keras", "opencv",
    }
    assert metrics["dataset"] == {
        "name": "synthetic",
        "source": "data/synthetic",
        "n_images": 240,
        "splits": {"train": 140, "validation": 20, "calibration": 20, "test": 60},
    }
    assert set(metrics["model"]) == {"architecture", "parameters_count", "image_size", "path"}
    assert list(metrics["by_age_band"]) == [label for _, _, label in evaluation.AGE_BANDS]
    assert list(metrics["by_sex"]) == ["female", "male"]
    assert set(metrics["prediction_interval"]) == {"method", "nominal_pct", "coverage_pct", "mean_width", "by_age_band"}
    assert metrics["prediction_interval"]["nominal_pct"] == pytest.approx(90.0)
    assert set(metrics["regression_to_mean"]) == {"slope", "intercept"}
    assert metrics["seed_baseline"] is None
    assert set(metrics["timing"]) == set(evaluation.TIMING_KEYS)
    assert metrics["n"] == 60 and metrics["mae"] < metrics["baseline_mae_mean_predictor"]


def test_build_performance_metrics_with_seed_baseline():
    metrics = _example_metrics(baseline_pred=lambda y_true: y_true + 10)
    seed = metrics["seed_baseline"]
    assert set(seed) == set(evaluation.FLAT_METRIC_KEYS) | {"by_age_band"}
    assert seed["mae"] == pytest.approx(10.0) and seed["bias"] == pytest.approx(10.0)


def test_build_performance_metrics_names_missing_keys():
    with pytest.raises(ValueError, match="split_counts lacks \\['calibration'\\]"):
        evaluation.build_performance_metrics(
            parameters={}, dataset_name="x", dataset_source="x",
            split_counts={"train": 1, "validation": 1, "test": 1},
            model_info={}, y_true=[1.0], y_pred=[1.0], male=[True], train_ages=[1.0],
            interval=([0.0], [2.0]), interval_method="absolute", interval_nominal=0.9, timing={},
        )


def test_git_commit_of_project_and_of_a_plain_folder(tmp_path):
    commit = evaluation.git_commit(config.PROJECT_ROOT)
    if commit != "unknown":  # a copy of the project outside git is allowed
        head = commit.removesuffix("-dirty")
        assert len(head) == 40 and all(character in "0123456789abcdef" for character in head)
    assert evaluation.git_commit(tmp_path) == "unknown"


def test_write_performance_metrics_round_trips_and_is_atomic(tmp_path):
    metrics = _example_metrics()
    metrics["pearson_r"] = float("nan")  # must come back as null
    path = evaluation.write_performance_metrics(tmp_path / "performance_metrics.json", metrics)
    restored = json.loads(path.read_text(encoding="utf-8"))
    assert restored["pearson_r"] is None
    assert restored["by_age_band"] == metrics["by_age_band"]
    assert restored["run"]["parameters"] == metrics["run"]["parameters"]
    before = path.read_bytes()
    # A write that fails half-way leaves the previous file intact and no temporary files behind.
    with pytest.raises(TypeError):
        evaluation.write_performance_metrics(path, {**metrics, "timing": {"training_seconds": object()}})
    assert path.read_bytes() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["performance_metrics.json"]


def test_write_performance_metrics_refuses_other_schema(tmp_path):
    with pytest.raises(ValueError, match="schema_version 1"):
        evaluation.write_performance_metrics(tmp_path / "m.json", {"schema_version": 2})


def test_modules_import_without_tensorflow():
    code = "import sys, utils.evaluation, utils.clinical; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert output.stdout.strip() == "False"
