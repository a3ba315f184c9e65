"""Split-conformal prediction intervals: calibrated half-widths around a bone-age estimate.

`fit_conformal` calibrates a `ConformalInterval` on held-out (truth, prediction) pairs of the
calibration split; the interval is stored in the model card (`utils.model_card`) and applied by
the prediction command. How well intervals cover on the test split is measured by
`utils.evaluation.interval_metrics`, with the other test-split numbers.

Plain NumPy/pandas, like utils.evaluation, whose age bands the Mondrian intervals use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from utils import config
from utils.evaluation import _paired_arrays, age_band, group_order

CONFORMAL_METHODS = ("mondrian", "absolute")


def conformal_quantile(scores, coverage: float) -> float:
    """The ceil((n+1)·coverage)-th smallest score: the split-conformal half-width.

    With exchangeable data an interval of this half-width covers a new point with probability
    at least `coverage` (Vovk et al. 2005; Lei et al. 2018). It exists only when
    ceil((n+1)·coverage) <= n, i.e. with enough calibration points.
    """
    scores = np.sort(np.asarray(scores, dtype=float).ravel())
    rank = _conformal_rank(scores.size, coverage)
    if rank > scores.size:
        raise ValueError(
            f"{scores.size} calibration points are too few for {100 * coverage:g}% coverage: "
            f"at least {minimum_calibration_size(coverage)} are needed"
        )
    return float(scores[rank - 1])


def _conformal_rank(n: int, coverage: float) -> int:
    # The tolerance keeps a product like 100 · 0.55 = 55.00000000000001 from ceiling to 56.
    return math.ceil((n + 1) * coverage - 1e-9)


def minimum_calibration_size(coverage: float) -> int:
    """Smallest n for which the conformal quantile at `coverage` is finite."""
    n = 1
    while _conformal_rank(n, coverage) > n:
        n += 1
    return n


@dataclass
class ConformalInterval:
    """Calibrated half-widths (months) of prediction intervals; `interval()` applies them.

    method "mondrian": one half-width per band of the *predicted* age (Mondrian conformal
    prediction, Vovk et al. 2005), so that each band gets its own coverage guarantee: bone-age
    errors are smaller in infants and near maturity than in mid-childhood. A band with fewer than
    `min_band_size` calibration points uses the pooled half-width (marginal guarantee only).
    method "absolute": the pooled half-width everywhere (constant width).
    """

    method: str
    coverage: float
    pooled_half_width: float
    half_widths: dict = field(default_factory=dict)
    calibration_counts: dict = field(default_factory=dict)
    min_band_size: int = 20

    def half_width(self, y_pred) -> np.ndarray:
        """The half-width for each prediction: its band's, or the pooled one."""
        widths = pd.Series(age_band(y_pred)).map(self.half_widths)
        return widths.fillna(self.pooled_half_width).to_numpy(dtype=float)

    def interval(self, y_pred) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) around each prediction, clipped to the 0..240 months of the data."""
        y_pred = np.asarray(y_pred, dtype=float).ravel()
        half_width = self.half_width(y_pred)
        low = config.clip_to_age_range(y_pred - half_width)
        high = config.clip_to_age_range(y_pred + half_width)
        return low, high

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "coverage": self.coverage,
            "pooled_half_width": self.pooled_half_width,
            "half_widths": dict(self.half_widths),
            "calibration_counts": dict(self.calibration_counts),
            "min_band_size": self.min_band_size,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ConformalInterval":
        missing = sorted({"method", "coverage", "pooled_half_width", "half_widths"} - set(data))
        if missing:
            raise ValueError(f"conformal interval description lacks {missing}")
        return cls(
            method=data["method"],
            coverage=float(data["coverage"]),
            pooled_half_width=float(data["pooled_half_width"]),
            half_widths={band: float(width) for band, width in data["half_widths"].items()},
            calibration_counts={band: int(count) for band, count in data.get("calibration_counts", {}).items()},
            min_band_size=int(data.get("min_band_size", cls.min_band_size)),
        )


def fit_conformal(y_true_cal, y_pred_cal, coverage: float = 0.9, method: str = "mondrian", min_band_size: int = 20):
    """Split-conformal intervals calibrated on held-out (truth, prediction) pairs; see ConformalInterval."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be a fraction between 0 and 1, got {coverage}")
    if method not in CONFORMAL_METHODS:
        raise ValueError(f"unknown conformal method {method!r}; choose one of {CONFORMAL_METHODS}")
    y_true_cal, y_pred_cal = _paired_arrays(y_true_cal, y_pred_cal)
    scores = np.abs(y_pred_cal - y_true_cal)
    result = ConformalInterval(
        method=method,
        coverage=float(coverage),
        pooled_half_width=conformal_quantile(scores, coverage),
        min_band_size=int(max(min_band_size, minimum_calibration_size(coverage))),
    )
    if method == "mondrian":
        bands = age_band(y_pred_cal)
        for band in group_order(bands):
            members = bands == band
            result.calibration_counts[band] = int(members.sum())
            if members.sum() >= result.min_band_size:
                result.half_widths[band] = conformal_quantile(scores[members], coverage)
    return result
