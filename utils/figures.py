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
           "Mean absolute error (months) per epoch on the training images (augmented) and on the validation "
           "images; the star marks the epoch whose weights were kept. A validation curve far above the training "
           "curve means overfitting; both still falling at the end means more epochs would help.", summary=True),
    Figure("predicted_vs_true", "04_evaluation", "Predicted against true",
           "Predicted against true bone age on the test split. Points on the dashed diagonal are exact; vertical "
           "bars are the prediction intervals of a subsample. A cloud flatter than the diagonal means young "
           "children are over- and adolescents under-estimated (regression towards the mean).", summary=True),
    Figure("bland_altman", "04_evaluation", "Bland-Altman",
           "Difference (predicted - true) against the mean of the two; the lines mark the bias and the 95% "
           "limits of agreement (bias ± 1.96 SD), between which 95% of errors fall. A slope means the error "
           "depends on age.", summary=True),
    Figure("error_distribution", "04_evaluation", "Error distribution",
           "Distribution of the signed error on the test split; the guides mark ±6 and ±12 months. A peak off "
           "zero is a bias; heavy tails are the few large errors that RMSE weighs more than MAE."),
    Figure("metrics_by_band", "04_evaluation", "MAE per age band",
           "Mean absolute error per bone-age band (n = test images in the band). Bands with few images have "
           "uncertain MAEs.", summary=True),
    Figure("interval_coverage", "04_evaluation", "Interval coverage",
           "Share of test images whose true age lies inside its prediction interval, per age band, against the "
           "nominal coverage (dashed). Bars below the line are bands where the intervals are too narrow."),
    Figure("residuals_by_age", "05_error_analysis", "Residuals by age",
           "Signed error against true bone age, by sex, with the mean and interquartile range per year of age. "
           "A downward trend is "
           "shrinkage towards the mean age; a gap between the sexes is a sex-specific bias.", summary=True),
    Figure("calibration", "05_error_analysis", "Calibration",
           "Mean true age against mean predicted age in bins of the prediction; a calibrated model lies on "
           "the diagonal."),
    Figure("worst_cases", "05_error_analysis", "Worst cases",
           "The test images with the largest absolute errors, with true and predicted age. What they have in "
           "common (size of the hand, rotation, exposure, age) points at what the model has not learnt."),
    Figure("gradcam", "05_error_analysis", "Grad-CAM",
           "Grad-CAM maps: the image regions whose features most changed the predicted age, for a best, a "
           "typical and a worst case per age band. Bright regions on the growth plates and carpal bones are "
           "what a radiologist reads; bright background means the model uses something else.", summary=True),
    Figure("age_distribution", "01_eda", "Age distribution",
           "Bone age in the data set by sex. Few images at the extremes mean larger errors there."),
    Figure("sample_grid", "01_eda", "Sample images",
           "A sample of radiographs as stored, with bone age and sex.", report=False),
    Figure("quality_outliers", "01_eda", "Quality outliers",
           "The images the quality check flags as unlike the rest (blank, inverted, rotated, not a hand), most "
           "unusual first.", report=False, optional=True),
    Figure("preprocessing_examples", "02_preprocessing", "Preprocessing",
           "Top: radiographs as stored; bottom: the same images as the model sees them (after the hand crop, "
           "padding, resizing and contrast normalisation of this run).", report=False),
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
