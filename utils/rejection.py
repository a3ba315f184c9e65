"""The opt-in rejection of unusable images: no age for an image whose quality flag is not "ok".

The quality check (`utils.quality`) flags images unlike the training radiographs (blank,
inverted, rotated, not a hand: "unusual"). By default the prediction command still returns an
age for them, with the flag beside it; with `--reject-flagged` it returns none and says why, as
BoneXpert does for images it cannot read. One policy, defined here, serves the command
(`utils.predict`) and stage 05, which measures on the test split what rejection costs (the share
of images that get no age) and what it buys (the error of the rest): `rejection_summary`,
written to results/<run>/rejection.json (`config.RunPaths.rejection`).

Plain NumPy and pandas: the prediction command imports this module.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ACCEPTED_FLAG = "ok"
REASON_COLUMN = "rejection_reason"
SCHEMA_VERSION = 1
BOOTSTRAP_SAMPLES = 2000
_FLAG_MEANINGS = {
    "blank": "the image is nearly uniform (blank or unexposed)",
    "inverted": "the image looks inverted (bones darker than soft tissue)",
    "rotated": "the hand looks turned by about 90 degrees",
    "unusual": "the image is unlike the training radiographs (perhaps not a hand radiograph)",
}


def is_rejected(quality_flag) -> np.ndarray:
    """True where an image gets no age under --reject-flagged: its quality flag is not "ok"."""
    flags = np.atleast_1d(np.asarray(quality_flag, dtype=object))
    return np.array([str(flag) != ACCEPTED_FLAG for flag in flags], dtype=bool)


def rejection_reason(quality_flag: str) -> str | None:
    """Why an image with this flag gets no age (None for an accepted image)."""
    flag = str(quality_flag)
    if flag == ACCEPTED_FLAG:
        return None
    meaning = _FLAG_MEANINGS.get(flag, "the image failed the quality check")
    return f"quality flag '{flag}': {meaning}; no age is given (--reject-flagged)"


def rejected_reading(reading: dict) -> dict:
    """The JSON reading of a rejected image: bone_age_months null, rejected true, the
    rejection_reason, and what was known before the estimate (file, quality flag and score, sex,
    chronological age, model); no interval and no clinical readout."""
    kept = ("file", "chronological_age_months", "quality_flag", "quality_score", "sex", "sex_source", "age_source", "model")
    result = {"file": reading.get("file"), "bone_age_months": None, "rejected": True,
              "rejection_reason": rejection_reason(reading["quality_flag"])}
    result.update({key: reading[key] for key in kept if key in reading and key != "file"})
    return result


def reject_rows(table: pd.DataFrame, value_columns) -> pd.DataFrame:
    """A copy of `table` (with a quality_flag column) whose rejected rows have empty
    `value_columns` and a `rejection_reason`; accepted rows have an empty reason."""
    if "quality_flag" not in table:
        raise ValueError("reject_rows needs a quality_flag column")
    result = table.copy()
    rejected = is_rejected(result["quality_flag"].to_numpy())
    for column in value_columns:
        if column in result:
            result.loc[rejected, column] = None  # NaN in a numeric column, missing in a text one
    result[REASON_COLUMN] = [rejection_reason(flag) for flag in result["quality_flag"]]
    return result


def _mae(error: np.ndarray) -> float | None:
    return float(np.mean(np.abs(error))) if error.size else None


def rejection_summary(y_true, y_pred, quality_flag, *, low=None, high=None, seed: int = 0) -> dict:
    """What rejecting the flagged images costs and buys, on one split.

    Keys: schema_version, policy, n, n_rejected, rejected_pct (the cost), mae_all, mae_kept (what
    the images that still get an age are wrong by), mae_rejected, mae_gain (mae_all - mae_kept)
    with mae_gain_ci95 (a bootstrap over images, resampling which are flagged too), within_12_pct_all
    and within_12_pct_kept, coverage_pct_kept (of the prediction intervals, when low and high are
    given) and by_flag ({flag: {n, mae}}). MAEs of an empty group are null.
    """
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    flags = np.asarray(quality_flag, dtype=object).ravel()
    if not (y_true.size == y_pred.size == flags.size) or y_true.size == 0:
        raise ValueError(f"rejection_summary needs equally long, non-empty inputs; got {y_true.size}, "
                         f"{y_pred.size} and {flags.size} values")
    error = y_pred - y_true
    rejected = is_rejected(flags)
    kept = ~rejected
    summary = {
        "schema_version": SCHEMA_VERSION,
        "policy": "no age for an image whose quality_flag is not 'ok' (python -m utils.predict --reject-flagged)",
        "n": int(y_true.size),
        "n_rejected": int(rejected.sum()),
        "rejected_pct": float(100.0 * rejected.mean()),
        "mae_all": _mae(error),
        "mae_kept": _mae(error[kept]),
        "mae_rejected": _mae(error[rejected]),
        "within_12_pct_all": float(100.0 * np.mean(np.abs(error) <= 12.0)),
        "within_12_pct_kept": float(100.0 * np.mean(np.abs(error[kept]) <= 12.0)) if kept.any() else None,
    }
    summary["mae_gain"] = None if summary["mae_kept"] is None else summary["mae_all"] - summary["mae_kept"]
    summary["mae_gain_ci95"] = _bootstrap_gain(error, kept, seed)
    if low is not None and high is not None:
        low = np.asarray(low, dtype=float).ravel()
        high = np.asarray(high, dtype=float).ravel()
        inside = (y_true >= low) & (y_true <= high)
        summary["coverage_pct_all"] = float(100.0 * inside.mean())
        summary["coverage_pct_kept"] = float(100.0 * inside[kept].mean()) if kept.any() else None
    summary["by_flag"] = {
        str(flag): {"n": int(np.sum(flags == flag)), "mae": _mae(error[flags == flag])}
        for flag in sorted(set(flags), key=lambda name: (name != ACCEPTED_FLAG, str(name)))
    }
    return summary


def _bootstrap_gain(error: np.ndarray, kept: np.ndarray, seed: int) -> list[float] | None:
    """95% percentile interval of mae_all - mae_kept over bootstrap resamples of the images."""
    if kept.all() or not kept.any():
        return None if not kept.any() else [0.0, 0.0]
    rng = np.random.default_rng(seed)
    absolute = np.abs(error)
    gains = []
    for _ in range(BOOTSTRAP_SAMPLES):
        sample = rng.integers(0, error.size, error.size)
        sample_kept = kept[sample]
        if sample_kept.any():
            gains.append(absolute[sample].mean() - absolute[sample][sample_kept].mean())
    return [float(value) for value in np.percentile(gains, [2.5, 97.5])]
