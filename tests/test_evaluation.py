"""utils.evaluation: metrics against hand-computed examples, interval coverage, the metrics file."""

import json
import math
import os
import subprocess
import warnings

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
    assert result["0-2 y"] == {"n": 2, "mae": 1.5, "rmse": pytest.approx(math.sqrt(4.5)), "bias": 1.5,
                               "within_12_pct": 100.0}
    assert result["5-10 y"] == {"n": 1, "mae": 30.0, "rmse": 30.0, "bias": 30.0, "within_12_pct": 0.0}
    assert result["15-19 y"] == {"n": 1, "mae": 10.0, "rmse": 10.0, "bias": -10.0, "within_12_pct": 100.0}


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


# --- confidence intervals ----------------------------------------------------------------------


def _noisy(n, seed=3):
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(0, 228, n)
    return y_true, y_true + rng.normal(1.0, 10.0, n)


def test_each_interval_holds_its_point_estimate():
    y_true, y_pred = _noisy(400)
    point = evaluation.regression_metrics(y_true, y_pred)
    intervals = evaluation.accuracy_ci(y_true, y_pred)
    assert set(intervals) == set(evaluation.CI_KEYS)
    for key, interval in intervals.items():
        assert interval["low"] < point[key] < interval["high"], key
    low, high = y_pred - 15, y_pred + 15
    coverage = evaluation.interval_metrics(y_true, low, high)["coverage_pct"]
    interval = evaluation.coverage_ci(y_true, low, high)
    assert interval["low"] < coverage < interval["high"]
    slope = evaluation.regression_to_mean(y_true, y_pred)["slope"]
    interval = evaluation.slope_ci(y_true, y_pred)
    assert interval["low"] < slope < interval["high"]


def test_intervals_narrow_as_the_test_split_grows():
    widths = []
    for n in (50, 200, 800):
        interval = evaluation.accuracy_ci(*_noisy(n))["mae"]
        widths.append(interval["high"] - interval["low"])
    assert widths[0] > widths[1] > widths[2]
    # The width of a mean's interval shrinks like 1/sqrt(n): four times the images, half the width.
    assert widths[1] / widths[2] == pytest.approx(2.0, rel=0.3)


def test_intervals_are_reproducible_and_undefined_for_one_image():
    y_true, y_pred = _noisy(100)
    assert evaluation.accuracy_ci(y_true, y_pred) == evaluation.accuracy_ci(y_true, y_pred)
    assert evaluation.accuracy_ci([10.0], [12.0]) == {key: None for key in evaluation.CI_KEYS}
    # All covered: the degenerate interval [100, 100], without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluation.coverage_ci([1.0, 2.0, 3.0], [0, 0, 0], [9, 9, 9]) == {"low": 100.0, "high": 100.0}


def test_paired_mae_difference_is_scipys_paired_percentile_bootstrap():
    from scipy import stats

    y_true, pred_a = _noisy(300, seed=5)
    pred_b = pred_a + np.random.default_rng(6).normal(2.0, 5.0, 300)
    ours = evaluation.paired_mae_difference(y_true, pred_a, pred_b, resamples=1000, seed=4)
    scipy_result = stats.bootstrap(
        (np.abs(pred_a - y_true), np.abs(pred_b - y_true)), lambda a, b, axis: b.mean(axis) - a.mean(axis),
        paired=True, vectorized=True, n_resamples=1000, method="percentile", rng=np.random.default_rng(4))
    assert (ours["low"], ours["high"]) == pytest.approx(tuple(scipy_result.confidence_interval), abs=1e-9)


def test_groups_with_few_images_are_marked():
    y_true = np.array([5.0, 10.0, 100.0] + [150.0] * 40)
    result = evaluation.metrics_by_group(y_true, y_true + 3, evaluation.age_band(y_true), ci=True)
    assert result["0-2 y"]["few_images"] and result["0-2 y"]["n"] == 2
    assert not result["10-15 y"]["few_images"]
    assert result["5-10 y"]["ci"]["mae"] is None  # one image: no interval
    frame = evaluation.group_frame(result)
    assert frame["n"].dtype.kind == "i" and list(frame.index) == ["0-2 y", "5-10 y", "10-15 y"]
    assert frame.loc["0-2 y", "few images"] == "yes"


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
        "schema_version", "run", "dataset", "model", *evaluation.FLAT_METRIC_KEYS, "ci", "confidence_intervals",
        "baseline_mae_mean_predictor", "by_age_band", "by_sex", "prediction_interval",
        "regression_to_mean", "seed_baseline", "prediction_runtime", "timing",
    }
    assert set(metrics) == expected
    assert metrics["prediction_runtime"] is None  # not measured here
    assert metrics["schema_version"] == evaluation.SCHEMA_VERSION == 2
    assert set(metrics["run"]) == {"name", "preset", "parameters", "git_commit", "uncommitted_changes", "created_utc",
                                  "library_versions", "machine"}
    assert metrics["run"]["machine"]["logical_cpus"] == os.cpu_count()
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
    assert set(metrics["prediction_interval"]) == {"method", "nominal_pct", "coverage_pct", "mean_width", "ci",
                                                   "by_age_band", "by_sex"}
    assert metrics["prediction_interval"]["nominal_pct"] == pytest.approx(90.0)
    assert set(metrics["regression_to_mean"]) == {"slope", "intercept", "ci"}
    assert set(metrics["ci"]) == set(evaluation.CI_KEYS)
    for group in [*metrics["by_age_band"].values(), *metrics["by_sex"].values()]:
        assert set(group) == {*evaluation.GROUP_METRIC_KEYS, "few_images", "ci"}
        assert group["few_images"] == (group["n"] < evaluation.MIN_GROUP_IMAGES)
    for group in [*metrics["prediction_interval"]["by_age_band"].values(),
                  *metrics["prediction_interval"]["by_sex"].values()]:
        assert set(group) == {"n", "coverage_pct", "mean_width", "ci"}
    assert metrics["confidence_intervals"]["confidence_pct"] == 95.0
    assert metrics["seed_baseline"] is None
    assert set(metrics["timing"]) == set(evaluation.TIMING_KEYS)
    assert metrics["n"] == 60 and metrics["mae"] < metrics["baseline_mae_mean_predictor"]


def test_build_performance_metrics_with_seed_baseline():
    metrics = _example_metrics(baseline_pred=lambda y_true: y_true + 10)
    seed = metrics["seed_baseline"]
    assert set(seed) == set(evaluation.FLAT_METRIC_KEYS) | {"ci", "by_age_band", "by_sex", "paired_mae_difference"}
    assert seed["mae"] == pytest.approx(10.0) and seed["bias"] == pytest.approx(10.0)
    difference = seed["paired_mae_difference"]
    assert difference["mae_a"] == pytest.approx(metrics["mae"]) and difference["mae_b"] == pytest.approx(10.0)
    assert difference["low"] <= difference["difference"] <= difference["high"]


def test_build_performance_metrics_names_missing_keys():
    with pytest.raises(ValueError, match="split_counts lacks \\['calibration'\\]"):
        evaluation.build_performance_metrics(
            parameters={}, dataset_name="x", dataset_source="x",
            split_counts={"train": 1, "validation": 1, "test": 1},
            model_info={}, y_true=[1.0], y_pred=[1.0], male=[True], train_ages=[1.0],
            interval=([0.0], [2.0]), interval_method="absolute", interval_nominal=0.9, timing={},
        )


def test_git_commit_of_project_and_of_a_plain_folder(tmp_path):
    commit = evaluation.git_state(config.PROJECT_ROOT)["git_commit"]
    if commit != "unknown":  # a copy of the project outside git is allowed
        head = commit.removesuffix("-dirty")
        assert len(head) == 40 and all(character in "0123456789abcdef" for character in head)
    assert evaluation.git_state(tmp_path) == {"git_commit": "unknown", "uncommitted_changes": []}


def test_git_commit_is_dirty_for_changed_code_not_for_the_run_s_own_outputs(tmp_path):
    def git(*arguments):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *arguments], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results" / "run").mkdir(parents=True)
    (tmp_path / "results" / "run" / "metrics.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1")
    (tmp_path / "old name.py").write_text("y = 1")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    outputs = (tmp_path / "results" / "run", tmp_path / "models" / "run", tmp_path.parent / "elsewhere")
    (tmp_path / "results" / "run" / "metrics.json").write_text('{"mae": 9}')
    assert evaluation.git_state(tmp_path) == {
        "git_commit": evaluation.git_state(tmp_path, outputs=outputs)["git_commit"] + "-dirty",
        "uncommitted_changes": ["results/run/metrics.json"]}
    clean = evaluation.git_state(tmp_path, outputs=outputs)
    assert len(clean["git_commit"]) == 40 and clean["uncommitted_changes"] == []
    (tmp_path / "code.py").write_text("x = 2")
    git("mv", "old name.py", "new name.py")  # a rename names its new path once, the old one not
    assert evaluation.git_state(tmp_path, outputs=outputs) == {
        "git_commit": clean["git_commit"] + "-dirty", "uncommitted_changes": ["code.py", "new name.py"]}


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
    with pytest.raises(ValueError, match="schema_version 2"):
        evaluation.write_performance_metrics(tmp_path / "m.json", {"schema_version": 1})


# --- error analysis findings (stage 05) and the external check ---------------------------------


def _predictions(n=200, seed=8):
    import pandas as pd

    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 228, n)
    predicted = truth + rng.normal(0, 6, n)
    predicted[:10] = truth[:10] + 60  # ten large over-estimates, all flagged
    flags = np.where(np.arange(n) < 10, "unusual", "ok")
    return pd.DataFrame({"id": [str(1000 + i) for i in range(n)], "boneage": truth, "male": rng.random(n) < 0.5,
                         "boneage_pred": predicted, "boneage_low": predicted - 15, "boneage_high": predicted + 15,
                         "quality_flag": flags, "quality_score": rng.uniform(0, 2, n)})


def test_error_analysis_findings_hold_what_stage_05_found():
    predictions = _predictions()
    findings = evaluation.error_analysis_findings(predictions, worst_ids=["1000", "1001"], gallery_ids=["1050"],
                                                  gradcam={"cases": 15, "blank_signed": 0})
    assert findings["findings_version"] == evaluation.FINDINGS_VERSION and findings["n"] == 200
    assert list(findings["sex_by_band"]) == [label for _, _, label in evaluation.AGE_BANDS]  # age order
    assert set(findings["sex_by_band"]["5-10 y"]) == {"female", "male"}
    assert sum(entry["n"] for band in findings["sex_by_band"].values() for entry in band.values()) == 200
    quality = findings["quality_flags"]
    assert quality["flagged"]["n"] == 10 and quality["flagged"]["mae"] == pytest.approx(60.0)
    assert quality["unflagged"]["ci"]["mae"]["low"] < quality["unflagged"]["mae"] < quality["unflagged"]["ci"]["mae"]["high"]
    assert list(quality["by_flag"]) == ["ok", "unusual"]
    assert [row["id"] for row in findings["worst_shown"]] == ["1000", "1001"]
    assert findings["gallery"][0]["id"] == "1050" and isinstance(findings["gallery"][0]["male"], bool)
    assert findings["gradcam"] == {"cases": 15, "blank_signed": 0}
    json.dumps(findings)  # JSON-ready
    with pytest.raises(ValueError, match="not among the predictions"):
        evaluation.error_analysis_findings(predictions, worst_ids=["nope"])


def test_worst_case_profile_says_what_the_largest_errors_share():
    profile = evaluation.worst_case_profile(_predictions(), share=0.05, minimum=10)
    assert profile["n"] == 10 and profile["over_estimated_pct"] == 100.0 and profile["flagged_pct"] == 100.0
    assert profile["threshold_months"] == pytest.approx(60.0)
    notes = " ".join(profile["notes"])
    assert "100% of the 10 largest errors" in notes and "over-estimates" in notes and "quality flag" in notes


def test_foreground_fraction_measures_the_hand_in_the_frame():
    images = np.zeros((2, 40, 40), np.uint8)
    images[0, :20, :] = 200  # half the frame
    images[1, :10, :10] = 200  # a sixteenth
    np.testing.assert_allclose(evaluation.foreground_fraction(images), [0.5, 1 / 16])


def test_external_check_reports_mae_ci_and_coverage_on_few_images():
    truth = np.array([20.0, 60.0, 100.0, 150.0, 200.0])
    predicted = truth + np.array([5.0, -5.0, 10.0, -30.0, 0.0])
    check = evaluation.external_check(truth, predicted, predicted - 12, predicted + 12, ids=[1, 2, 3, 4, 5],
                                      male=[True, False, True, False, True], labels="six readers")
    assert check["available"] and check["n"] == 5 and check["mae"] == pytest.approx(10.0)
    assert check["coverage_pct"] == pytest.approx(80.0)  # the -30 error falls outside its interval
    assert check["ci"]["mae"]["low"] <= 10.0 <= check["ci"]["mae"]["high"]
    assert [row["id"] for row in check["rows"]] == ["1", "2", "3", "4", "5"]
    assert evaluation.external_check_skipped("absent", "x") == {"available": False, "reason": "absent", "folder": "x"}


def test_the_external_check_is_skipped_with_a_reason_or_run_on_the_six_reader_layout(tmp_path):
    import cv2
    import pandas as pd

    from utils import study
    from utils.conformal import ConformalInterval
    from utils.parameters import load_parameters
    from utils.quality import QualityReference

    rng = np.random.default_rng(0)
    interval = ConformalInterval(method="absolute", coverage=0.9, pooled_half_width=20.0)
    reference = QualityReference.fit(rng.integers(0, 256, (30, 48, 48), dtype=np.uint8))
    predict = lambda images, male: np.full(len(images), 100.0)  # noqa: E731
    synthetic = study.external_check(load_parameters("ci"), predict, interval, reference, folder=tmp_path)
    assert not synthetic["available"] and "synthetic" in synthetic["reason"]
    own_data = tmp_path / "training_data"
    own_data.mkdir()
    parameters = load_parameters("ci", {"dataset": str(own_data)})
    absent = study.external_check(parameters, predict, interval, reference, folder=tmp_path / "absent")
    assert not absent["available"] and "is not here" in absent["reason"]
    # The Kaggle layout of the six-reader sample: a test table beside its folder of images.
    sample = tmp_path / "sample"
    (sample / "boneage-test-dataset").mkdir(parents=True)
    for identifier in (4360, 4375, 4405):
        cv2.imwrite(str(sample / "boneage-test-dataset" / f"{identifier}.png"),
                    rng.integers(0, 256, (80, 64), dtype=np.uint8))
    pd.DataFrame({"id": [4360, 4375, 4405], "boneage": [90.5, 110.0, 130.0], "male": [True, False, True]}).to_csv(
        sample / "boneage-test-dataset.csv", index=False)
    check = study.external_check(parameters, predict, interval, reference, folder=sample, known_ids=["4405"])
    assert check["available"] and check["n"] == 2 and check["left_out_seen_ids"] == 1
    assert check["mae"] == pytest.approx((9.5 + 10.0) / 2) and check["coverage_pct"] == 100.0


def test_runtime_agreement_measures_the_graph_against_the_keras_model():
    y_true = np.array([100.0, 120.0, 140.0, 160.0])
    keras_pred = np.array([110.0, 120.0, 130.0, 160.0])  # MAE 5
    runtime_pred = keras_pred + np.array([1.0, -2.0, 0.0, 0.5])  # errors 11, 2, 10, 0.5: MAE 5.875
    agreement = evaluation.runtime_agreement(y_true, keras_pred, runtime_pred,
                                             interval=(runtime_pred - 5, runtime_pred + 5))
    assert agreement["n"] == 4
    assert agreement["mae_keras"] == pytest.approx(5.0)
    assert agreement["mae_runtime"] == pytest.approx(5.875)
    assert agreement["mae_change"] == pytest.approx(0.875)
    assert agreement["mean_abs_difference"] == pytest.approx(0.875)
    assert agreement["max_abs_difference"] == pytest.approx(2.0)
    assert agreement["interval_coverage_pct"] == pytest.approx(50.0)  # 118 and 160.5 cover their truth
    with pytest.raises(ValueError, match="y_pred has 3"):
        evaluation.runtime_agreement(y_true, keras_pred, runtime_pred[:3])


def test_prediction_runtime_record_runs_the_graph_on_both_splits_with_the_tta_and_its_own_intervals():
    class Graph:  # months = 100 + image mean, shifted by 1 in the "shift" mode only
        def __init__(self):
            self.modes = []

        def predict(self, images, male, tta):
            self.modes.append(tta)
            return 100.0 + images.reshape(len(images), -1).mean(axis=1) + (1.0 if tta == "shift" else 0.0)

    class Intervals:  # a fixed +-2 months
        def interval(self, predicted):
            return predicted - 2.0, predicted + 2.0

    images = np.stack([np.full((4, 4), value, dtype=np.uint8) for value in (0, 10, 20)])
    male = np.zeros(3)
    validation, test = (images, male, np.array([101.0, 111.0, 121.0])), (images, male, np.array([100.0, 110.0, 125.0]))
    keras_pred = np.array([100.0, 110.0, 120.0])
    graph = Graph()
    record = evaluation.prediction_runtime_record(graph, "int8", tta="shift", validation=validation,
                                                  validation_pred=keras_pred, test=test, test_pred=keras_pred,
                                                  intervals=Intervals())
    assert graph.modes == ["shift", "shift"] and record["precision"] == "int8"
    assert record["validation"]["mae_runtime"] == pytest.approx(0.0) and record["validation"]["mae_keras"] == pytest.approx(1.0)
    assert record["test"]["mean_abs_difference"] == pytest.approx(1.0)
    assert record["test"]["interval_coverage_pct"] == pytest.approx(200 / 3)  # 101+-2 and 111+-2 cover, 121+-2 misses 125


def test_machine_facts_name_the_processor_and_the_instruction_sets_onednn_chooses_by(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                       "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 avx512vl\n\n"
                       "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    facts = evaluation.machine_facts(cpuinfo)
    assert facts == {"cpu": "Intel(R) Xeon(R) Processor", "logical_cpus": os.cpu_count(),
                     "instruction_sets": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]}
    elsewhere = evaluation.machine_facts(tmp_path / "absent")  # not Linux: no flags to read
    assert elsewhere["instruction_sets"] is None and elsewhere["cpu"]
