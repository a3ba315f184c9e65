"""Each figure function returns a titled, labelled figure; saving writes real files atomically."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from utils import growth, plots

BANDS = ["0-2 y", "2-5 y", "5-10 y", "10-15 y", "15-19 y"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y_true = rng.uniform(0, 228, 300)
    y_pred = y_true + rng.normal(2.0, 10.0, 300)
    male = rng.random(300) < 0.5
    return y_true, y_pred, male


def history(epochs=8, offset=0.0):
    mae = 30.0 - np.arange(epochs) * 2.0 + offset
    val_mae = mae + 3.0
    val_mae[5] = 5.0  # the best epoch is the 6th
    # The shape utils.training writes: per-epoch lists plus scalar summaries.
    return {"epoch": list(range(1, epochs + 1)), "loss": list(mae / 30.0), "val_loss": list(val_mae / 30.0),
            "mae": list(mae), "val_mae": list(val_mae), "best_epoch": 6, "stop_reason": "epochs"}


def title_of(figure) -> str:
    if figure._suptitle is not None and figure._suptitle.get_text():
        return figure._suptitle.get_text()
    return figure.axes[0].get_title()


def legend_texts(axes) -> list[str]:
    return [text.get_text() for text in axes.get_legend().get_texts()]


def assert_titled_and_labelled(figure):
    assert isinstance(figure, Figure)
    assert title_of(figure)
    for axes in figure.axes:
        assert axes.get_xlabel() and axes.get_ylabel(), axes.get_title()


BAND_METRICS = {band: {"n": 10 + i, "mae": 5.0 + i, "bias": 0.5, "within_12_pct": 80.0} for i, band in enumerate(BANDS)}
CALIBRATION_BINS = pd.DataFrame({"mean_predicted": [20.0, 80.0, 150.0], "mean_true": [25.0, 78.0, 140.0],
                                 "n": [5, 20, 8]})
# name -> figure from (y_true, y_pred, male); covers every function, with and without the optional inputs.
FIGURE_CASES = {
    "age_distribution": lambda t, p, m: plots.age_distribution(pd.DataFrame({"boneage": t, "male": m})),
    "learning_curves": lambda t, p, m: plots.learning_curves(history()),
    "learning_curves_baseline": lambda t, p, m: plots.learning_curves(history(), history(12, 5.0)),
    "predicted_vs_true": lambda t, p, m: plots.predicted_vs_true(t, p),
    "predicted_vs_true_full": lambda t, p, m: plots.predicted_vs_true(t, p, p - 15, p + 15, p + 4),
    "bland_altman": lambda t, p, m: plots.bland_altman(t, p),
    "error_distribution": lambda t, p, m: plots.error_distribution(t, p),
    "residuals_by_age": lambda t, p, m: plots.residuals_by_age(t, p),
    "residuals_by_age_sex": lambda t, p, m: plots.residuals_by_age(t, p, m),
    "metrics_by_band": lambda t, p, m: plots.metrics_by_band(BAND_METRICS),
    "metrics_by_band_baseline": lambda t, p, m: plots.metrics_by_band(BAND_METRICS, BAND_METRICS),
    "calibration_plot": lambda t, p, m: plots.calibration_plot(CALIBRATION_BINS),
    "interval_coverage": lambda t, p, m: plots.interval_coverage(
        {band: {"coverage_pct": 88.0, "n": 10} for band in BANDS}, 90),
    "growth_charts": lambda t, p, m: plots.growth_charts([growth.chart_child(pd.DataFrame({
        "chronological_age_months": [110.0, 122.0], "boneage_pred": [118.0, 131.0], "boneage_low": [100.0, 113.0],
        "boneage_high": [136.0, 149.0], "male": [False, False]}), "girl", 90.0)]),
}


@pytest.mark.parametrize("case", list(FIGURE_CASES))
def test_every_figure_has_title_and_axis_labels_with_units(case, predictions):
    figure = FIGURE_CASES[case](*predictions)
    assert_titled_and_labelled(figure)
    labels = " ".join(axes.get_xlabel() + axes.get_ylabel() for axes in figure.axes)
    assert "(months)" in labels or "(years)" in labels


def test_image_grid_shows_every_image_without_axes():
    images = np.random.default_rng(1).integers(0, 256, (10, 16, 16), dtype=np.uint8)
    figure = plots.image_grid(images, [f"image {i}" for i in range(10)], ncols=4, title="Inputs")
    assert title_of(figure) == "Inputs"
    assert len(figure.axes) == 12  # 3 rows of 4
    assert sum(len(axes.images) for axes in figure.axes) == 10
    assert not any(axes.axison for axes in figure.axes)
    assert [axes.get_title() for axes in figure.axes[:10]] == [f"image {i}" for i in range(10)]


def test_image_grid_rejects_mismatched_titles():
    with pytest.raises(ValueError, match="3 images but 2 titles"):
        plots.image_grid(np.zeros((3, 8, 8), np.uint8), ["a", "b"])


def test_learning_curves_mark_best_epoch_and_dash_the_baseline():
    figure = plots.learning_curves(history(), baseline_history=history(10, 4.0))
    mae_axes = figure.axes[0]
    figure_legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "ours best: epoch 6, 5.0 months" in figure_legend and "seed baseline validation" in figure_legend
    dashed = [line for line in mae_axes.get_lines() if line.get_linestyle() == "--"]
    assert dashed and all(to_hex(line.get_color()) == plots.BASELINE_COLOR.lower() for line in dashed)
    ours_validation = [line for line in mae_axes.get_lines() if line.get_label() == "ours validation"][0]
    np.testing.assert_allclose(ours_validation.get_ydata(), history()["val_mae"])
    np.testing.assert_array_equal(ours_validation.get_xdata(), np.arange(1, 9))


def test_learning_curves_put_only_comparable_quantities_on_one_axis():
    """Both models' MAE in months share an axis; the losses (Huber against MAE) never do."""
    figure = plots.learning_curves(history(), baseline_history=history(10, 4.0), loss_name="Huber")
    mae_axes, loss_axes = figure.axes
    assert mae_axes.get_ylabel() == "MAE (months)"
    mae_labels = {line.get_label() for line in mae_axes.get_lines()}
    assert {"ours validation", "seed baseline validation"} <= mae_labels
    loss_labels = {line.get_label() for line in loss_axes.get_lines() if not line.get_label().startswith("_")}
    assert loss_labels == {"ours train", "ours validation"}
    assert "Huber" in loss_axes.get_title()


def test_image_grid_titles_do_not_overlap():
    images = np.zeros((8, 48, 48), np.uint8)
    titles = [f"true {100 + i} · pred {150 + i} mo\nmale · unusual" for i in range(8)]
    figure = plots.image_grid(images, titles, ncols=4, title="Worst cases")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    boxes = [axes.title.get_window_extent(renderer) for axes in figure.axes[:8]]
    for first in range(8):
        for second in range(first + 1, 8):
            assert not boxes[first].overlaps(boxes[second]), (titles[first], titles[second])


def test_learning_curves_without_baseline_has_no_dashed_lines():
    figure = plots.learning_curves(history())
    assert not [line for line in figure.axes[0].get_lines() if line.get_linestyle() == "--"]


def test_learning_curves_reject_history_without_mae():
    with pytest.raises(ValueError, match="history has none of the keys"):
        plots.learning_curves({"loss": [1.0, 0.5]})


def test_predicted_vs_true_reports_mae_and_uses_0_240_equal_axes(predictions):
    y_true, y_pred, _ = predictions
    figure = plots.predicted_vs_true(np.clip(y_true, 10, 200), np.clip(y_pred, 10, 200))
    axes = figure.axes[0]
    mae = np.mean(np.abs(np.clip(y_pred, 10, 200) - np.clip(y_true, 10, 200)))
    assert f"ours (MAE {mae:.1f} months)" in legend_texts(axes)
    assert axes.get_xlim() == (0.0, 240.0) and axes.get_ylim() == (0.0, 240.0)
    assert axes.get_aspect() == 1.0


def test_predicted_vs_true_subsamples_interval_bars_and_shows_baseline(predictions):
    y_true, y_pred, _ = predictions
    figure = plots.predicted_vs_true(y_true, y_pred, y_pred - 10, y_pred + 10, baseline_pred=y_pred + 3,
                                     max_interval_bars=40)
    axes = figure.axes[0]
    bars = axes.containers[0]
    assert len(bars.lines[2][0].get_segments()) == 40
    texts = legend_texts(axes)
    assert any(text.startswith("seed baseline (MAE") for text in texts)
    assert any("40 of 300 shown" in text for text in texts)


def test_bland_altman_labels_bias_and_limits(predictions):
    y_true, y_pred, _ = predictions
    figure = plots.bland_altman(y_true, y_pred)
    difference = y_pred - y_true
    bias, spread = difference.mean(), 1.96 * difference.std(ddof=1)
    annotations = [child.get_text() for child in figure.axes[0].texts]
    assert f"bias: {bias:+.1f} months" in annotations
    assert f"+1.96 SD: {bias + spread:+.1f} months" in annotations
    assert f"−1.96 SD: {bias - spread:+.1f} months" in annotations


def test_error_distribution_guides_at_6_and_12_months():
    figure = plots.error_distribution([10, 20, 30, 40], [12, 30, 30, 60])
    axes = figure.axes[0]
    guide_positions = sorted(line.get_xdata()[0] for line in axes.get_lines())
    assert guide_positions == [-12, -6, 6, 12]
    assert "±6 months (50% within)" in legend_texts(axes)
    assert "±12 months (75% within)" in legend_texts(axes)


def test_residuals_by_age_trend_with_one_sample_per_year():
    y_true = np.arange(6.0, 240.0, 12.0)  # one sample in each yearly bin
    residual = np.linspace(-5, 5, len(y_true))
    figure = plots.residuals_by_age(y_true, y_true + residual, male=np.arange(len(y_true)) % 2 == 0)
    axes = figure.axes[0]
    trend = [line for line in axes.get_lines() if line.get_label() == "mean per year"][0]
    np.testing.assert_allclose(trend.get_ydata(), residual)
    assert {"female (n=10)", "male (n=10)"} <= set(legend_texts(axes))


def test_metrics_by_band_with_one_sample_per_band_and_missing_baseline_band():
    ours = {band: {"n": 1, "mae": 3.0 + i} for i, band in enumerate(BANDS)}
    baseline = {band: {"n": 1, "mae": 9.0} for band in BANDS[:3]}
    figure = plots.metrics_by_band(ours, baseline)
    axes = figure.axes[0]
    heights = [patch.get_height() for patch in axes.patches]
    assert heights == [3.0, 4.0, 5.0, 6.0, 7.0, 9.0, 9.0, 9.0, 0.0, 0.0]
    annotations = [text.get_text() for text in axes.texts]
    assert annotations.count("n=0") == 2 and "3.0\nn=1" in annotations
    assert [label.get_text() for label in axes.get_xticklabels()] == BANDS


def test_metrics_by_band_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        plots.metrics_by_band({})


def test_calibration_plot_requires_columns():
    with pytest.raises(ValueError, match="mean_true"):
        plots.calibration_plot(pd.DataFrame({"mean_predicted": [1.0], "n": [1]}))


def test_interval_coverage_draws_nominal_line_and_accepts_bare_numbers():
    figure = plots.interval_coverage({"0-2 y": 80.0, "2-5 y": {"coverage_pct": 95.0, "n": 3}}, 90)
    axes = figure.axes[0]
    assert [patch.get_height() for patch in axes.patches] == [80.0, 95.0]
    assert any(line.get_ydata()[0] == 90 for line in axes.get_lines())
    assert "nominal 90%" in legend_texts(axes)
    assert "95%\nn=3" in [text.get_text() for text in axes.texts]


@pytest.mark.parametrize("function", [plots.predicted_vs_true, plots.bland_altman, plots.error_distribution,
                                      plots.residuals_by_age])
def test_paired_plots_reject_nan_and_length_mismatch(function):
    with pytest.raises(ValueError, match="NaN"):
        function([1.0, 2.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="y_true has 2 values but y_pred has 3"):
        function([1.0, 2.0], [1.0, 2.0, 3.0])


def test_style_does_not_leak_into_global_settings():
    before = matplotlib.rcParams["axes.spines.top"]
    plots.error_distribution([1.0, 2.0], [2.0, 3.0])
    assert matplotlib.rcParams["axes.spines.top"] == before


def test_save_figure_writes_png_atomically_and_keeps_figure_open(tmp_path):
    figure = plots.bland_altman([10.0, 50.0, 90.0], [12.0, 45.0, 99.0])
    path = plots.save_figure(figure, tmp_path / "new" / "bland_altman.png", dpi=50)
    assert path == tmp_path / "new" / "bland_altman.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert [item.name for item in path.parent.iterdir()] == ["bland_altman.png"]  # no temporary left
    assert plt.fignum_exists(figure.number)


def test_plotly_figure_hover_and_offline_html(tmp_path):
    table = pd.DataFrame({"id": ["a1", "b2", "c3"], "male": [True, False, True],
                          "boneage": [10.0, 100.0, 200.0], "boneage_pred": [12.0, 90.0, 205.0]})
    figure = plots.plotly_predicted_vs_true(table)
    male_trace = [trace for trace in figure.data if trace.name == "male (n=2)"][0]
    assert list(male_trace.customdata[:, 0]) == ["a1", "c3"]
    assert "id %{customdata[0]}" in male_trace.hovertemplate and "sex %{customdata[1]}" in male_trace.hovertemplate
    path = plots.save_plotly_html(figure, tmp_path / "predicted_vs_true.html")
    html = path.read_text(encoding="utf-8")
    assert "a1" in html and '<script src="https://cdn.plot.ly' not in html
    assert path.stat().st_size > 1_000_000  # plotly.js is embedded, so the file opens offline


def test_plotly_figure_requires_columns():
    with pytest.raises(ValueError, match="boneage_pred"):
        plots.plotly_predicted_vs_true(pd.DataFrame({"id": [], "male": [], "boneage": []}))
