"""Figures of the study: each function returns a figure; the caller shows or saves it.

Matplotlib figures feed the notebooks and the PDF report; the plotly figure is an
interactive HTML extra. Colours are fixed here so that "ours", "seed baseline",
"female" and "male" look the same in every figure.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go

from utils import config
from utils.files import atomic_path

OURS_COLOR = "#0072B2"
BASELINE_COLOR = "#D55E00"
MEAN_PREDICTOR_COLOR = "#7F7F7F"
FEMALE_COLOR = "#CC79A7"
MALE_COLOR = "#009E73"
TREND_COLOR = "#222222"
CHART_DISCLAIMER = "Research software, not a medical device: not for clinical decisions."

# Sized for a half-page figure in an A4 report: fonts stay legible when scaled to ~16 cm.
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
}
AGE_AXIS_MONTHS = (0.0, float(config.MAX_AGE_MONTHS))
# Training code may name its MAE-in-months metric in any of these ways (first found wins).
_MAE_KEYS = ("mae_months", "mae", "mean_absolute_error")


def _styled(function):
    """Draw inside the module's style without changing the caller's global matplotlib settings."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_STYLE):
            return function(*args, **kwargs)

    return wrapper


def _as_vector(values, name: str) -> np.ndarray:
    vector = np.asarray(values, dtype=float).reshape(-1)
    if vector.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(vector)))} NaN or infinite value(s)")
    return vector


def _paired(y_true, other, name: str = "y_pred") -> tuple[np.ndarray, np.ndarray]:
    """y_true and another per-image series (`name` in messages) as equally long finite vectors."""
    y_true = _as_vector(y_true, "y_true")
    other = _as_vector(other, name)
    if y_true.shape != other.shape:
        raise ValueError(f"y_true has {y_true.size} values but {name} has {other.size}")
    return y_true, other


def _mae(y_true, y_pred) -> float:
    return float(np.mean(np.abs(y_pred - y_true)))


def _age_limits(*arrays) -> tuple[float, float]:
    """0-240 months, widened in whole years only if some value falls outside."""
    low = min(AGE_AXIS_MONTHS[0], *(float(np.min(array)) for array in arrays))
    high = max(AGE_AXIS_MONTHS[1], *(float(np.max(array)) for array in arrays))
    return 12.0 * np.floor(low / 12.0), 12.0 * np.ceil(high / 12.0)


def _identity_axes(axes, limits):
    axes.plot(limits, limits, color="black", linewidth=1, linestyle="--", label="identity (perfect)")
    axes.set_xlim(limits)
    axes.set_ylim(limits)
    axes.set_aspect("equal")


@_styled
def age_distribution(table):
    """Histogram of bone age in years, girls and boys overlaid."""
    missing = {"boneage", "male"} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks the column(s) {sorted(missing)}")
    labelled = table[table["boneage"].notna()]
    if labelled.empty:
        raise ValueError("table has no labelled rows (boneage is NaN everywhere)")
    years = labelled["boneage"].to_numpy(dtype=float) / 12.0
    male = labelled["male"].to_numpy(dtype=bool)
    bins = np.arange(0.0, max(20.0, np.ceil(years.max()) + 1.0), 1.0)
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    for name, selection, color in (("female", ~male, FEMALE_COLOR), ("male", male, MALE_COLOR)):
        axes.hist(years[selection], bins=bins, histtype="stepfilled", alpha=0.45, color=color,
                  edgecolor=color, linewidth=1.5, label=f"{name} (n={int(selection.sum())})")
    axes.set_title(f"Bone age distribution by sex (n={len(labelled)})")
    axes.set_xlabel("bone age (years)")
    axes.set_ylabel("images")
    axes.set_xlim(bins[0], bins[-1])
    axes.legend()
    figure.tight_layout()
    return figure


@_styled
def image_grid(images, titles, ncols: int = 8, title: str = "Sample images", title_colors=None):
    """Gray images (N, S, S) uint8 in a grid without axes, one title each (lines split by "\\n").

    Each panel is as wide as its column's longest title line needs, so that neighbouring titles
    never run into each other; `title_colors` (one per image) can mark some titles.
    """
    images = np.asarray(images)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, S, S) array, got shape {images.shape}")
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    titles = [str(text) for text in titles]
    title_colors = ["black"] * len(images) if title_colors is None else list(title_colors)
    if len(title_colors) != len(images):
        raise ValueError(f"{len(images)} images but {len(title_colors)} title colours")
    ncols = max(1, min(ncols, len(images)))
    nrows = int(np.ceil(len(images) / ncols))
    longest = max(len(line) for text in titles for line in text.split("\n"))
    lines = max(text.count("\n") + 1 for text in titles)
    # About 0.07 inch per character at 8 pt, plus a gap between neighbouring titles.
    panel = max(1.05, 0.07 * longest + 0.15)
    figure, grid = plt.subplots(nrows, ncols, figsize=(panel * ncols, (panel + 0.17 * lines) * nrows + 0.45),
                                squeeze=False)
    for index, axes in enumerate(grid.flat):
        axes.axis("off")
        if index < len(images):
            axes.imshow(images[index], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes.set_title(titles[index], fontsize=8, color=title_colors[index])
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _history_series(history: dict, metric: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Training and (if recorded) validation values of `metric` ("mae" or "loss") per epoch."""
    names = _MAE_KEYS if metric == "mae" else ("loss",)
    for name in names:
        if name in history:
            validation = history.get(f"val_{name}")
            return np.asarray(history[name], dtype=float), (
                None if validation is None else np.asarray(validation, dtype=float))
    raise ValueError(f"history has none of the keys {list(names)}; it has {sorted(history)}")


def _draw_history(axes, history: dict, metric: str, name: str, color: str, linestyle: str, best: bool = True):
    """Training (thin) and validation (thick, dots) curves of `metric`; the best validation-MAE epoch starred."""
    train, validation = _history_series(history, metric)
    axes.plot(np.arange(1, len(train) + 1), train, color=color, linestyle=linestyle, linewidth=1.2, alpha=0.55,
              label=f"{name} train")
    if validation is not None:
        axes.plot(np.arange(1, len(validation) + 1), validation, color=color, linestyle=linestyle,
                  linewidth=2, marker="o", markersize=3, label=f"{name} validation")
    _, validation_mae = _history_series(history, "mae")
    if best and validation_mae is not None and np.any(np.isfinite(validation_mae)):
        epoch = int(np.nanargmin(validation_mae))
        axes.axvline(epoch + 1, color=color, linestyle=":", linewidth=1)
        if metric == "mae":
            axes.plot(epoch + 1, validation_mae[epoch], marker="*", markersize=14, color=color,
                      markeredgecolor="black", linestyle="none",
                      label=f"{name} best: epoch {epoch + 1}, {validation_mae[epoch]:.1f} months")


@_styled
def learning_curves(history: dict, baseline_history: dict | None = None, loss_name: str = "training objective"):
    """Left: MAE in months per epoch, train and validation, of our model and (dashed) the seed
    baseline, on one axis: the one quantity both report in the same unit. Right: our own loss,
    alone on its axis; `loss_name` says what it is. The two models' losses are not drawn
    together: they are different functions (our Huber loss against the baseline's MAE)."""
    figure = plt.figure(figsize=(9, 4.4), layout="constrained")
    grid = figure.add_gridspec(1, 3)
    mae_axes, loss_axes = figure.add_subplot(grid[0, :2]), figure.add_subplot(grid[0, 2])
    _draw_history(mae_axes, history, "mae", "ours", OURS_COLOR, "-")
    if baseline_history is not None:
        _draw_history(mae_axes, baseline_history, "mae", "seed baseline", BASELINE_COLOR, "--")
    _draw_history(loss_axes, history, "loss", "ours", OURS_COLOR, "-")
    mae_axes.set_title("Mean absolute error per epoch" + (" (both models)" if baseline_history is not None else ""))
    mae_axes.set_xlabel("epoch")
    mae_axes.set_ylabel("MAE (months)")
    loss_axes.set_title(f"Our loss: {loss_name}", fontsize=9.5)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss (its own units)")
    loss_axes.legend(fontsize=8)
    for axes in (mae_axes, loss_axes):
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle("Learning curves")
    # One legend under the MAE panel: inside the axes it would hide the curves.
    handles, labels = mae_axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    return figure


def _interval_sample(y_true: np.ndarray, count: int) -> np.ndarray:
    """Indices of `count` cases spread evenly over the true-age range (deterministic)."""
    order = np.argsort(y_true, kind="stable")
    if len(order) <= count:
        return order
    return order[np.linspace(0, len(order) - 1, count).round().astype(int)]


@_styled
def predicted_vs_true(y_true, y_pred, low=None, high=None, baseline_pred=None, max_interval_bars: int = 60):
    """Predicted against true bone age with the identity line; MAE in the legend."""
    y_true, y_pred = _paired(y_true, y_pred)
    arrays = [y_true, y_pred]
    figure, axes = plt.subplots(figsize=(5.2, 5.2))
    if low is not None and high is not None:
        _, low = _paired(y_true, low, "low")
        _, high = _paired(y_true, high, "high")
        covered = float(np.mean((y_true >= low) & (y_true <= high)) * 100.0)
        shown = _interval_sample(y_true, max_interval_bars)
        axes.errorbar(y_true[shown], y_pred[shown],
                      yerr=np.clip([y_pred[shown] - low[shown], high[shown] - y_pred[shown]], 0, None),
                      fmt="none", ecolor=TREND_COLOR, elinewidth=0.7, alpha=0.55, capsize=0, zorder=3,
                      label=f"prediction interval ({len(shown)} of {len(y_true)} shown; covers {covered:.0f}%)")
    if baseline_pred is not None:
        _, baseline_pred = _paired(y_true, baseline_pred, "baseline_pred")
        arrays.append(baseline_pred)
        axes.scatter(y_true, baseline_pred, s=12, marker="^", facecolors="none", edgecolors=BASELINE_COLOR,
                     linewidths=0.7, alpha=0.7,
                     label=f"seed baseline (MAE {_mae(y_true, baseline_pred):.1f} months)")
    axes.scatter(y_true, y_pred, s=12, color=OURS_COLOR, alpha=0.7, edgecolors="none",
                 label=f"ours (MAE {_mae(y_true, y_pred):.1f} months)")
    _identity_axes(axes, _age_limits(*arrays))
    axes.set_title(f"Predicted vs true bone age (n={len(y_true)})")
    axes.set_xlabel("true bone age (months)")
    axes.set_ylabel("predicted bone age (months)")
    axes.legend(loc="upper left")
    figure.tight_layout()
    return figure


@_styled
def bland_altman(y_true, y_pred):
    """Difference (predicted - true) against the mean of both, with bias and limits of agreement."""
    y_true, y_pred = _paired(y_true, y_pred)
    mean = (y_true + y_pred) / 2.0
    difference = y_pred - y_true
    bias = float(np.mean(difference))
    spread = 1.96 * float(np.std(difference, ddof=1)) if len(difference) > 1 else 0.0
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    axes.scatter(mean, difference, s=12, color=OURS_COLOR, alpha=0.6, edgecolors="none", label="test image")
    for value, text, style in ((bias, "bias", "-"), (bias + spread, "+1.96 SD", "--"),
                               (bias - spread, "−1.96 SD", "--")):
        axes.axhline(value, color="black", linestyle=style, linewidth=1)
        axes.annotate(f"{text}: {value:+.1f} months", xy=(1.0, value), xycoords=("axes fraction", "data"),
                      xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom", fontsize=8.5,
                      bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8, "linewidth": 0})
    axes.set_title("Bland-Altman agreement of predicted and true bone age")
    axes.set_xlabel("mean of true and predicted bone age (months)")
    axes.set_ylabel("predicted − true (months)")
    figure.tight_layout()
    return figure


@_styled
def error_distribution(y_true, y_pred):
    """Histogram of the signed error with ±6 and ±12 month guides."""
    y_true, y_pred = _paired(y_true, y_pred)
    error = y_pred - y_true
    reach = max(24.0, 3.0 * np.ceil(np.max(np.abs(error)) / 3.0))
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    axes.hist(error, bins=np.arange(-reach, reach + 3.0, 3.0), color=OURS_COLOR, alpha=0.75,
              edgecolor="white", label=f"ours (MAE {np.mean(np.abs(error)):.1f} months)")
    for limit, style in ((6, ":"), (12, "--")):
        within = float(np.mean(np.abs(error) <= limit) * 100.0)
        axes.axvline(-limit, color="black", linestyle=style, linewidth=1,
                     label=f"±{limit} months ({within:.0f}% within)")
        axes.axvline(limit, color="black", linestyle=style, linewidth=1)
    axes.set_title(f"Distribution of the signed error (n={len(error)})")
    axes.set_xlabel("signed error, predicted − true (months)")
    axes.set_ylabel("test images")
    axes.legend()
    figure.tight_layout()
    return figure


def _binned_trend(x: np.ndarray, y: np.ndarray, width: float = 12.0):
    """Bin centres, mean and interquartile range of y in bins of x (empty bins skipped)."""
    bins = np.floor(x / width).astype(int)
    rows = [((b + 0.5) * width, y[bins == b].mean(), *np.percentile(y[bins == b], [25, 75]))
            for b in np.unique(bins)]
    return np.asarray(rows).T


@_styled
def residuals_by_age(y_true, y_pred, male=None):
    """Residual (predicted - true) against true age with a yearly mean and IQR trend."""
    y_true, y_pred = _paired(y_true, y_pred)
    residual = y_pred - y_true
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    if male is None:
        axes.scatter(y_true, residual, s=12, color=OURS_COLOR, alpha=0.6, edgecolors="none", label="test image")
    else:
        male = np.asarray(male, dtype=bool).reshape(-1)
        if male.shape != y_true.shape:
            raise ValueError(f"male has {male.size} values but y_true has {y_true.size}")
        for name, selection, color in (("female", ~male, FEMALE_COLOR), ("male", male, MALE_COLOR)):
            axes.scatter(y_true[selection], residual[selection], s=12, color=color, alpha=0.6,
                         edgecolors="none", label=f"{name} (n={int(selection.sum())})")
    centres, mean, quartile_low, quartile_high = _binned_trend(y_true, residual)
    axes.fill_between(centres, quartile_low, quartile_high, color=TREND_COLOR, alpha=0.15, linewidth=0,
                      label="interquartile range per year")
    axes.plot(centres, mean, color=TREND_COLOR, linewidth=2, marker="o", markersize=3, label="mean per year")
    axes.axhline(0, color="black", linewidth=1, linestyle="--")
    axes.set_xlim(_age_limits(y_true))
    axes.set_title("Residuals by true bone age")
    axes.set_xlabel("true bone age (months)")
    axes.set_ylabel("predicted − true (months)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _band_value(entry, key: str) -> float:
    value = entry.get(key) if isinstance(entry, dict) else None
    return np.nan if value is None else float(value)


def _band_interval(entry, key: str) -> tuple[float, float]:
    """(low, high) of a group's confidence interval of `key` (metrics file: entry["ci"][key]), or NaNs."""
    interval = ((entry.get("ci") or {}).get(key) if isinstance(entry, dict) else None) or {}
    return _band_value(interval, "low"), _band_value(interval, "high")


def _whiskers(axes, x, value, low, high) -> np.ndarray:
    """Black confidence whiskers where an interval is known; returns the top of each bar or whisker."""
    value, low, high = (np.asarray(array, dtype=float) for array in (value, low, high))
    known = np.isfinite(value) & np.isfinite(low) & np.isfinite(high)
    if known.any():
        axes.errorbar(np.asarray(x)[known], value[known],
                      yerr=np.clip([value[known] - low[known], high[known] - value[known]], 0, None),
                      fmt="none", ecolor="black", elinewidth=1, capsize=3, zorder=3)
    return np.where(known, np.fmax(high, value), value)


@_styled
def metrics_by_band(by_age_band: dict, baseline_by_age_band: dict | None = None):
    """Bars of MAE per age band (ours, optionally the seed baseline), n written above each bar."""
    if not by_age_band:
        raise ValueError("by_age_band is empty")
    bands = list(by_age_band) + [band for band in (baseline_by_age_band or {}) if band not in by_age_band]
    models = [("ours", by_age_band, OURS_COLOR)]
    if baseline_by_age_band is not None:
        models.append(("seed baseline", baseline_by_age_band, BASELINE_COLOR))
    width = 0.8 / len(models)
    positions = np.arange(len(bands))
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    highest = 0.0
    for index, (name, table, color) in enumerate(models):
        offsets = positions + (index - (len(models) - 1) / 2.0) * width
        mae = np.array([_band_value(table.get(band), "mae") for band in bands])
        counts = [_band_value(table.get(band), "n") for band in bands]
        axes.bar(offsets, np.nan_to_num(mae), width=width * 0.95, color=color, label=name)
        low, high = np.array([_band_interval(table.get(band), "mae") for band in bands]).reshape(-1, 2).T
        tops = _whiskers(axes, offsets, mae, low, high)
        for x, value, top, count in zip(offsets, mae, tops, counts):
            count_text = "n=0" if np.isnan(count) else f"n={int(count)}"
            text = count_text if np.isnan(value) else f"{value:.1f}\n{count_text}"
            axes.annotate(text, xy=(x, 0 if np.isnan(value) else top), xytext=(0, 2),
                          textcoords="offset points", ha="center", va="bottom", fontsize=7.5)
        highest = max(highest, float(np.nanmax(tops, initial=0.0)))
    axes.set_ylim(0, max(1.0, highest) * 1.45)  # headroom: annotations, then the legend
    axes.set_xticks(positions, bands)
    axes.set_title("Mean absolute error per age band")
    axes.set_xlabel("true bone age band (years)")
    axes.set_ylabel("MAE (months)")
    axes.legend(loc="upper left", ncol=len(models))
    figure.tight_layout()
    return figure


@_styled
def mae_per_run(runs, mae, low, high, difference=None, difference_low=None, difference_high=None,
                reference: str | None = None):
    """Left: each run's test MAE with its 95% interval. Right (with `difference`): its MAE minus the
    reference run's with the paired 95% interval; NaN marks a run scored on other images."""
    runs = [str(run) for run in runs]
    mae, low, high = (_as_vector(values, name) for values, name in ((mae, "mae"), (low, "low"), (high, "high")))
    if not runs or not len(runs) == mae.size == low.size == high.size:
        raise ValueError(f"expected one MAE and interval per run, got {len(runs)} runs and {mae.size} values")
    panels = 1 if difference is None else 2
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 1.5, 0.45 * len(runs) + 1.6), sharey=True,
                                squeeze=False)
    positions = np.arange(len(runs))
    left = axes[0, 0]
    left.errorbar(mae, positions, xerr=np.clip([mae - low, high - mae], 0, None), fmt="o", color=OURS_COLOR,
                  ecolor=OURS_COLOR, capsize=3)
    left.set_yticks(positions, runs)
    left.set_ylim(len(runs) - 0.5, -0.5)  # the first run on top
    left.set_xlabel("test MAE (months)")
    left.set_title("MAE per run, 95% CI")
    if difference is not None:
        difference, difference_low, difference_high = (
            _as_vector(values, "difference") for values in (difference, difference_low, difference_high))
        right = axes[0, 1]
        known = ~np.isnan(difference)
        right.errorbar(difference[known], positions[known], fmt="o", color=TREND_COLOR, ecolor=TREND_COLOR, capsize=3,
                       xerr=np.clip([difference[known] - difference_low[known],
                                     difference_high[known] - difference[known]], 0, None))
        right.axvline(0, color=MEAN_PREDICTOR_COLOR, linestyle="--", linewidth=1)
        right.set_xlabel("MAE minus the reference's (months)")
        right.set_title(f"Paired vs {reference or 'the reference'}, 95% CI")
    figure.tight_layout()
    return figure


@_styled
def calibration_plot(calibration_bins):
    """Mean true against mean predicted age per bin of predictions; marker area grows with n."""
    missing = {"mean_predicted", "mean_true", "n"} - set(calibration_bins.columns)
    if missing:
        raise ValueError(f"calibration_bins lacks the column(s) {sorted(missing)}")
    if calibration_bins.empty:
        raise ValueError("calibration_bins is empty")
    ordered = calibration_bins.sort_values("mean_predicted")
    predicted = _as_vector(ordered["mean_predicted"], "mean_predicted")
    true = _as_vector(ordered["mean_true"], "mean_true")
    counts = ordered["n"].to_numpy(dtype=float)
    figure, axes = plt.subplots(figsize=(5.2, 5.2))
    axes.plot(predicted, true, color=OURS_COLOR, linewidth=1.5)
    axes.scatter(predicted, true, s=20 + 180 * counts / counts.max(), color=OURS_COLOR, alpha=0.8,
                 edgecolors="white", label="bin of predictions (area ∝ n)", zorder=3)
    for x, y, count in zip(predicted, true, counts):
        axes.annotate(f"n={int(count)}", xy=(x, y), xytext=(6, -10), textcoords="offset points", fontsize=7.5)
    _identity_axes(axes, _age_limits(predicted, true))
    axes.set_title("Calibration of predicted bone age")
    axes.set_xlabel("mean predicted bone age (months)")
    axes.set_ylabel("mean true bone age (months)")
    axes.legend(loc="upper left")
    figure.tight_layout()
    return figure


def _coverage_entry(entry) -> tuple[float, float]:
    """(coverage %, n) from either a number or a {"coverage_pct", "n", ...} record."""
    if isinstance(entry, dict):
        return _band_value(entry, "coverage_pct"), _band_value(entry, "n")
    return (np.nan if entry is None else float(entry)), np.nan


@_styled
def interval_coverage(by_age_band: dict, nominal_pct: float):
    """Empirical coverage of the prediction intervals per age band against the nominal level."""
    if not by_age_band:
        raise ValueError("by_age_band is empty")
    bands = list(by_age_band)
    coverage, counts = np.array([_coverage_entry(by_age_band[band]) for band in bands]).T
    positions = np.arange(len(bands))
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    axes.bar(positions, np.nan_to_num(coverage), width=0.6, color=OURS_COLOR, alpha=0.85, label="empirical")
    low, high = np.array([_band_interval(by_age_band[band], "coverage_pct") for band in bands]).reshape(-1, 2).T
    _whiskers(axes, positions, coverage, low, high)
    for x, value, count in zip(positions, coverage, counts):
        parts = ["—" if np.isnan(value) else f"{value:.0f}%"] + ([] if np.isnan(count) else [f"n={int(count)}"])
        # At the foot of the bar (white) when it is tall enough: clear of the nominal line and the whisker.
        inside = not np.isnan(value) and value >= 25
        axes.annotate("\n".join(parts), xy=(x, 0), xytext=(0, 3 if inside else 2),
                      textcoords="offset points", ha="center", va="bottom",
                      fontsize=8, color="white" if inside else "black")
    axes.axhline(nominal_pct, color="black", linestyle="--", linewidth=1.2, label=f"nominal {nominal_pct:.0f}%")
    axes.set_ylim(0, 122)  # room above 100% for the legend
    axes.set_xticks(positions, bands)
    axes.set_title("Prediction interval coverage per age band")
    axes.set_xlabel("true bone age band (years)")
    axes.set_ylabel("empirical coverage (%)")
    axes.legend(loc="upper left", ncol=2)
    figure.tight_layout()
    return figure


def _growth_panel(axes, child: dict) -> None:
    """One child's bone-age chart on `axes`, in years: the reference band, the visits, the reading."""
    color = MALE_COLOR if child["male"] else FEMALE_COLOR
    reference = child["reference"]
    ages = np.asarray(reference["age_months"], dtype=float) / 12.0
    low = np.asarray(reference["low_months"], dtype=float) / 12.0
    high = np.asarray(reference["high_months"], dtype=float) / 12.0
    tabulated = np.asarray(reference["tabulated"], dtype=bool)
    last = int(np.flatnonzero(tabulated)[-1])
    axes.fill_between(ages[: last + 1], low[: last + 1], high[: last + 1], color=color, alpha=0.18, linewidth=0,
                      label=f"normal range, ±2 SD ({'boys' if child['male'] else 'girls'}, Greulich & Pyle)")
    axes.fill_between(ages[last:], low[last:], high[last:], color=color, alpha=0.07, linewidth=0)
    for edge in (low, high):
        axes.plot(ages, edge, color=color, linewidth=0.8, alpha=0.7)
    axes.plot(ages, ages, color="black", linestyle="--", linewidth=1, label="reference mean (bone age = age)")
    age = _as_vector(child["chronological_age_months"], "chronological_age_months") / 12.0
    bone_age = _as_vector(child["bone_age_months"], "bone_age_months") / 12.0
    if age.shape != bone_age.shape:
        raise ValueError(f"{age.size} chronological ages but {bone_age.size} bone ages")
    below = bone_age - _as_vector(child["low_months"], "low_months") / 12.0
    above = _as_vector(child["high_months"], "high_months") / 12.0 - bone_age
    bars = np.clip(np.vstack([below, above]), 0, None)
    coverage = child.get("coverage_pct", 90.0)
    if age.size > 1:
        axes.plot(age, bone_age, color=TREND_COLOR, linewidth=1, alpha=0.6, zorder=3)
        axes.errorbar(age[:-1], bone_age[:-1], yerr=bars[:, :-1], fmt="o", markersize=5, markerfacecolor="white",
                      color=TREND_COLOR, elinewidth=1, capsize=2, zorder=4, label=f"earlier visits ({age.size - 1})")
    axes.errorbar(age[-1:], bone_age[-1:], yerr=bars[:, -1:], fmt="o", markersize=8, color=color,
                  markeredgecolor="black", ecolor="black", elinewidth=1.4, capsize=4, zorder=5,
                  label=f"latest visit, {coverage:.0f}% prediction interval")
    limit = max(20.0, float(np.ceil(max(age.max(), (bone_age + above).max()))))
    axes.set_xlim(0, limit)
    axes.set_ylim(0, limit)
    axes.set_aspect("equal")
    axes.set_xticks(np.arange(0, limit + 0.1, 2))
    axes.set_yticks(np.arange(0, limit + 0.1, 2))
    # The reading goes under the axes, where it can hide no visit and no interval.
    axes.annotate("\n".join([*child.get("lines", []), CHART_DISCLAIMER]), xy=(0, 0), xycoords="axes fraction", xytext=(0, -34),
                  textcoords="offset points", ha="left", va="top", fontsize=8, linespacing=1.35,
                  bbox={"boxstyle": "round,pad=0.4", "facecolor": "#F4F4F4", "edgecolor": "0.8"})
    axes.set_title(child["title"])
    axes.set_xlabel("chronological age (years)")
    axes.set_ylabel("bone age (years)")
    axes.legend(loc="lower right", fontsize=7.5)


@_styled
def growth_charts(children: list[dict], ncols: int = 3, title: str | None = None):
    """Bone-age charts, one panel per child: bone age against chronological age over the reference
    mean and ±2 SD band of the child's sex, each visit with its prediction interval.

    Each child is a dict as `utils.growth.chart_child` makes it: title, male, coverage_pct,
    reference (age_months, low_months, high_months, tabulated), chronological_age_months,
    bone_age_months, low_months, high_months (oldest visit first, the last is the latest) and
    lines (the text box).
    """
    if not children:
        raise ValueError("no children to chart")
    ncols = max(1, min(ncols, len(children)))
    nrows = int(np.ceil(len(children) / ncols))
    figure, grid = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, 6.6 * nrows), squeeze=False)
    for axes, child in zip(grid.flat, children):
        _growth_panel(axes, child)
    for axes in list(grid.flat)[len(children):]:
        axes.axis("off")
    figure.suptitle(title or "Bone age against chronological age")
    figure.tight_layout()
    return figure


def save_figure(figure, path, dpi: int = 150) -> Path:
    """Write `figure` atomically (format from the suffix); the figure stays open for display."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def plotly_predicted_vs_true(table) -> go.Figure:
    """Interactive predicted vs true scatter; hover shows id, sex, true and predicted age."""
    missing = {"id", "male", "boneage", "boneage_pred"} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks the column(s) {sorted(missing)}")
    figure = go.Figure()
    male = table["male"].astype(bool)
    for name, selection, color in (("female", ~male, FEMALE_COLOR), ("male", male, MALE_COLOR)):
        rows = table[selection]
        figure.add_trace(go.Scatter(
            x=rows["boneage"], y=rows["boneage_pred"], mode="markers", name=f"{name} (n={len(rows)})",
            marker={"color": color, "size": 6, "opacity": 0.75},
            customdata=np.column_stack([rows["id"].astype(str), np.full(len(rows), name)]),
            hovertemplate=("id %{customdata[0]}<br>sex %{customdata[1]}<br>true %{x:.1f} months"
                           "<br>predicted %{y:.1f} months<extra></extra>"),
        ))
    limits = _age_limits(table["boneage"].to_numpy(dtype=float), table["boneage_pred"].to_numpy(dtype=float))
    figure.add_trace(go.Scatter(x=limits, y=limits, mode="lines", name="identity (perfect)",
                                line={"color": "black", "dash": "dash", "width": 1}, hoverinfo="skip"))
    figure.update_layout(
        title="Predicted vs true bone age (hover for each image)", template="plotly_white",
        width=720, height=680,
        xaxis={"title": "true bone age (months)", "range": limits},
        yaxis={"title": "predicted bone age (months)", "range": limits, "scaleanchor": "x", "scaleratio": 1},
    )
    return figure


def save_plotly_html(figure, path) -> Path:
    """Write a self-contained HTML file (plotly.js embedded, so it opens offline), atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.write_html(temporary, include_plotlyjs=True, full_html=True)
    return path
