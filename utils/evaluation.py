"""The numbers that describe a bone-age model: accuracy, bias, interval coverage, the metrics file.

Everything here is plain NumPy/pandas so that it imports in a blink (no TensorFlow).
Ages are in months throughout; an error is `prediction - truth`, so a positive bias means
the model reads hands as older than they are.

performance_metrics.json, schema_version 2
------------------------------------------
One JSON object per run, written by `write_performance_metrics` (atomically; NaN as null).
Version 2 added the 95% confidence intervals (``ci``), ``rmse`` and ``few_images`` per group,
coverage per sex, the slope's interval and the paired comparison with the seed baseline.

- ``schema_version``: 2.
- ``run``: ``name``, ``preset``, ``parameters`` (the full parameter dict of the run),
  ``git_commit`` (``git rev-parse HEAD``, with ``-dirty`` if tracked files differ from it,
  ``"unknown"`` outside a git checkout), ``uncommitted_changes`` (the tracked files that made it
  ``-dirty``, the run's own outputs aside; absent in files written before it was recorded),
  ``created_utc`` (ISO 8601),
  ``library_versions`` (python, numpy, pandas, scikit-learn, tensorflow, keras, opencv; null
  when not installed), ``machine`` (where these metrics were written, in a whole-pipeline run the
  machine it trained on: ``cpu`` model, ``logical_cpus`` and the ``instruction_sets`` oneDNN
  chooses its kernels by; a run bit-reproduces only where these and the versions match; absent
  in files written before it was recorded); an ensemble of runs (`python -m utils.ensemble`) adds ``ensemble_of``,
  the names of its runs, and a top-level ``ensemble_validation``: ``n``, ``tta``, ``mae`` of the
  ensemble and ``mae_by_member`` (run name to MAE) on the validation split, where the ensemble
  is judged against its members.
- ``dataset``: ``name``, ``source``, ``n_images`` (sum of the splits), ``splits`` with the
  image counts of ``train``, ``validation``, ``calibration`` and ``test``.
- ``model``: ``architecture``, ``parameters_count``, ``image_size``, ``path``.
- Test-split accuracy of our model, flat: ``n``, ``mae``, ``rmse``, ``mse`` (months, months²),
  ``pearson_r``, ``r2``, ``bias`` (mean of prediction - truth) and ``within_6_pct``,
  ``within_12_pct``, ``within_18_pct``, ``within_24_pct``: percent (0-100) of test images whose
  absolute error is at most 6/12/18/24 months.
- ``ci``: 95% confidence intervals of ``mae``, ``rmse``, ``bias`` and ``within_12_pct``, each
  ``{low, high}`` (null for fewer than 2 images); see ``confidence_intervals``.
- ``confidence_intervals``: how every ``ci`` was computed: ``method`` (percentile bootstrap over
  the test images with `scipy.stats.bootstrap`, the images drawn with replacement and every
  quantity of a group computed on the same draws), ``confidence_pct`` (95), ``resamples``,
  ``seed`` and ``few_images_below`` (MIN_GROUP_IMAGES: groups with fewer images are marked).
- ``baseline_mae_mean_predictor``: the MAE of always predicting the training mean.
- ``by_age_band``: for each band of AGE_BANDS (true age; in age order, empty bands left out)
  ``{n, mae, rmse, bias, within_12_pct, few_images, ci}`` (``ci`` as above, ``few_images``
  true when n < ``few_images_below``); ``by_sex``: the same for ``female`` and ``male``.
- ``prediction_interval``: ``method`` and ``nominal_pct`` of the conformal intervals, their
  empirical ``coverage_pct`` (with ``ci.coverage_pct``) and ``mean_width`` (months) on the test
  split, and ``by_age_band`` and ``by_sex``: ``{n, coverage_pct, mean_width, ci}``.
- ``regression_to_mean``: ``slope`` and ``intercept`` of the least-squares line of the residual
  (prediction - truth) on the true age, and ``ci.slope``; a negative slope means young hands
  are read too old and old hands too young.
- ``seed_baseline``: null, or the flat accuracy keys above, ``ci``, ``by_age_band`` and
  ``by_sex`` for the seed study's model on the same test split, and ``paired_mae_difference``:
  its MAE minus ours on the same images with a paired bootstrap interval (`paired_mae_difference`:
  ``n``, ``mae_a`` ours, ``mae_b`` the baseline's, ``difference``, ``low``, ``high``,
  ``confidence_pct``).
- ``prediction_runtime``: null, or how far the ONNX graph of the prediction command is from the
  Keras model these metrics come from (`runtime_agreement`): ``precision`` (float32 or int8) and,
  for ``validation`` and ``test``, ``{n, mae_keras, mae_runtime, mae_change, mean_abs_difference,
  max_abs_difference}``, the test split also ``interval_coverage_pct`` of the runtime's predictions.
- ``timing``: ``training_seconds``, ``training_images_per_second``,
  ``inference_images_per_second``, ``inference_seconds_single_image`` (null when not measured),
  ``numpy_fp32_matmul_gflops_at_training`` and ``_at_evaluation``: the machine's speed beside them.

Stage 05 writes its findings to a second file, error_analysis.json (`error_analysis_findings`
builds it; schema in that function), and the check on the six-reader test images to
external_check.json (`external_check`).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from utils import config
from utils.files import write_json_atomic

SCHEMA_VERSION = 2
AGE_BANDS = [(0, 24, "0-2 y"), (24, 60, "2-5 y"), (60, 120, "5-10 y"), (120, 180, "10-15 y"), (180, 240, "15-19 y")]
SEX_LABELS = ["female", "male"]
WITHIN_MONTHS = (6, 12, 18, 24)
FLAT_METRIC_KEYS = ["n", "mae", "rmse", "mse", "pearson_r", "r2", "bias"] + [
    f"within_{months}_pct" for months in WITHIN_MONTHS
]
GROUP_METRIC_KEYS = ["n", "mae", "rmse", "bias", "within_12_pct"]
# The quantities that get a confidence interval, and how it is computed.
CI_KEYS = ("mae", "rmse", "bias", "within_12_pct")
CI_CONFIDENCE = 0.95
CI_RESAMPLES = 2000
CI_SEED = 0
# A group (age band, sex) with fewer test images than this is marked: its numbers are imprecise.
MIN_GROUP_IMAGES = 30
MODEL_KEYS = ["architecture", "parameters_count", "image_size", "path"]
TIMING_KEYS = [
    "training_seconds",
    "training_images_per_second",
    "inference_images_per_second",
    "inference_seconds_single_image",
    "numpy_fp32_matmul_gflops_at_training",
    "numpy_fp32_matmul_gflops_at_evaluation",
]
# Distribution names to look up, first installed one wins (the CPU wheel of TensorFlow has its own name).
LIBRARY_DISTRIBUTIONS = {
    "numpy": ["numpy"],
    "pandas": ["pandas"],
    "scikit-learn": ["scikit-learn"],
    "tensorflow": ["tensorflow", "tensorflow-cpu"],
    "keras": ["keras"],
    "opencv": ["opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"],
}


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------


def _paired_arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    """Both as float arrays of one shape, finite and not empty, or a ValueError saying which is wrong."""
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("no values to evaluate (empty y_true and y_pred)")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.all(np.isfinite(values)):
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"{name}[{bad}] is {values[bad]}: ages must be finite numbers")
    return y_true, y_pred


def age_band(months) -> np.ndarray:
    """The AGE_BANDS label of each age; below 0 counts as the first band, 240 and above as the last.

    Predictions can overshoot the 0..240 range by a little, and they still need a band.
    """
    months = np.asarray(months, dtype=float).ravel()
    if np.any(np.isnan(months)):
        raise ValueError("age_band: an age is NaN")
    upper_edges = np.array([high for _, high, _ in AGE_BANDS[:-1]], dtype=float)
    labels = np.array([label for _, _, label in AGE_BANDS], dtype=object)
    return labels[np.searchsorted(upper_edges, months, side="right")]


def sex_label(male) -> np.ndarray:
    """'male' / 'female' for each boolean, the group labels of `metrics_by_group`."""
    return np.where(np.asarray(male, dtype=bool).ravel(), "male", "female").astype(object)


def regression_metrics(y_true, y_pred) -> dict:
    """n, mae, rmse, mse, pearson_r, r2, bias and within_{6,12,18,24}_pct (|error| <= k months, in %)."""
    y_true, y_pred = _paired_arrays(y_true, y_pred)
    error = y_pred - y_true
    absolute_error = np.abs(error)
    mse = float(np.mean(error**2))
    # Correlation and R² are undefined for a constant series; report NaN (null in JSON), not a warning.
    constant = y_true.size < 2 or np.ptp(y_true) == 0
    pearson_r = math.nan if constant or np.ptp(y_pred) == 0 else float(np.corrcoef(y_true, y_pred)[0, 1])
    r2 = math.nan if constant else float(1.0 - np.sum(error**2) / np.sum((y_true - y_true.mean()) ** 2))
    metrics = {
        "n": int(y_true.size),
        "mae": float(absolute_error.mean()),
        "rmse": math.sqrt(mse),
        "mse": mse,
        "pearson_r": pearson_r,
        "r2": r2,
        "bias": float(error.mean()),
    }
    for months in WITHIN_MONTHS:
        metrics[f"within_{months}_pct"] = float(100.0 * np.mean(absolute_error <= months))
    return metrics


def group_order(groups) -> list:
    """The distinct labels in a meaningful order: age bands by age, sexes female then male, else sorted."""
    present = set(np.asarray(groups, dtype=object).ravel().tolist())
    for known in ([label for _, _, label in AGE_BANDS], SEX_LABELS):
        if present <= set(known):
            return [label for label in known if label in present]
    return sorted(present, key=str)


def metrics_by_group(y_true, y_pred, groups, *, ci: bool = False) -> dict:
    """{group: {n, mae, rmse, bias, within_12_pct}} for each label of `groups`, in `group_order`.

    With `ci`, each group also gets ``few_images`` (n < MIN_GROUP_IMAGES) and ``ci``
    (`accuracy_ci` of its images).
    """
    y_true, y_pred = _paired_arrays(y_true, y_pred)
    groups = np.asarray(groups, dtype=object).ravel()
    if groups.shape != y_true.shape:
        raise ValueError(f"groups has {groups.size} labels but there are {y_true.size} values")
    result = {}
    for group in group_order(groups):
        members = groups == group
        metrics = regression_metrics(y_true[members], y_pred[members])
        result[group] = {key: metrics[key] for key in GROUP_METRIC_KEYS}
        if ci:
            result[group]["few_images"] = bool(members.sum() < MIN_GROUP_IMAGES)
            result[group]["ci"] = accuracy_ci(y_true[members], y_pred[members])
    return result


# ---------------------------------------------------------------------------------------------
# Confidence intervals (bootstrap over the test images)
# ---------------------------------------------------------------------------------------------


def bootstrap_ci(statistic, *samples, confidence: float = CI_CONFIDENCE, resamples: int = CI_RESAMPLES,
                 seed: int = CI_SEED) -> dict | None:
    """{low, high}: the percentile bootstrap interval of `statistic(*samples, axis=-1)`.

    The samples are per-image arrays of one length, drawn together (paired: image i keeps its
    values in every sample) with `scipy.stats.bootstrap`. The same seed draws the same images
    for every statistic of the same n, so that intervals of one group come from one set of
    draws. `statistic` must be vectorised (take an `axis`). None for fewer than 2 images, where
    resampling says nothing.
    """
    import warnings

    from scipy import stats

    samples = [np.asarray(sample, dtype=float).ravel() for sample in samples]
    if len({sample.size for sample in samples}) != 1:
        raise ValueError(f"bootstrap_ci: samples of different lengths {[sample.size for sample in samples]}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if samples[0].size < 2:
        return None
    with warnings.catch_warnings():
        # Constant data (every image covered, say) give the degenerate interval [x, x]: fine here.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", getattr(stats, "DegenerateDataWarning", RuntimeWarning))
        result = stats.bootstrap(samples, statistic, paired=True, vectorized=True, n_resamples=resamples,
                                 confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return {"low": float(low), "high": float(high)}


def _mean(values, axis=-1):
    return np.mean(values, axis=axis)


def _root_mean(values, axis=-1):
    return np.sqrt(np.mean(values, axis=axis))


def _percent(values, axis=-1):
    return 100.0 * np.mean(values, axis=axis)


def _slope(x, y, axis=-1):
    """Least-squares slope of y on x along `axis` (NaN where x is constant)."""
    x_centred = x - np.mean(x, axis=axis, keepdims=True)
    y_centred = y - np.mean(y, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(x_centred * y_centred, axis=axis) / np.sum(x_centred**2, axis=axis)


def accuracy_ci(y_true, y_pred, **options) -> dict:
    """95% bootstrap intervals of CI_KEYS (mae, rmse, bias, within_12_pct): {key: {low, high} or None}."""
    y_true, y_pred = _paired_arrays(y_true, y_pred)
    error = y_pred - y_true
    per_image = {"mae": (_mean, np.abs(error)), "rmse": (_root_mean, error**2), "bias": (_mean, error),
                 "within_12_pct": (_percent, np.abs(error) <= 12)}
    return {key: bootstrap_ci(statistic, values, **options) for key, (statistic, values) in per_image.items()}


def coverage_ci(y_true, low, high, **options) -> dict | None:
    """95% bootstrap interval of the interval coverage (%), or None for fewer than 2 images."""
    y_true, low, high = (np.asarray(values, dtype=float).ravel() for values in (y_true, low, high))
    return bootstrap_ci(_percent, (low <= y_true) & (y_true <= high), **options)


def slope_ci(y_true, y_pred, **options) -> dict | None:
    """95% bootstrap interval of the regression-to-the-mean slope (see `regression_to_mean`)."""
    y_true, y_pred = _paired_arrays(y_true, y_pred)
    if y_true.size < 3 or np.ptp(y_true) == 0:
        return None
    interval = bootstrap_ci(_slope, y_true, y_pred - y_true, **options)
    return None if interval is None or not all(map(math.isfinite, interval.values())) else interval


def ci_settings() -> dict:
    """The ``confidence_intervals`` record of the metrics file: how every ``ci`` was computed."""
    return {
        "method": "percentile bootstrap over the test images (scipy.stats.bootstrap, paired resampling)",
        "confidence_pct": 100.0 * CI_CONFIDENCE,
        "resamples": CI_RESAMPLES,
        "seed": CI_SEED,
        "few_images_below": MIN_GROUP_IMAGES,
    }


def baseline_mae_mean_predictor(train_ages, test_ages) -> float:
    """MAE on the test ages of always predicting the mean training age: the floor any model must beat."""
    train_ages = np.asarray(train_ages, dtype=float).ravel()
    if train_ages.size == 0:
        raise ValueError("baseline_mae_mean_predictor: no training ages")
    test_ages = np.asarray(test_ages, dtype=float).ravel()
    return regression_metrics(test_ages, np.full(test_ages.shape, train_ages.mean()))["mae"]


def paired_mae_difference(y_true, pred_a, pred_b, *, resamples: int = CI_RESAMPLES, confidence: float = CI_CONFIDENCE,
                          seed: int = CI_SEED) -> dict:
    """MAE of b minus MAE of a on the same images, with a paired bootstrap interval.

    Two models scored on one test split share that split's sampling noise; drawing images with
    replacement and scoring both on each draw (`bootstrap_ci`: scipy.stats.bootstrap, paired)
    leaves only the noise of their difference. An interval that holds 0 means the split cannot
    tell the two apart (e.g. a rerun and the run).
    """
    y_true, pred_a = _paired_arrays(y_true, pred_a)
    _, pred_b = _paired_arrays(y_true, pred_b)
    error_a, error_b = np.abs(pred_a - y_true), np.abs(pred_b - y_true)
    interval = bootstrap_ci(_mean_difference, error_a, error_b, confidence=confidence, resamples=resamples, seed=seed)
    return {
        "n": int(y_true.size),
        "mae_a": float(error_a.mean()),
        "mae_b": float(error_b.mean()),
        "difference": float(error_b.mean() - error_a.mean()),
        "low": None if interval is None else interval["low"],
        "high": None if interval is None else interval["high"],
        "confidence_pct": 100 * confidence,
    }


def _mean_difference(a, b, axis=-1):
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)


# ---------------------------------------------------------------------------------------------
# Prediction intervals (calibrated by utils.conformal)
# ---------------------------------------------------------------------------------------------


def prediction_runtime_record(graph, precision: str, *, tta: str, validation, validation_pred, test, test_pred,
                              intervals) -> dict:
    """The metrics' ``prediction_runtime``: `runtime_agreement` of the prediction command's graph
    (`graph.predict(images, male, tta=)`, e.g. an `OnnxBoneAgeModel`) with the Keras predictions
    `validation_pred` and `test_pred`, on the splits' (images, male, truth) `validation` and
    `test`; the test row adds the coverage of the graph's intervals from the fitted `intervals`."""
    graph_test_pred = graph.predict(test[0], test[1], tta=tta)
    return {
        "precision": precision,
        "validation": runtime_agreement(validation[2], validation_pred, graph.predict(validation[0], validation[1], tta=tta)),
        "test": runtime_agreement(test[2], test_pred, graph_test_pred, interval=intervals.interval(graph_test_pred)),
    }


def runtime_agreement(y_true, keras_pred, runtime_pred, interval=None) -> dict:
    """How the graph the prediction command runs (ONNX, float32 or int8) departs from the Keras
    model the metrics come from, on one split: both MAEs (months), the change of the MAE, the mean
    and largest per-image difference and, given the runtime's (low, high), its interval coverage (%).

    A float32 export agrees to rounding; an int8 graph moves each prediction a little, and what
    matters is whether the MAE moves (issue 11 allows 0.05 months).
    """
    y_true, keras_pred = _paired_arrays(y_true, keras_pred)
    _, runtime_pred = _paired_arrays(y_true, runtime_pred)
    difference = np.abs(runtime_pred - keras_pred)
    mae_keras, mae_runtime = float(np.abs(keras_pred - y_true).mean()), float(np.abs(runtime_pred - y_true).mean())
    agreement = {
        "n": int(y_true.size),
        "mae_keras": mae_keras,
        "mae_runtime": mae_runtime,
        "mae_change": mae_runtime - mae_keras,
        "mean_abs_difference": float(difference.mean()),
        "max_abs_difference": float(difference.max()),
    }
    if interval is not None:
        agreement["interval_coverage_pct"] = interval_metrics(y_true, *interval)["coverage_pct"]
    return agreement


def interval_metrics(y_true, low, high, groups=None, *, ci: bool = False) -> dict:
    """Empirical coverage (%) and mean width (months) of intervals, overall and per group.

    With `ci`, the overall result and each group also get ``ci: {coverage_pct: {low, high}}``.
    """
    y_true = np.asarray(y_true, dtype=float).ravel()
    low = np.asarray(low, dtype=float).ravel()
    high = np.asarray(high, dtype=float).ravel()
    if not (y_true.shape == low.shape == high.shape) or y_true.size == 0:
        raise ValueError(f"y_true, low and high must be equally long and not empty ({y_true.size}, {low.size}, {high.size})")
    if np.any(low > high):
        raise ValueError(f"interval {int(np.flatnonzero(low > high)[0])} has low > high")
    covered = (low <= y_true) & (y_true <= high)
    width = high - low
    result = {"coverage_pct": float(100.0 * covered.mean()), "mean_width": float(width.mean()), "by_group": {}}
    if ci:
        result["ci"] = {"coverage_pct": coverage_ci(y_true, low, high)}
    if groups is not None:
        groups = np.asarray(groups, dtype=object).ravel()
        if groups.shape != y_true.shape:
            raise ValueError(f"groups has {groups.size} labels but there are {y_true.size} values")
        for group in group_order(groups):
            members = groups == group
            result["by_group"][group] = {
                "n": int(members.sum()),
                "coverage_pct": float(100.0 * covered[members].mean()),
                "mean_width": float(width[members].mean()),
            }
            if ci:
                result["by_group"][group]["ci"] = {
                    "coverage_pct": coverage_ci(y_true[members], low[members], high[members])}
    return result


# ---------------------------------------------------------------------------------------------
# Bias analysis
# ---------------------------------------------------------------------------------------------


def regression_to_mean(y_true, y_pred) -> dict:
    """{slope, intercept} of the least-squares line residual = slope·true + intercept.

    A regressor that shrinks towards the mean age over-reads the young and under-reads the old:
    slope < 0. NaN when all true ages are equal.
    """
    y_true, y_pred = _paired_arrays(y_true, y_pred)
    if y_true.size < 2 or np.ptp(y_true) == 0:
        return {"slope": math.nan, "intercept": math.nan}
    slope, intercept = np.polyfit(y_true, y_pred - y_true, deg=1)
    return {"slope": float(slope), "intercept": float(intercept)}


def calibration_bins(y_true, y_pred, n_bins: int = 10) -> pd.DataFrame:
    """Mean true age against mean predicted age in `n_bins` equal-count bins of the prediction.

    Columns: bin (0..), predicted_low, predicted_high (bin edges), mean_predicted, mean_true, n.
    A calibrated model has mean_true ≈ mean_predicted in every bin.
    """
    y_true, y_pred = _paired_arrays(y_true, y_pred)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    # Equal-count bins keep every mean equally reliable; tied predictions merge bins (down to one).
    edges = np.unique(np.quantile(y_pred, np.linspace(0, 1, n_bins + 1)))
    edges = np.append(edges, edges[-1]) if edges.size == 1 else edges
    bins = np.clip(np.searchsorted(edges, y_pred, side="right") - 1, 0, edges.size - 2)
    table = (
        pd.DataFrame({"bin": bins, "y_pred": y_pred, "y_true": y_true})
        .groupby("bin")
        .agg(mean_predicted=("y_pred", "mean"), mean_true=("y_true", "mean"), n=("y_true", "size"))
        .reset_index()
    )
    table.insert(1, "predicted_low", edges[table["bin"].to_numpy()])
    table.insert(2, "predicted_high", edges[table["bin"].to_numpy() + 1])
    table["bin"] = np.arange(len(table))  # number the non-empty bins 0, 1, 2, ...
    return table


def group_frame(groups: dict, keys=("n", "mae", "rmse", "bias", "within_12_pct"), digits: int = 2) -> pd.DataFrame:
    """A by_age_band / by_sex record of the metrics file as a table for a notebook: one row per
    group in the file's (age) order, counts as integers, each interval as a "low to high" column."""
    rows = {}
    for group, entry in groups.items():
        row = {}
        for key in keys:
            if key not in entry:
                continue
            value = entry[key]
            row[key] = int(value) if key == "n" else (round(float(value), digits) if value is not None else math.nan)
            interval = (entry.get("ci") or {}).get(key)
            if interval:
                row[f"{key} 95% CI"] = f"{interval['low']:.{digits}f} to {interval['high']:.{digits}f}"
        if "few_images" in entry:
            row["few images"] = "yes" if entry["few_images"] else ""
        rows[group] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if "n" in frame:
        frame["n"] = frame["n"].astype(int)
    return frame


# ---------------------------------------------------------------------------------------------
# Error analysis (stage 05): error_analysis.json and external_check.json
# ---------------------------------------------------------------------------------------------

FINDINGS_VERSION = 1
PREDICTION_COLUMNS = ("id", "boneage", "male", "boneage_pred", "boneage_low", "boneage_high", "quality_flag")


def _check_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    missing = [column for column in PREDICTION_COLUMNS if column not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack the column(s) {missing}; they need {list(PREDICTION_COLUMNS)}")
    if predictions.empty:
        raise ValueError("no predictions to analyse")
    table = predictions.reset_index(drop=True).copy()
    table["error"] = table["boneage_pred"].to_numpy(dtype=float) - table["boneage"].to_numpy(dtype=float)
    table["age_band"] = age_band(table["boneage"])
    table["sex"] = sex_label(table["male"].to_numpy(dtype=bool))
    table["flagged"] = table["quality_flag"].astype(str) != "ok"
    return table


def foreground_fraction(images) -> np.ndarray:
    """Share of each uint8 image (N, S, S) above its own Otsu threshold: how much of the frame the
    hand fills (small for a small or far-away hand)."""
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"foreground_fraction expects uint8 images (N, S, S), got {images.dtype} {images.shape}")
    fractions = np.empty(len(images))
    levels = np.arange(256)
    for index, image in enumerate(images):
        histogram = np.bincount(image.ravel(), minlength=256).astype(float)
        weight = np.cumsum(histogram)
        total = weight[-1]
        mean_below = np.cumsum(histogram * levels)
        with np.errstate(invalid="ignore", divide="ignore"):
            between = (mean_below[-1] * weight / total - mean_below) ** 2 / (weight * (total - weight))
        threshold = int(np.nanargmax(between)) if np.any(np.isfinite(between)) else 0
        fractions[index] = float(np.mean(image > threshold))
    return fractions


def _share(mask) -> float:
    mask = np.asarray(mask, dtype=bool)
    return float(100.0 * mask.mean()) if mask.size else math.nan


def worst_case_profile(predictions: pd.DataFrame, *, share: float = 0.05, minimum: int = 12) -> dict:
    """What the largest errors have in common: the worst `share` of the images (at least
    `minimum`) against all test images, by age band, direction of the error, sex, quality flag
    and (if the column ``hand_fraction`` is there) the size of the hand in the frame.

    Returns ``{n, threshold_months, mean_abs_error, band_pct, all_band_pct, over_estimated_pct,
    female_pct, all_female_pct, flagged_pct, all_flagged_pct, hand_fraction_median,
    all_hand_fraction_median, notes}``; ``notes`` are sentences on what stands out.
    """
    table = _check_predictions(predictions)
    count = int(min(len(table), max(minimum, math.ceil(share * len(table)))))
    order = table["error"].abs().sort_values(ascending=False, kind="stable").index
    worst = table.loc[order[:count]]
    bands = [label for label in group_order(table["age_band"])]
    profile = {
        "n": count,
        "share_pct": 100.0 * count / len(table),
        "threshold_months": float(worst["error"].abs().min()),
        "mean_abs_error": float(worst["error"].abs().mean()),
        "band_pct": {band: _share(worst["age_band"] == band) for band in bands},
        "all_band_pct": {band: _share(table["age_band"] == band) for band in bands},
        "over_estimated_pct": _share(worst["error"] > 0),
        "female_pct": _share(worst["sex"] == "female"),
        "all_female_pct": _share(table["sex"] == "female"),
        "flagged_pct": _share(worst["flagged"]),
        "all_flagged_pct": _share(table["flagged"]),
        "mean_true_age": float(worst["boneage"].mean()),
        "all_mean_true_age": float(table["boneage"].mean()),
    }
    if "hand_fraction" in table.columns:
        profile["hand_fraction_median"] = float(worst["hand_fraction"].median())
        profile["all_hand_fraction_median"] = float(table["hand_fraction"].median())
    profile["notes"] = _worst_case_notes(profile, worst)
    return profile


def _worst_case_notes(profile: dict, worst: pd.DataFrame) -> list[str]:
    """Sentences on what the worst cases share, strongest first; each compares with all images."""
    notes = []
    over, count = profile["over_estimated_pct"], profile["n"]
    under_young = worst[(worst["error"] < 0)]["boneage"].mean() if (worst["error"] < 0).any() else math.nan
    over_young = worst[(worst["error"] > 0)]["boneage"].mean() if (worst["error"] > 0).any() else math.nan
    direction = "over-estimates" if over >= 50 else "under-estimates"
    notes.append(f"{max(over, 100 - over):.0f}% of the {count} largest errors (at least "
                 f"{profile['threshold_months']:.0f} months) are {direction}"
                 + (f"; the over-estimated children have a mean true age of {over_young:.0f} months and the "
                    f"under-estimated {under_young:.0f}" if math.isfinite(under_young) and math.isfinite(over_young)
                    else "") + ".")
    excess = sorted(((profile["band_pct"][band] - profile["all_band_pct"][band], band)
                     for band in profile["band_pct"]), reverse=True)
    if excess and excess[0][0] >= 5:
        _, band = excess[0]
        notes.append(f"{profile['band_pct'][band]:.0f}% are in the {band} band, which holds "
                     f"{profile['all_band_pct'][band]:.0f}% of the test images.")
    if profile["flagged_pct"] >= max(2 * profile["all_flagged_pct"], profile["all_flagged_pct"] + 5):
        notes.append(f"{profile['flagged_pct']:.0f}% carry a quality flag (unlike the training images), "
                     f"against {profile['all_flagged_pct']:.0f}% of all test images.")
    else:
        notes.append(f"Image quality does not explain them: {profile['flagged_pct']:.0f}% carry a quality flag, "
                     f"against {profile['all_flagged_pct']:.0f}% of all test images.")
    if abs(profile["female_pct"] - profile["all_female_pct"]) >= 10:
        notes.append(f"{profile['female_pct']:.0f}% are girls, against {profile['all_female_pct']:.0f}% of all "
                     "test images.")
    if "hand_fraction_median" in profile:
        ratio = profile["hand_fraction_median"] / max(profile["all_hand_fraction_median"], 1e-9)
        if ratio <= 0.85 or ratio >= 1.15:
            notes.append(f"The hand fills {100 * profile['hand_fraction_median']:.0f}% of the frame in the median "
                         f"worst case, against {100 * profile['all_hand_fraction_median']:.0f}% in the median "
                         f"test image ({'smaller' if ratio < 1 else 'larger'} or more distant hands).")
    return notes


def _records(table: pd.DataFrame, columns) -> list[dict]:
    """Rows as JSON-ready dicts (ids as text, numbers as floats, booleans as booleans)."""
    records = []
    for row in table[list(columns)].itertuples(index=False):
        record = {}
        for name, value in zip(columns, row):
            if name == "id":
                record[name] = str(value)
            elif isinstance(value, (bool, np.bool_)):
                record[name] = bool(value)
            elif isinstance(value, (int, float, np.integer, np.floating)):
                record[name] = float(value)
            else:
                record[name] = str(value)
        records.append(record)
    return records


def error_analysis_findings(predictions: pd.DataFrame, *, worst_ids=(), gallery_ids=(), gradcam: dict | None = None) -> dict:
    """The error_analysis.json object stage 05 writes and the report reads (findings_version 1).

    `predictions` are the rows of predictions_test.csv (PREDICTION_COLUMNS; ``hand_fraction``
    optional). Keys:

    - ``findings_version``: 1; ``n``: test images.
    - ``sex_by_band``: {band: {female, male: {n, mae, bias, few_images}}}, bands in age order.
    - ``quality_flags``: ``flagged`` and ``unflagged`` ``{n, mae, ci: {mae}}`` (flagged: any
      flag but "ok"), ``by_flag`` {flag: {n, mae}}.
    - ``worst_cases``: `worst_case_profile`; ``worst_shown``: the records of `worst_ids`
      (the images of the worst-cases figure).
    - ``gallery``: the records of `gallery_ids` (a random sample, the gallery figure), each
      ``{id, male, boneage, boneage_pred, boneage_low, boneage_high, quality_flag}``.
    - ``gradcam``: what the caller passes (e.g. how many maps are blank), or null.
    """
    table = _check_predictions(predictions)
    sex_by_band = {}
    for band in group_order(table["age_band"]):
        rows = table[table["age_band"] == band]
        sex_by_band[band] = {}
        for sex in group_order(rows["sex"]):
            members = rows[rows["sex"] == sex]
            sex_by_band[band][sex] = {"n": int(len(members)), "mae": float(members["error"].abs().mean()),
                                      "bias": float(members["error"].mean()),
                                      "few_images": bool(len(members) < MIN_GROUP_IMAGES)}
    quality = {"by_flag": {}}
    for name, members in (("flagged", table[table["flagged"]]), ("unflagged", table[~table["flagged"]])):
        absolute = members["error"].abs().to_numpy()
        quality[name] = {"n": int(len(members)), "mae": float(absolute.mean()) if len(members) else None,
                         "ci": {"mae": bootstrap_ci(_mean, absolute) if len(members) else None}}
    for flag in sorted(set(table["quality_flag"].astype(str)), key=lambda flag: (flag != "ok", flag)):
        members = table[table["quality_flag"].astype(str) == flag]
        quality["by_flag"][flag] = {"n": int(len(members)), "mae": float(members["error"].abs().mean())}
    record_columns = ["id", "male", "boneage", "boneage_pred", "boneage_low", "boneage_high", "quality_flag"]
    by_id = table.assign(id=table["id"].astype(str)).set_index("id", drop=False)

    def records(ids):
        ids = [str(identifier) for identifier in ids]
        unknown = sorted(set(ids) - set(by_id.index))
        if unknown:
            raise ValueError(f"ids not among the predictions: {unknown[:5]}")
        return _records(by_id.loc[ids], record_columns)

    return {
        "findings_version": FINDINGS_VERSION,
        "n": int(len(table)),
        "sex_by_band": sex_by_band,
        "quality_flags": quality,
        "worst_cases": worst_case_profile(table),
        "worst_shown": records(worst_ids),
        "gallery": records(gallery_ids),
        "gradcam": gradcam,
    }


def external_check(y_true, y_pred, low, high, *, ids=None, male=None, quality_flags=None, folder="",
                   labels: str = "") -> dict:
    """The external_check.json object: our model on images with a better reference (n small).

    ``{available: true, folder, labels, n, mae, rmse, bias, within_12_pct, ci (accuracy_ci),
    coverage_pct, ci_coverage_pct, mean_width, rows: [{id, male, boneage, boneage_pred,
    boneage_low, boneage_high, quality_flag}]}``. `external_check_skipped` writes the other form.
    """
    y_true, y_pred = _paired_arrays(y_true, y_pred)
    metrics = regression_metrics(y_true, y_pred)
    intervals = interval_metrics(y_true, low, high, ci=True)
    n = y_true.size
    rows = pd.DataFrame({
        "id": [str(identifier) for identifier in (ids if ids is not None else range(n))],
        "male": np.asarray(male if male is not None else np.zeros(n), dtype=bool),
        "boneage": y_true, "boneage_pred": y_pred,
        "boneage_low": np.asarray(low, dtype=float).ravel(), "boneage_high": np.asarray(high, dtype=float).ravel(),
        "quality_flag": np.asarray(quality_flags if quality_flags is not None else ["ok"] * n, dtype=object),
    })
    return {
        "available": True,
        "folder": str(folder),
        "labels": labels,
        "n": metrics["n"],
        **{key: metrics[key] for key in ("mae", "rmse", "bias", "within_12_pct")},
        "ci": accuracy_ci(y_true, y_pred),
        "coverage_pct": intervals["coverage_pct"],
        "ci_coverage_pct": intervals["ci"]["coverage_pct"],
        "mean_width": intervals["mean_width"],
        "rows": _records(rows, list(rows.columns)),
    }


def external_check_skipped(reason: str, folder="") -> dict:
    """The external_check.json object when the check cannot run: ``{available: false, reason, folder}``."""
    return {"available": False, "reason": reason, "folder": str(folder)}


# ---------------------------------------------------------------------------------------------
# The metrics file
# ---------------------------------------------------------------------------------------------


def git_state(folder=None, outputs=()) -> dict:
    """Where a run's code came from: ``git_commit``, HEAD of the checkout at `folder` (default: the
    project) with '-dirty' if tracked files changed, other than `outputs`: a run's own results and
    model (`RunPaths.written`), which its earlier stages have rewritten by the time it is recorded
    (a committed run's files are tracked); ``uncommitted_changes``, those changed files, so that a
    dirty record says what differed. Outside a git checkout: "unknown" and an empty list."""
    folder = Path(folder or config.PROJECT_ROOT)
    root = folder.resolve()
    excluded = [f":(exclude){path.relative_to(root)}" for path in (Path(output).resolve() for output in outputs)
                if path.is_relative_to(root)]

    def git(*arguments):
        # --no-optional-locks: only read, never refresh the index of a checkout others work in.
        return subprocess.run(
            ["git", "--no-optional-locks", *arguments],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        # -z: paths verbatim; a rename's entry is followed by its source path, which is skipped.
        entries = iter(git("status", "--porcelain", "-z", "--untracked-files=no", "--", ".", *excluded).split("\0"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "uncommitted_changes": []}
    changes = []
    for entry in entries:
        if entry:
            changes.append(entry[3:])
            if entry[0] in "RC":
                next(entries, None)
    return {"git_commit": commit + ("-dirty" if changes else ""), "uncommitted_changes": sorted(changes)}


def library_versions() -> dict:
    """Versions of the libraries a result depends on, from package metadata (nothing is imported)."""
    versions = {"python": platform.python_version()}
    for library, distributions in LIBRARY_DISTRIBUTIONS.items():
        versions[library] = None
        for distribution in distributions:
            try:
                versions[library] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


# oneDNN picks kernels, and so the summation order of a float result, by these extensions.
INSTRUCTION_SETS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpuinfo_fields(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ("model name", "flags", ...); {} where there is none."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields.setdefault(key.strip(), value.strip())
    return fields


def machine_facts(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The processor this runs on: its model name, logical CPUs and the instruction sets of
    `INSTRUCTION_SETS` it has (Linux; elsewhere the model name from `platform` and no sets)."""
    fields = cpuinfo_fields(cpuinfo)
    present = set(fields["flags"].split()) if "flags" in fields else None
    return {"cpu": fields.get("model name", platform.processor() or platform.machine()),
            "logical_cpus": os.cpu_count(),
            "instruction_sets": None if present is None else [name for name in INSTRUCTION_SETS if name in present]}


def benchmark_machine_facts(load_before, note: str) -> dict:
    """The machine side of a benchmark record, so that its numbers compare across machines: the
    load average before and after, cores, processor, what else ran (`note`), and the time."""
    return {
        "load_average_1_5_15_min_before": [round(value, 2) for value in load_before],
        "load_average_1_5_15_min_after": [round(value, 2) for value in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "note": note,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def machine_speed_now() -> dict:
    """The matmul speed and 1-minute load average right now, for a benchmark that times several
    settings in turn (the shared cores drift between them)."""
    return {"numpy_fp32_matmul_gflops_before": round(matmul_gflops(), 1),
            "load_average_1_min_before": round(os.getloadavg()[0], 2)}


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """This machine's numpy float32 matrix-product speed (GFLOP/s, best of `repeats`).

    Recorded beside every throughput, so that figures from machines that differ in speed
    (up to 2x among machines of one kind) can be compared.
    """
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    a @ b  # warm up the BLAS threads
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _pick(mapping: dict, keys: list, what: str) -> dict:
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise ValueError(f"{what} lacks {missing}; it needs {keys}")
    return {key: mapping[key] for key in keys}


def build_performance_metrics(
    *,
    parameters: dict,
    dataset_name: str,
    dataset_source: str,
    split_counts: dict,
    model_info: dict,
    y_true,
    y_pred,
    male,
    train_ages,
    interval: tuple,
    interval_method: str,
    interval_nominal: float,
    timing: dict,
    groups_age_band=None,
    baseline_pred=None,
    prediction_runtime: dict | None = None,
) -> dict:
    """The performance_metrics.json object of a run (schema in this module's docstring).

    `interval` is (low, high) on the test split; `interval_nominal` the nominal coverage as a
    fraction (0.9). `groups_age_band` defaults to the band of the true age; `baseline_pred` are the
    seed-study model's test predictions, if it was trained; `prediction_runtime` the result of
    `runtime_agreement` per split, with the ONNX graph's ``precision``.
    """
    if not 0 < interval_nominal < 1:
        raise ValueError(f"interval_nominal is the nominal coverage as a fraction (0.9), got {interval_nominal}")
    unknown_splits = sorted(set(split_counts) - set(config.SPLITS))
    if unknown_splits:
        raise ValueError(f"split_counts has unknown split(s) {unknown_splits}; known: {config.SPLITS}")
    splits = {name: int(count) for name, count in _pick(split_counts, config.SPLITS, "split_counts").items()}
    y_true, y_pred = _paired_arrays(y_true, y_pred)
    bands = age_band(y_true) if groups_age_band is None else np.asarray(groups_age_band, dtype=object).ravel()
    low, high = interval
    sexes = sex_label(male)
    if sexes.shape != y_true.shape:
        raise ValueError(f"male has {sexes.size} values but there are {y_true.size} test images")
    intervals = interval_metrics(y_true, low, high, groups=bands, ci=True)
    intervals_by_sex = interval_metrics(y_true, low, high, groups=sexes, ci=True)
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "name": parameters.get("run_name"),
            "preset": parameters.get("preset"),
            "parameters": parameters,
            **git_state(outputs=config.RunPaths(parameters["run_name"]).written),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "library_versions": library_versions(),
            "machine": machine_facts(),
        },
        "dataset": {
            "name": dataset_name,
            "source": str(dataset_source),
            "n_images": sum(splits.values()),
            "splits": splits,
        },
        "model": _pick(model_info, MODEL_KEYS, "model_info"),
        **regression_metrics(y_true, y_pred),
        "ci": accuracy_ci(y_true, y_pred),
        "confidence_intervals": ci_settings(),
        "baseline_mae_mean_predictor": baseline_mae_mean_predictor(train_ages, y_true),
        "by_age_band": metrics_by_group(y_true, y_pred, bands, ci=True),
        "by_sex": metrics_by_group(y_true, y_pred, sexes, ci=True),
        "prediction_interval": {
            "method": interval_method,
            "nominal_pct": 100.0 * interval_nominal,
            "coverage_pct": intervals["coverage_pct"],
            "mean_width": intervals["mean_width"],
            "ci": intervals["ci"],
            "by_age_band": intervals["by_group"],
            "by_sex": intervals_by_sex["by_group"],
        },
        "regression_to_mean": {**regression_to_mean(y_true, y_pred), "ci": {"slope": slope_ci(y_true, y_pred)}},
        "seed_baseline": None,
        "prediction_runtime": prediction_runtime,
        "timing": _pick(timing, TIMING_KEYS, "timing"),
    }
    if baseline_pred is not None:
        _, baseline_pred = _paired_arrays(y_true, baseline_pred)
        metrics["seed_baseline"] = {
            **regression_metrics(y_true, baseline_pred),
            "ci": accuracy_ci(y_true, baseline_pred),
            "by_age_band": metrics_by_group(y_true, baseline_pred, bands, ci=True),
            "by_sex": metrics_by_group(y_true, baseline_pred, sexes, ci=True),
            # Both models on the same images: the paired interval of the difference is far
            # narrower than the two separate intervals suggest.
            "paired_mae_difference": paired_mae_difference(
                y_true, y_pred, baseline_pred, resamples=CI_RESAMPLES, confidence=CI_CONFIDENCE, seed=CI_SEED),
        }
    return metrics


def write_performance_metrics(path, metrics: dict) -> Path:
    """Write the metrics atomically (a crash never leaves half a file); NaN becomes null."""
    if metrics.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: metrics must have schema_version {SCHEMA_VERSION}, got {metrics.get('schema_version')!r}")
    return write_json_atomic(path, metrics)
