"""Every figure of the study, defined once: its file name, the stage that draws it, and a caption
that says what it shows and how to read it.

The stage notebooks save and display each figure through `publish`, the summary notebook
(bone-age.ipynb) shows those marked `summary`, the report places those marked `report` in this
order, and the tests check that every executed stage shows what it saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    name: str  # file stem; the PNG is results/<run>/figures/<name>.png
    stage: str  # the notebook that draws it
    title: str  # a short name, for lists
    caption: str  # what it shows and how to read it
    report: bool = True  # a figure a reader would rather look at: it belongs in Report.pdf
    summary: bool = False  # also shown in bone-age.ipynb
    optional: bool = False  # drawn only when there is something to show

    @property
    def file_name(self) -> str:
        return f"{self.name}.png"


_ALL = (
    Figure("learning_curves", "03_training", "Learning curves",
           "Left: mean absolute error (months) per epoch of our model (solid) and, if it was trained, the seed "
           "baseline (dashed), on the training images (thin line; augmented, so harder than the test images) and "
           "on the validation images (thick line with dots); a star marks the epoch whose weights were kept. Both "
           "models are compared on this axis only, because it is the one quantity they share. Right: our own "
           "training objective (by default a Huber loss) in its own units; the seed baseline's "
           "objective is its MAE, already on the left. A validation curve far above the training curve means "
           "overfitting; both still falling at the end means more epochs would help.", summary=True),
    Figure("predicted_vs_true", "04_evaluation", "Predicted against true",
           "Predicted against true bone age on the test split, one dot per image (ours blue; the seed baseline, "
           "if trained, as orange triangles). Points on the dashed diagonal are exact; vertical bars are the "
           "prediction intervals of a subsample spread over the age range. A cloud flatter than the diagonal "
           "means young children are over- and adolescents under-estimated (regression towards the mean).",
           summary=True),
    Figure("bland_altman", "04_evaluation", "Bland-Altman",
           "Difference (predicted - true) against the mean of the two; the lines mark the bias and the 95% "
           "limits of agreement (bias ± 1.96 SD), between which 95% of errors fall. A slope means the error "
           "depends on age.", summary=True),
    Figure("error_distribution", "04_evaluation", "Error distribution",
           "Distribution of the signed error on the test split; the guides mark ±6 and ±12 months. A peak off "
           "zero is a bias; heavy tails are the few large errors that RMSE weighs more than MAE."),
    Figure("metrics_by_band", "04_evaluation", "MAE per age band",
           "Mean absolute error per bone-age band of the true age, ours and, if trained, the seed baseline; the "
           "black whiskers are 95% bootstrap confidence intervals and n is the number of test images in the band. "
           "A band with few images has a wide interval: its bar says little on its own.", summary=True),
    Figure("interval_coverage", "04_evaluation", "Interval coverage",
           "Share of test images whose true age lies inside its prediction interval, per band of the true age, "
           "with 95% bootstrap confidence intervals (whiskers), against the nominal coverage (dashed line). A "
           "whisker that stays below the line marks a band where the intervals are too narrow; the Mondrian "
           "intervals are calibrated per band of the predicted age, so bands of the true age can miss a little."),
    Figure("residuals_by_age", "05_error_analysis", "Residuals by age",
           "Signed error against true bone age, by sex, with the mean and interquartile range per year of age. "
           "A downward trend is "
           "shrinkage towards the mean age; a gap between the sexes is a sex-specific bias.", summary=True),
    Figure("calibration", "05_error_analysis", "Calibration",
           "Mean true age against mean predicted age in bins of the prediction; a calibrated model lies on "
           "the diagonal."),
    Figure("worst_cases", "05_error_analysis", "Worst cases",
           "The twelve test images with the largest absolute errors, largest first, as the model receives them "
           "(after preprocessing), titled with true and predicted age (months), sex and quality flag. What they "
           "have in common (age, direction of the error, size of the hand, exposure, flags) is counted in the "
           "text and points at what the model has not learnt."),
    Figure("gradcam", "05_error_analysis", "Grad-CAM",
           "Signed Grad-CAM maps of the best, a typical (median error) and the worst test case of each age band, "
           "titled with true and predicted age: each pair is the model's input and the map over it. Red regions "
           "raise the predicted age, blue regions lower it, and the stronger the colour the more they weigh; "
           "uncoloured regions hardly matter. (The classic map keeps only red: it is blank for most young hands, "
           "whose features push the age down.) Colour on the growth plates, carpals and distal radius means the "
           "network reads what a radiologist reads; colour on the background or the border points to shortcuts.",
           summary=True),
    Figure("prediction_gallery", "05_error_analysis", "Random sample of predictions",
           "Twelve test images drawn at random (seeded), as the model receives them, each titled with the true "
           "age, the prediction and its prediction interval in months, and the quality flag; a red title marks a "
           "true age outside the interval. Unlike the worst cases, an unselected sample shows typical errors."),
    Figure("growth_charts", "05_error_analysis", "Growth charts",
           "Bone-age charts of three test children (the most delayed, a typical and the most advanced reading): "
           "predicted bone age against chronological age, with its prediction interval, over the reference mean "
           "(dashed, bone age = age) and the normal range of ±2 SD of the Greulich & Pyle (Brush Foundation) "
           "standard deviations for the child's sex (lighter where the SD table has ended). A point outside the "
           "band reads as delayed or advanced; the box under each chart gives the reading. Drawn only when the "
           "data set has chronological ages (the synthetic data does: each hand is drawn for an age).",
           report=False, optional=True),
    Figure("mae_per_run", "06_comparison", "MAE per run",
           "Left: the test MAE of each run of a sweep with its 95% bootstrap interval. Right: each run's MAE minus "
           "the reference run's on the same test images, with the paired bootstrap 95% interval (a run scored on "
           "other images, of another data seed or fold, has no point). Runs differ by chance too: an interval of "
           "the difference that holds 0 (the dashed line) means the test split cannot tell the two apart.",
           report=False),
    Figure("age_distribution", "01_eda", "Age distribution",
           "Bone age in the data set by sex. Few images at the extremes mean larger errors there."),
    Figure("sample_grid", "01_eda", "Sample images",
           "A sample of radiographs as stored, with bone age and sex.", report=False),
    Figure("quality_outliers", "01_eda", "Quality outliers",
           "The images the quality check flags as unlike the rest (blank, inverted, rotated, not a hand), most "
           "unusual first.", report=False, optional=True),
    Figure("preprocessing_examples", "02_preprocessing", "Preprocessing",
           "Top: radiographs as stored (padded to a square for display). Bottom: the same images as the model "
           "receives them, with this run's preprocessing (hand crop if any, padding or stretching to a square, "
           "resizing to the input size, contrast normalisation), each input pixel enlarged without smoothing.",
           report=False),
    Figure("augmentation_preview", "02_preprocessing", "Augmentation",
           "One training image and five random augmentations of it, as training sees them.", report=False),
)
FIGURES = {figure.name: figure for figure in _ALL}
# Interactive companions (plotly HTML), beside the PNG of the same name.
INTERACTIVE = {"predicted_vs_true": "predicted_vs_true.html"}


def of_stage(stage: str) -> list[Figure]:
    return [figure for figure in _ALL if figure.stage == stage]


def in_report() -> list[Figure]:
    return [figure for figure in _ALL if figure.report]


def in_summary() -> list[Figure]:
    return [figure for figure in _ALL if figure.summary]


def get(name: str) -> Figure:
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; the registry (utils/figures.py) has: {', '.join(FIGURES)}")
    return FIGURES[name]


def publish(figure, figures_dir, name: str) -> None:
    """Save a registered matplotlib figure to `figures_dir/<name>.png` and display it in the notebook.

    Displayed explicitly and then closed: figures drawn inside `matplotlib.rc_context` are not
    always shown by the inline backend at the end of a cell, and closing prevents a second copy.
    """
    import matplotlib.pyplot as plt

    from utils.plots import save_figure

    save_figure(figure, Path(figures_dir) / get(name).file_name)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python: saving is all there is to do
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(figure)
    plt.close(figure)
