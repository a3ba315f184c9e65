"""utils.conformal: the split-conformal quantile, Mondrian and absolute intervals, their JSON form."""

import json

import numpy as np
import pytest

from utils import conformal, evaluation


def test_conformal_quantile_finite_sample_rank():
    scores = [7, 1, 10, 3, 5, 2, 9, 4, 8, 6]  # n = 10
    assert conformal.conformal_quantile(scores, 0.9) == 10  # ceil(11 * 0.9) = 10th smallest
    assert conformal.conformal_quantile(scores, 0.8) == 9  # ceil(11 * 0.8) = 9th
    assert conformal.conformal_quantile(scores, 0.5) == 6  # ceil(5.5) = 6th
    # n = 9: (n+1)·0.9 = 9, the 9th smallest is the largest: just enough points
    assert conformal.conformal_quantile([1, 2, 3, 4, 5, 6, 7, 8, 9], 0.9) == 9
    # 100 · 0.55 is 55.00000000000001 in floating point; the rank is still 55
    assert conformal.conformal_quantile(np.arange(1.0, 100.0), 0.55) == 55


def test_conformal_quantile_refuses_too_few_points():
    with pytest.raises(ValueError, match="at least 9"):
        conformal.conformal_quantile([1, 2, 3, 4, 5, 6, 7, 8], 0.9)


def _heteroscedastic_draws(rng, n):
    """Ages 0..228 months; prediction error SD 2 months at the ends, 12 in mid-childhood."""
    y_true = rng.uniform(0, 228, n)
    y_pred = y_true + rng.normal(0.0, 2.0 + 10.0 * np.sin(np.pi * y_true / 228), n)
    return y_true, y_pred


def test_mondrian_conformal_covers_overall_and_per_band_on_fresh_data():
    rng = np.random.default_rng(7)
    calibration = _heteroscedastic_draws(rng, 5000)
    y_true, y_pred = _heteroscedastic_draws(rng, 20000)
    intervals = conformal.fit_conformal(*calibration, coverage=0.9)
    low, high = intervals.interval(y_pred)
    result = evaluation.interval_metrics(y_true, low, high, groups=evaluation.age_band(y_pred))
    assert result["coverage_pct"] == pytest.approx(90.0, abs=2.0)
    assert list(result["by_group"]) == [label for _, _, label in evaluation.AGE_BANDS]
    for band, summary in result["by_group"].items():
        assert summary["coverage_pct"] == pytest.approx(90.0, abs=3.0), band
    # Locally adaptive: narrow for infants, wide in mid-childhood.
    assert result["by_group"]["0-2 y"]["mean_width"] < 0.5 * result["by_group"]["5-10 y"]["mean_width"]


def test_absolute_conformal_has_constant_width_and_misses_per_band():
    rng = np.random.default_rng(7)
    calibration = _heteroscedastic_draws(rng, 5000)
    y_true, y_pred = _heteroscedastic_draws(rng, 20000)
    intervals = conformal.fit_conformal(*calibration, coverage=0.9, method="absolute")
    assert intervals.half_widths == {}
    low, high = intervals.interval(y_pred)
    result = evaluation.interval_metrics(y_true, low, high, groups=evaluation.age_band(y_pred))
    assert result["coverage_pct"] == pytest.approx(90.0, abs=2.0)
    # Same width everywhere: over-covers infants, under-covers mid-childhood.
    assert result["by_group"]["0-2 y"]["coverage_pct"] > 97.0
    assert result["by_group"]["5-10 y"]["coverage_pct"] < 86.0


def test_interval_brackets_prediction_and_is_clipped_to_0_240():
    intervals = conformal.ConformalInterval(method="absolute", coverage=0.9, pooled_half_width=10.0)
    y_pred = np.array([3.0, 100.0, 235.0])
    low, high = intervals.interval(y_pred)
    assert np.all(low <= y_pred) and np.all(y_pred <= high)
    assert low.tolist() == [0.0, 90.0, 225.0]
    assert high.tolist() == [13.0, 110.0, 240.0]


def test_small_band_falls_back_to_pooled_half_width():
    rng = np.random.default_rng(3)
    # 200 calibration points aged 5-10 y, 5 infants: too few for the infant band of its own.
    y_true = np.concatenate([rng.uniform(60, 120, 200), rng.uniform(2, 20, 5)])
    y_pred = y_true + rng.normal(0, 8, y_true.size)
    y_pred[-5:] = y_true[-5:]  # infants predicted perfectly
    intervals = conformal.fit_conformal(y_true, y_pred, coverage=0.9, min_band_size=20)
    assert "0-2 y" not in intervals.half_widths and intervals.calibration_counts["0-2 y"] == 5
    assert "5-10 y" in intervals.half_widths
    assert intervals.half_width([10.0])[0] == intervals.pooled_half_width
    assert intervals.half_width([90.0])[0] == intervals.half_widths["5-10 y"]


def test_conformal_round_trips_through_json():
    rng = np.random.default_rng(5)
    intervals = conformal.fit_conformal(*_heteroscedastic_draws(rng, 1000), coverage=0.8)
    restored = conformal.ConformalInterval.from_dict(json.loads(json.dumps(intervals.to_dict())))
    assert restored == intervals
    y_pred = np.linspace(0, 240, 50)
    np.testing.assert_array_equal(restored.interval(y_pred), intervals.interval(y_pred))


@pytest.mark.parametrize("kwargs, message", [({"coverage": 90}, "fraction"), ({"method": "quantile"}, "unknown conformal")])
def test_fit_conformal_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        conformal.fit_conformal(np.arange(50.0), np.arange(50.0), **kwargs)
