"""The PDF report of a run, rendered with reportlab from its results folder: the run as a study.

Reads `performance_metrics.json` (schema versions 1 and 2; the intervals need 2), the findings
the later stages wrote when they are there (error_analysis.json, external_check.json,
rejection.json, training_summary.json) and the PNG figures of the registry (utils/figures.py);
needs neither a browser nor LaTeX. The sections, in order (SECTIONS): title, abstract and key
findings; question and data; method; results with 95% confidence intervals; the comparison with
the seed baseline; published results beside ours; error analysis; the external check on
six-reader labels; discussion; limitations; disclaimer; an appendix with the run's details.
Figures are numbered in reading order, cited from the text and float past text so that pages
stay full. Usage: python -m utils.report RESULTS_DIR [--out PDF]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.lib.utils import ImageReader
from reportlab.platypus import (CondPageBreak, Flowable, KeepTogether, ListFlowable, ListItem, PageBreak, Paragraph,
                                SimpleDocTemplate, Spacer, Table, TableStyle)

from utils import config, figures
from utils.files import atomic_path
from utils.parameters import DISTRIBUTION_RANGE, normalise_tta

DEFAULT_TITLE = "Bone age from hand radiographs"
DASH = "—"
TTA_VIEWS = {  # the views of each mode of parameters.TTA_MODES but "none"
    "shift": "each image and two copies shifted sideways",
    "flip": "each image and its mirror image",
    "shift_flip": "each image, two copies shifted sideways, and the mirror images of the three",
}
MARGIN = 2.0 * cm
TEXT_WIDTH = A4[0] - 2 * MARGIN
FIGURE_MAX_HEIGHT = 10.5 * cm
CONTRAST_DESCRIPTIONS = {
    "clahe": "contrast-limited adaptive histogram equalisation (CLAHE)",
    "percentile": "a percentile contrast stretch",
    "none": "no contrast normalisation",
}


# Version 1 files (before the confidence intervals) still render, without the intervals.
READABLE_SCHEMAS = (1, 2)


def read_metrics(path) -> dict:
    """The parsed performance_metrics.json; ValueError naming the file if absent or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: metrics file not found (run the evaluation step first)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(metrics, dict) or metrics.get("schema_version") not in READABLE_SCHEMAS:
        found = metrics.get("schema_version") if isinstance(metrics, dict) else type(metrics).__name__
        expected = " or ".join(str(version) for version in READABLE_SCHEMAS)
        raise ValueError(f"{path}: expected schema_version {expected}, found {found!r}")
    return metrics


def _styles() -> dict:
    sheet = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("title", parent=sheet["Title"], spaceAfter=2),
        "subtitle": ParagraphStyle("subtitle", parent=sheet["BodyText"], fontSize=9, leading=11.5,
                                   alignment=TA_CENTER, textColor=colors.HexColor("#444444"), spaceAfter=4),
        "box_title": ParagraphStyle("box_title", parent=sheet["BodyText"], fontName="Helvetica-Bold",
                                    fontSize=10.5, leading=13),
        "box": ParagraphStyle("box", parent=sheet["BodyText"], fontSize=9.2, leading=12, spaceAfter=1),
        "small": ParagraphStyle("small", parent=sheet["BodyText"], fontSize=8, leading=10,
                                textColor=colors.HexColor("#444444"), spaceBefore=2),
        "heading": ParagraphStyle("heading", parent=sheet["Heading2"], spaceBefore=10, spaceAfter=4,
                                  keepWithNext=1),
        "subheading": ParagraphStyle("subheading", parent=sheet["Heading4"], spaceBefore=6, spaceAfter=3,
                                     keepWithNext=1),
        "body": ParagraphStyle("body", parent=sheet["BodyText"], fontSize=9.5, leading=12.5, spaceAfter=4),
        "cell": ParagraphStyle("cell", parent=sheet["BodyText"], fontSize=8.5, leading=10.5),
        "header": ParagraphStyle("header", parent=sheet["BodyText"], fontName="Helvetica-Bold",
                                 fontSize=8.5, leading=10.5),
        "caption": ParagraphStyle("caption", parent=sheet["BodyText"], fontName="Helvetica-Oblique",
                                  fontSize=8.3, leading=10.2, alignment=TA_LEFT),
        "notice": ParagraphStyle("notice", parent=sheet["BodyText"], fontSize=9.5, leading=12.5,
                                 borderColor=colors.HexColor("#B03A2E"), borderWidth=1, borderPadding=6,
                                 backColor=colors.HexColor("#FBEEEE"), spaceBefore=6, spaceAfter=10),
    }


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value, digits: int = 1, signed: bool = False) -> str:
    if _missing(value):
        return DASH
    return f"{value:{'+' if signed else ''}.{digits}f}"


def _count(value) -> str:
    return DASH if _missing(value) else f"{int(value):,}"


def _plain(value) -> str:
    """A parameter value as short text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{key} {_plain(item)}" for key, item in value.items())
    return str(value)


def _table(rows, column_widths, styles, numeric_from: int = 1) -> Table:
    """A table with a bold header row; text cells wrap, numeric columns are right-aligned."""
    cells = [[Paragraph(escape(str(cell)), styles["header"]) for cell in rows[0]]]
    cells += [[Paragraph(escape(str(cell)), styles["cell"]) if column < numeric_from else str(cell)
               for column, cell in enumerate(row)] for row in rows[1:]]
    table = Table(cells, colWidths=column_widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(TableStyle([
        ("FONT", (0, 0), (-1, -1), "Helvetica", 8.5),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#E4ECF4")),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#F6F8FA")]),
        ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#A8B4C0")),
        ("ALIGN", (numeric_from, 1), (-1, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 2.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
    ]))
    return table


def _paragraph(text: str, styles, style: str = "body") -> Paragraph:
    """A paragraph of plain text: characters such as < and & are escaped, not read as markup."""
    return Paragraph(escape(text), styles[style])


def _bullets(items, styles) -> ListFlowable:
    return ListFlowable([ListItem(_paragraph(item, styles), leftIndent=12) for item in items],
                        bulletType="bullet", start="•", leftIndent=12)


def _created(run: dict) -> str:
    created = run.get("created_utc")
    if not created:
        return DASH
    try:
        return datetime.fromisoformat(str(created).replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return str(created)


# (label, key, digits, signed) of the headline metrics, all on the test split.
RESULT_ROWS = [
    ("Test images (n)", "n", None, False),
    ("MAE (months)", "mae", 2, False),
    ("RMSE (months)", "rmse", 2, False),
    ("Bias, mean of predicted - true (months)", "bias", 2, True),
    ("Pearson r", "pearson_r", 3, False),
    ("R²", "r2", 3, False),
    ("Within 6 months (%)", "within_6_pct", 1, False),
    ("Within 12 months (%)", "within_12_pct", 1, False),
    ("Within 18 months (%)", "within_18_pct", 1, False),
    ("Within 24 months (%)", "within_24_pct", 1, False),
]


def _value(source: dict | None, key: str, digits, signed: bool) -> str:
    if source is None:
        return DASH
    return _count(source.get(key)) if digits is None else _number(source.get(key), digits, signed)


def results_rows(metrics: dict) -> list[list[str]]:
    """The results table as text: a header, then one row per metric (ours, seed baseline, mean predictor).

    With confidence intervals (schema version 2) a "95% CI" column follows ours; a version-1
    file gives the table without it.
    """
    baseline = metrics.get("seed_baseline")
    interval = metrics.get("prediction_interval") or {}
    with_ci = isinstance(metrics.get("ci"), dict)

    def ci(source, key, digits, signed):
        found = ((source or {}).get("ci") or {}).get(key)
        return [f"{_number(found['low'], digits, signed)} to {_number(found['high'], digits, signed)}"
                if found else DASH] if with_ci else []

    rows = [["Metric", "Ours", *(["95% CI"] if with_ci else []), "Seed baseline", "Mean predictor"]]
    for label, key, digits, signed in RESULT_ROWS:
        mean_predictor = _number(metrics.get("baseline_mae_mean_predictor"), digits) if key == "mae" else DASH
        rows.append([label, _value(metrics, key, digits, signed), *ci(metrics, key, digits, signed),
                     _value(baseline, key, digits, signed), mean_predictor])
    nominal = interval.get("nominal_pct")
    nominal_text = "" if _missing(nominal) else f", nominal {_number(nominal, 0)}%"
    rows.append([f"Interval coverage (%){nominal_text}", _number(interval.get("coverage_pct")),
                 *ci(interval, "coverage_pct", 1, False), DASH, DASH])
    rows.append(["Mean interval width (months)", _number(interval.get("mean_width")), *([DASH] if with_ci else []),
                 DASH, DASH])
    return rows


def results_markdown(metrics: dict) -> str:
    """The same results table in Markdown, for the README."""
    rows = results_rows(metrics)
    lines = ["| " + " | ".join(rows[0]) + " |", "| --- |" + " ---: |" * (len(rows[0]) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def _interval_record(entry) -> dict:
    """Interval results of one group: a {"coverage_pct", "mean_width", ...} record or a bare coverage."""
    return entry if isinstance(entry, dict) else {"coverage_pct": entry}


# ---------------------------------------------------------------------------------------------
# Reading the run: the metrics file and the optional files of the later stages
# ---------------------------------------------------------------------------------------------


def _read_optional(path: Path) -> dict | None:
    """A JSON object a later stage wrote (error_analysis.json, external_check.json, ...), or None."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@dataclass
class _Run:
    """Everything the report reads from a results folder."""

    metrics: dict
    findings: dict | None = None  # error_analysis.json (stage 05)
    external: dict | None = None  # external_check.json (stage 05)
    rejection: dict | None = None  # rejection.json (stage 05)
    training: dict | None = None  # training_summary.json (stage 03)

    @classmethod
    def read(cls, results_dir: Path) -> "_Run":
        return cls(
            metrics=read_metrics(results_dir / "performance_metrics.json"),
            findings=_read_optional(results_dir / "error_analysis.json"),
            external=_read_optional(results_dir / "external_check.json"),
            rejection=_read_optional(results_dir / "rejection.json"),
            training=_read_optional(results_dir / "training_summary.json"),
        )

    @property
    def parameters(self) -> dict:
        return self.metrics.get("run", {}).get("parameters") or {}

    @property
    def baseline(self) -> dict | None:
        return self.metrics.get("seed_baseline")

    @property
    def interval(self) -> dict:
        return self.metrics.get("prediction_interval") or {}

    @property
    def synthetic(self) -> bool:
        dataset = self.metrics.get("dataset", {})
        return "synthetic" in f"{dataset.get('name') or ''} {dataset.get('source') or ''}".lower()

    @property
    def rsna(self) -> bool:
        dataset = self.metrics.get("dataset", {})
        return "rsna" in f"{dataset.get('name') or ''} {dataset.get('source') or ''}".lower()

    @property
    def thumbnails(self) -> bool:
        return self.rsna and "100" in str(self.metrics.get("dataset", {}).get("name") or "")


# ---------------------------------------------------------------------------------------------
# Numbers as text
# ---------------------------------------------------------------------------------------------


def _interval_of(entry: dict | None, key: str) -> dict | None:
    interval = ((entry or {}).get("ci") or {}).get(key)
    return interval if isinstance(interval, dict) and not _missing(interval.get("low")) else None


def _range(interval: dict | None, digits: int = 1, signed: bool = False) -> str:
    """'9.3 to 10.2', or a dash without an interval."""
    if not interval:
        return DASH
    return f"{_number(interval['low'], digits, signed)} to {_number(interval['high'], digits, signed)}"


def _estimate(entry: dict | None, key: str, digits: int = 1, signed: bool = False, unit: str = "") -> str:
    """'9.76 months (95% CI 9.31 to 10.22)', or the value alone when there is no interval."""
    value = (entry or {}).get(key)
    text = _number(value, digits, signed) + unit
    interval = _interval_of(entry, key)
    return f"{text} (95% CI {_range(interval, digits, signed)})" if interval else text


def _months(value, digits: int = 1, signed: bool = False) -> str:
    return f"{_number(value, digits, signed)} months"


# The text of figure captions and of some parameters may hold characters outside the standard
# PDF fonts (Latin-1); they would print as black boxes.
_PDF_REPLACEMENTS = {"\u2212": "-", "\u2192": "->", "\u2264": "<=", "\u2265": ">=", "\u03b4": "delta",
                     "\u2248": "~", "\u2011": "-"}


def _pdf_text(text: str) -> str:
    for character, replacement in _PDF_REPLACEMENTS.items():
        text = text.replace(character, replacement)
    return text


# ---------------------------------------------------------------------------------------------
# Figures: numbered in reading order, cited from the text, floated past text to fill pages
# ---------------------------------------------------------------------------------------------

# Where each figure of the registry goes, in reading order; a report figure of the registry not
# listed here goes at the end of the section of its stage (STAGE_SECTION).
SECTION_FIGURES = {
    "data": ["age_distribution"],
    "training": ["learning_curves"],
    "results": ["predicted_vs_true", "bland_altman", "error_distribution", "metrics_by_band", "interval_coverage"],
    "error_analysis": ["residuals_by_age", "calibration", "worst_cases", "prediction_gallery", "gradcam"],
}
STAGE_SECTION = {"01_eda": "data", "02_preprocessing": "data", "03_training": "training",
                 "04_evaluation": "results", "05_error_analysis": "error_analysis"}
# Image grids need the height to be legible; plots read well at about a third of a page.
TALL_FIGURES = {"gradcam": 20.5 * cm, "worst_cases": 15.0 * cm, "prediction_gallery": 15.0 * cm}


class _FigureBlock(Flowable):
    """An image scaled to the text width (at most `max_height` tall) above its caption; never split."""

    def __init__(self, path: Path, caption: Paragraph, max_height: float):
        super().__init__()
        self.path, self.caption, self.max_height = str(path), caption, max_height
        self.pixel_width, self.pixel_height = ImageReader(self.path).getSize()
        self.image_width = self.image_height = self.caption_height = 0.0

    def wrap(self, available_width, available_height):
        scale = min(available_width / self.pixel_width, self.max_height / self.pixel_height)
        self.image_width, self.image_height = self.pixel_width * scale, self.pixel_height * scale
        _, self.caption_height = self.caption.wrap(available_width, available_height)
        self.width, self.height = available_width, self.image_height + 4 + self.caption_height
        return self.width, self.height

    def split(self, available_width, available_height):
        return []

    def draw(self):
        self.canv.drawImage(self.path, (self.width - self.image_width) / 2, self.caption_height + 4,
                            self.image_width, self.image_height)
        self.caption.drawOn(self.canv, 0, 0)

    def getSpaceAfter(self):
        return 10


class _Barrier(Flowable):
    """Figures float past text up to here, not beyond (the end of the study's body)."""

    _ZEROSIZE = True

    def wrap(self, available_width, available_height):
        return 0, 0

    def draw(self):
        pass


class _FigurePlan:
    """The run's report figures in reading order, numbered before any text cites them."""

    def __init__(self, figures_dir: Path, styles):
        self.figures_dir, self.styles = figures_dir, styles
        present = [figure for figure in figures.in_report() if (figures_dir / figure.file_name).is_file()]
        listed = {name for names in SECTION_FIGURES.values() for name in names}
        self.by_section = {}
        for section, names in SECTION_FIGURES.items():
            chosen = [figure for name in names for figure in present if figure.name == name]
            chosen += [figure for figure in present
                       if figure.name not in listed and STAGE_SECTION.get(figure.stage, "error_analysis") == section]
            self.by_section[section] = chosen
        ordered = [figure for section in SECTION_FIGURES for figure in self.by_section[section]]
        self.numbers = {figure.name: number for number, figure in enumerate(ordered, start=1)}
        self.placed = set()

    def __contains__(self, name: str) -> bool:
        return name in self.numbers

    def ref(self, name: str) -> str:
        """'Figure 3', or '' when the run has no such figure."""
        return f"Figure {self.numbers[name]}" if name in self.numbers else ""

    def cite(self, name: str) -> str:
        """' (Figure 3)' to append to a sentence, or ''."""
        return f" ({self.ref(name)})" if name in self.numbers else ""

    def place(self, *names: str) -> list:
        """The figure blocks of `names` that the run has (each placed once)."""
        blocks = []
        for name in names:
            if name not in self.numbers or name in self.placed:
                continue
            figure = figures.get(name)
            caption = Paragraph(f"<b>Figure {self.numbers[name]}. {escape(_pdf_text(figure.title))}.</b> "
                                f"{escape(_pdf_text(figure.caption))}", self.styles["caption"])
            blocks.append(_FigureBlock(self.figures_dir / figure.file_name, caption,
                                       TALL_FIGURES.get(name, FIGURE_MAX_HEIGHT)))
            self.placed.add(name)
        return blocks

    def rest(self, section: str) -> list:
        """The section's figures not placed yet (e.g. figures added to the registry later), each
        cited by a sentence before it."""
        story = []
        for figure in self.by_section.get(section, []):
            if figure.name not in self.placed:
                story.append(_paragraph(f"{self.ref(figure.name)} shows {figure.title[:1].lower()}{figure.title[1:]}.",
                                        self.styles))
                story += self.place(figure.name)
        return story


class _StudyDocument(SimpleDocTemplate):
    """A document whose figures float: a figure that does not fit in the space left on the page
    lets the text after it (up to FLOAT_LOOKAHEAD flowables, never past a _Barrier) go first,
    instead of leaving the rest of the page empty. Figures keep their order."""

    FLOAT_LOOKAHEAD = 8
    MIN_GAP = 3 * cm  # less space than this on the page is not worth filling
    empty_shares: list | None = None  # if a list, each finished page appends the share of its frame left empty

    def handle_pageEnd(self):
        if self.empty_shares is not None and getattr(self, "frame", None) is not None:
            frame = self.frame
            self.empty_shares.append(max(0.0, frame._y - frame._y1p) / max(frame._height, 1.0))
        super().handle_pageEnd()
    HEADING_WITH_TEXT = 2.8 * cm  # a heading needs this much room below it: itself and a few lines

    def handle_keepWithNext(self, flowables):
        """A heading followed by a paragraph or a table needs only a few of its lines on the same page,
        not all of them: a conditional page break instead of keeping the two together, so that a long
        paragraph or table (whose header row repeats) after a heading near the foot of a page starts
        there rather than leaving a gap."""
        first = flowables[0]
        if (isinstance(first, Paragraph) and first.getKeepWithNext() and len(flowables) > 1
                and isinstance(flowables[1], (Paragraph, Table)) and not flowables[1].getKeepWithNext()):
            first.keepWithNext = 0
            flowables[0:1] = [CondPageBreak(self.HEADING_WITH_TEXT), first]
            return
        super().handle_keepWithNext(flowables)

    def handle_flowable(self, flowables):
        if flowables and isinstance(flowables[0], _FigureBlock) and getattr(self, "frame", None) is not None:
            frame = self.frame
            left = frame._y - frame._y1p
            _, height = flowables[0].wrap(frame._getAvailableWidth(), left)
            if height > left and left > self.MIN_GAP:
                self._move_text_ahead(flowables)
        super().handle_flowable(flowables)

    def _move_text_ahead(self, flowables):
        for index in range(1, min(len(flowables), self.FLOAT_LOOKAHEAD + 1)):
            candidate = flowables[index]
            if isinstance(candidate, (_Barrier, PageBreak)):
                return
            if isinstance(candidate, _FigureBlock):
                continue
            # A heading moves with what it is kept with.
            end = index
            while end + 1 < len(flowables) and flowables[end].getKeepWithNext() \
                    and not isinstance(flowables[end + 1], (_FigureBlock, _Barrier, PageBreak)):
                end += 1
            group = flowables[index:end + 1]
            del flowables[index:end + 1]
            flowables[0:0] = group
            return


# ---------------------------------------------------------------------------------------------
# The sections of the study
# ---------------------------------------------------------------------------------------------


def _dataset_phrase(run: _Run) -> str:
    dataset = run.metrics.get("dataset", {})
    if run.synthetic:
        return "synthetic hand radiographs drawn by the project's generator"
    if run.thumbnails:
        return "the RSNA Pediatric Bone Age training radiographs, shrunk to 100 x 100 pixel thumbnails"
    if run.rsna:
        return "radiographs of the RSNA Pediatric Bone Age data set"
    return f"the radiographs of {dataset.get('name') or 'the data set'}"


def _abstract(run: _Run, plan: _FigurePlan) -> str:
    metrics, dataset = run.metrics, run.metrics.get("dataset", {})
    splits = dataset.get("splits") or {}
    model = metrics.get("model", {})
    count = model.get("parameters_count")
    text = (f"We trained a convolutional network{'' if _missing(count) else f' of {count:,} parameters'} from scratch "
            f"to estimate bone age from a hand radiograph and the child's sex, on {_dataset_phrase(run)} "
            f"({_count(dataset.get('n_images'))} images; {_count(splits.get('train'))} for training, "
            f"{_count(splits.get('test'))} held out for testing). On the test split the mean absolute error (MAE) was "
            f"{_estimate(metrics, 'mae', 2)} months, the root-mean-square error {_estimate(metrics, 'rmse', 2)} months, "
            f"and {_estimate(metrics, 'within_12_pct')}% of the estimates were within 12 months of the reference "
            f"reading; predicting the training mean for every child gives an MAE of "
            f"{_months(metrics.get('baseline_mae_mean_predictor'), 2)}.")
    difference = (run.baseline or {}).get("paired_mae_difference")
    if run.baseline and difference:
        text += (f" The seed study's network, trained on the same split under the same budget, reached "
                 f"{_months(run.baseline.get('mae'), 2)}: {_months(abs(difference['difference']), 2)} "
                 f"{'worse' if difference['difference'] > 0 else 'better'} (paired 95% CI "
                 f"{_range(difference, 2, signed=True)}).")
    elif run.baseline:
        text += f" The seed study's network, trained on the same split, reached {_months(run.baseline.get('mae'), 2)}."
    interval = run.interval
    if interval:
        text += (f" The {_number(interval.get('nominal_pct'), 0)}% prediction intervals covered "
                 f"{_estimate(interval, 'coverage_pct')}% of the test images.")
    external = run.external or {}
    if external.get("available"):
        text += (f" On {external['n']} official test images read by six radiologists the MAE was "
                 f"{_estimate(external, 'mae', 1)} months (n = {external['n']}: a small check).")
    if run.synthetic:
        text += " The images are synthetic: these numbers test the pipeline and say nothing about real radiographs."
    return text


def _key_findings(run: _Run) -> list[str]:
    metrics, bands = run.metrics, run.metrics.get("by_age_band") or {}
    items = [f"Accuracy on {_count(metrics.get('n'))} test images: MAE {_estimate(metrics, 'mae', 2)} months; "
             f"{_estimate(metrics, 'within_12_pct')}% within 12 months; mean predictor "
             f"{_months(metrics.get('baseline_mae_mean_predictor'), 2)}."]
    difference = (run.baseline or {}).get("paired_mae_difference")
    if difference:
        gap = difference["difference"]
        items.append(f"The seed study's network errs by {_months(abs(gap), 2)} {'more' if gap > 0 else 'less'} on the "
                     f"same images (paired 95% CI of its MAE minus ours {_range(difference, 2, True)}): "
                     + ("a real difference." if difference["low"] > 0 or difference["high"] < 0
                        else "not distinguishable on this split."))
    elif run.baseline is None:
        items.append("No seed baseline was trained in this run (train_seed_baseline: false).")
    if bands:
        worst = max(bands, key=lambda band: bands[band].get("mae") or 0)
        best = min(bands, key=lambda band: bands[band].get("mae") if not _missing(bands[band].get("mae")) else 1e9)
        def size(band):
            few = bands[band].get("few_images") or (bands[band].get("n") or 0) < 30
            return f"n = {_count(bands[band].get('n'))}" + (", few images" if few else "")

        items.append(f"Largest error in the {worst} band (MAE {_months(bands[worst].get('mae'))}, {size(worst)}), "
                     f"smallest in {best} ({_months(bands[best].get('mae'))}, {size(best)}).")
    trend = metrics.get("regression_to_mean") or {}
    if not _missing(trend.get("slope")):
        slope_interval = _interval_of(trend, "slope")
        shrinks = trend["slope"] < 0 and (slope_interval is None or slope_interval["high"] < 0)
        items.append(("Regression towards the mean: " if shrinks else "Residual trend with age: ")
                     + f"slope {_number(trend['slope'], 3, True)} (95% CI {_range(slope_interval, 3, True)})"
                     + ("; the youngest are read too old, the oldest too young." if shrinks else "."))
    interval = run.interval
    if interval:
        items.append(f"{_number(interval.get('nominal_pct'), 0)}% intervals: coverage "
                     f"{_estimate(interval, 'coverage_pct')}%, mean width {_months(interval.get('mean_width'))}.")
    quality = (run.findings or {}).get("quality_flags") or {}
    if quality.get("flagged", {}).get("n"):
        items.append(f"{_count(quality['flagged']['n'])} test images carry a quality flag; their MAE is "
                     f"{_months(quality['flagged'].get('mae'))} against {_months(quality['unflagged'].get('mae'))} "
                     "for the rest.")
    external = run.external or {}
    if external.get("available"):
        items.append(f"Six-reader check (n = {external['n']}): MAE {_estimate(external, 'mae', 1)} months.")
    if run.synthetic:
        items.append("Synthetic images: a test of the pipeline, not evidence about real radiographs.")
    return items


def _title_section(run: _Run, title: str, plan: _FigurePlan, styles) -> list:
    metrics = run.metrics
    dataset, run_record = metrics.get("dataset", {}), metrics.get("run", {})
    subtitle = (f"Run {run_record.get('name') or DASH} (preset {run_record.get('preset') or DASH}) on "
                f"{dataset.get('name') or DASH}, {_created(run_record)}, commit {run_record.get('git_commit') or DASH}")
    box = Table([[Paragraph("<b>Key findings</b>", styles["box_title"])],
                 [ListFlowable([ListItem(_paragraph(item, styles, "box"), leftIndent=10) for item in _key_findings(run)],
                               bulletType="bullet", start="•", leftIndent=10)]],
                colWidths=[TEXT_WIDTH])
    box.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#EEF3F8")),
                             ("BOX", (0, 0), (-1, -1), 0.8, colors.HexColor("#5B7A99")),
                             ("LEFTPADDING", (0, 0), (-1, -1), 8), ("RIGHTPADDING", (0, 0), (-1, -1), 8),
                             ("TOPPADDING", (0, 0), (-1, -1), 4), ("BOTTOMPADDING", (0, -1), (-1, -1), 6)]))
    return [
        Paragraph(escape(title), styles["title"]),
        _paragraph(subtitle, styles, "subtitle"),
        Paragraph("<b>Research use only.</b> Not a medical device; not for clinical decisions "
                  "(see the disclaimer at the end).", styles["notice"]),
        Paragraph("Abstract", styles["heading"]),
        _paragraph(_abstract(run, plan), styles),
        Spacer(1, 6),
        box,
    ]


def _question_and_data(run: _Run, plan: _FigurePlan, styles) -> list:
    metrics, dataset = run.metrics, run.metrics.get("dataset", {})
    splits = dataset.get("splits") or {}
    story = [Paragraph("1. Question and data", styles["heading"]), _paragraph(
        "Bone age (skeletal age) is the age whose typical skeletal maturity a radiograph of the left hand shows; "
        "radiologists read it against an atlas such as Greulich & Pyle and compare it with the child's "
        "chronological age to detect growth disorders. The question of this study: how closely does a compact "
        "network, trained from scratch on two CPU cores, read bone age from the radiograph and the sex; where "
        "does it go wrong; and how far can the uncertainty it states be trusted?", styles)]
    if run.synthetic:
        labels = ("The images are synthetic drawings made by the project's generator, whose skeletal maturity "
                  "follows age and sex; the labels are the generator's exact ages.")
    elif run.rsna:
        labels = ("The images come from the RSNA Pediatric Bone Age Challenge 2017 (Halabi et al., Radiology 2019). "
                  "Their labels are one radiologist's clinical reading in whole months (single-reader labels)."
                  + (" The images were shrunk to 100 x 100 pixel thumbnails without keeping the aspect ratio."
                     if run.thumbnails else ""))
    else:
        labels = "The labels come with the data set; their reading protocol is not known to this report."
    total = dataset.get("n_images")
    text = (f"Data: {dataset.get('name') or 'not recorded'}"
            + (f" (read from {dataset['source']})" if dataset.get("source") else "")
            + ("" if _missing(total) else f", {_count(total)} images") + ". " + labels)
    if splits:
        text += (" The images were divided at random, stratified by age band and sex, into the splits below. The "
                 "validation split chooses the epoch to keep, the calibration split sizes the prediction intervals, "
                 "and every number in the results comes from the test split, which took no part in training or "
                 "model selection.")
    story.append(_paragraph(text, styles))
    if splits:
        rows = [["Split", *splits, "total"], ["images", *(_count(value) for value in splits.values()), _count(total)]]
        width = TEXT_WIDTH / (len(splits) + 2)
        story.append(_table(rows, [width] * (len(splits) + 2), styles))
    by_sex, by_band = metrics.get("by_sex") or {}, metrics.get("by_age_band") or {}
    composition = []
    if by_sex:
        composition.append(" and ".join(f"{_count(entry.get('n'))} {sex}" for sex, entry in by_sex.items()))
    if by_band:
        composition.append("by bone-age band " + ", ".join(f"{band}: {_count(entry.get('n'))}"
                                                           for band, entry in by_band.items()))
    if composition:
        story += [Spacer(1, 4), _paragraph(f"The test split ({_count(metrics.get('n'))} images) holds "
                                           + "; ".join(composition) + "." + (
            f" The age distribution of the whole data set is in {plan.ref('age_distribution')}; few images at the "
            "extremes of age mean less to learn from there." if "age_distribution" in plan else ""), styles)]
    return story + plan.place("age_distribution") + plan.rest("data")


def _method_items(run: _Run) -> list[tuple[str, str]]:
    """(lead-in, text) of each part of the method."""
    parameters, metrics = run.parameters, run.metrics
    model = metrics.get("model", {})
    size = model.get("image_size") or parameters.get("image_size")
    crop = parameters.get("hand_crop", "none")
    crop_text = {
        "none": "The whole frame is used (no hand crop).",
        "box": "It is cropped to the hand: the largest bright connected region after an Otsu threshold (a "
               "threshold that best separates the gray levels into two groups), with a margin.",
        "rotated": "It is cropped to the hand (the largest bright connected region after an Otsu threshold) and "
                   "turned upright along the hand's long axis.",
    }.get(crop, f"Hand crop: {crop}.")
    geometry = {True: "padded to a square so that the aspect ratio is kept",
                False: "stretched to a square (the aspect ratio is not kept)"}.get(
        parameters.get("pad_to_square"), "brought to a square")
    contrast = CONTRAST_DESCRIPTIONS.get(parameters.get("contrast"), "a contrast normalisation")
    items = [("Input.", f"Each radiograph is read as 8-bit grayscale. {crop_text} It is {geometry}, resized to "
              + (f"{size} x {size} pixels" if size else "the network's input size")
              + f" and processed with {contrast}"
              + (", which equalises contrast tile by tile so that bones stand out in dark and bright films alike"
                 if parameters.get("contrast") == "clahe" else "") + ".")]
    architecture = model.get("architecture") or parameters.get("architecture")
    count = model.get("parameters_count")
    widths = parameters.get("widths")
    if architecture == "ours" and widths:
        block = parameters.get("block", "plain")
        network = (f"A compact convolutional network of {_count(count)} parameters: a first convolution with stride "
                   f"{parameters.get('stem_stride', 2)}, then {len(widths)} stages of "
                   f"{parameters.get('convs_per_stage', 2)} "
                   + {"residual": "residual blocks (each adds its input to its output, which eases training)",
                      "repvgg": "RepVGG blocks (while training, a 3 x 3 and a 1 x 1 convolution and, where the width "
                                "stays, the input itself, each batch-normalised and summed; the shipped network, whose "
                                "parameters are counted here, folds them into one 3 x 3 convolution with the same "
                                "predictions)"}.get(
                       block, "3 x 3 convolutions with batch normalisation and ReLU")
                   + f" with {', '.join(str(width) for width in widths)} filters, a 2 x 2 max-pooling between stages, "
                   f"global average pooling, dropout {parameters.get('dropout')} and a dense layer of "
                   f"{parameters.get('dense_units')} units. The sex (0 girl, 1 boy) joins after the dropout, so that it "
                   "is never hidden from the network. The output is the standardised age (z-score of the training "
                   "ages), turned into months inside the model"
                   + (f": the expected value of a softmax over {parameters.get('age_bins')} age bins spread over "
                      f"{DISTRIBUTION_RANGE:g} standard deviations either side of the mean age."
                      if parameters.get("head") == "distribution"
                      else "."))
    else:
        network = (f"The '{architecture or 'unknown'}' network"
                   + ("" if _missing(count) else f" of {_count(count)} parameters")
                   + "; sex enters as a second input and the output is bone age in months.")
    members = parameters.get("ensemble_members") or 1
    if members > 1:
        network += (f" {members} such networks, trained with successive seeds, are averaged into one model (an "
                    "ensemble).")
    items.append(("Network.", network))
    loss = parameters.get("loss")
    if loss == "huber":
        delta = parameters.get("huber_delta")
        items.append(("Loss.", f"The Huber loss on the standardised age with delta {delta} standard deviations: "
                      "quadratic for errors smaller than delta and linear beyond, so that it is smooth near zero like "
                      "the squared error but, like the absolute error, not dominated by a few very large errors."))
    elif loss == "l1":
        items.append(("Loss.", "The absolute error (L1) on the standardised age."))
    budget = parameters.get("time_budget_minutes")
    training = (f"AdamW (Adam with decoupled weight decay {parameters.get('weight_decay')}), batches of "
                f"{parameters.get('batch_size')}, a learning rate warmed up over the first epoch to "
                f"{parameters.get('learning_rate')} and then decayed along a cosine, for up to {parameters.get('epochs')} "
                f"epochs" + (f" or {_number(budget, 0)} minutes" if budget else "")
                + f"; training stops after {parameters.get('patience')} epochs without a better validation MAE, and "
                "the weights of the best validation epoch are kept.")
    if parameters.get("ema"):
        training += " An exponential moving average of the weights is evaluated and kept."
    small = parameters.get("progressive_image_size")
    if small:
        training += (f" Progressive resizing: the first {parameters.get('progressive_epochs')} epochs train on the "
                     f"images shrunk to {small} x {small} pixels (faster epochs, coarse features first), the rest at "
                     "full size; validation is always at full size.")
    items.append(("Training.", training))
    if parameters.get("augment"):
        parts = [f"rotation up to {parameters.get('augment_rotation_degrees')} degrees",
                 f"shifts up to {parameters.get('augment_shift')} of the side",
                 f"zoom up to {parameters.get('augment_zoom')}", f"contrast {parameters.get('augment_contrast')}",
                 f"brightness {parameters.get('augment_brightness')}"]
        if parameters.get("augment_flip"):
            parts.append("horizontal flips")
        items.append(("Augmentation.", "Each training image is perturbed at random at every epoch (" + ", ".join(parts)
                      + "), so that the network learns the anatomy rather than the exact picture; validation and "
                      "test images are never perturbed."))
    elif parameters.get("augment") is False:
        items.append(("Augmentation.", "None."))
    tta = normalise_tta(parameters.get("tta") or "none")
    if tta != "none":
        items.append(("Test-time augmentation (TTA).", f"Each prediction is the mean over {TTA_VIEWS[tta]}, which "
                      "smooths out the network's sensitivity to small shifts."))
    interval = run.interval
    if interval:
        calibration = (metrics.get("dataset", {}).get("splits") or {}).get("calibration")
        mondrian = "mondrian" in str(interval.get("method", "")).lower()
        items.append(("Prediction intervals.", (
            f"Split-conformal prediction: the absolute errors on the calibration split"
            + ("" if _missing(calibration) else f" ({_count(calibration)} images, unused in training)")
            + f" give the half-width that {_number(interval.get('nominal_pct'), 0)}% of them stay within; an interval of "
            "that half-width around a new prediction then covers the truth with at least that probability, if the new "
            "image is like the calibration images.")
            + (" Mondrian (named after the painter's grid of rectangles) means one such half-width per band of the "
               "predicted age, so that each band gets its own guarantee; a band with too few calibration images uses "
               "the pooled half-width." if mondrian else "")))
    items.append(("Quality flags.", "Each test image is scored by how unlike the training images its pixels are "
                  "(a Mahalanobis distance under a probabilistic PCA of cheap image features). The threshold is the "
                  "score that only 1% of the training images exceed; an image above it is flagged, and named blank, "
                  "inverted, rotated or unusual."))
    settings = metrics.get("confidence_intervals") or {}
    items.append(("Uncertainty of the numbers.", (
        f"95% confidence intervals (CI) are percentile bootstrap intervals: the test images are drawn with "
        f"replacement {_count(settings.get('resamples', 2000))} times, each metric is recomputed on every draw, and "
        "the middle 95% of the values is the interval. It reflects which images happened to land in the test split, "
        "not the randomness of training. The comparison with the seed baseline scores both models on the same draws "
        f"(a paired bootstrap), which removes the variation they share. Groups of fewer than "
        f"{settings.get('few_images_below', 30)} images are marked: their intervals are wide.")
        if settings else "This run's metrics file predates confidence intervals (schema version 1)."))
    baseline = ("and the seed study's network (convolution, batch-normalisation, max-pooling and dropout blocks, "
                "dense layers of 512, 256 and 128 units, Adam at 0.001, MAE loss, its own augmentation with flips; "
                "image only, the sex is not used), trained on the same split under the same epoch limit and time "
                "budget" if run.baseline is not None else "")
    items.append(("Comparisons.", "A mean predictor (the training mean age for every image)"
                  + (f" {baseline}" if baseline else "") + "."))
    items.append(("Terms.", "MAE is the mean absolute error in months; RMSE the root of the mean squared error, which "
                  "weighs large errors more; bias the mean of predicted minus true (positive: read too old); "
                  "'within 12 months' the share of estimates less than a year off; Pearson r and R² measure how "
                  "much of the spread of true ages the predictions follow. A Bland-Altman plot shows the difference "
                  "of two measurements against their mean, with limits of agreement (bias +/- 1.96 standard "
                  "deviations) between which 95% of differences fall."))
    return items


def _method(run: _Run, plan: _FigurePlan, styles) -> list:
    story = [Paragraph("2. Method", styles["heading"])]
    for lead, text in _method_items(run):
        story.append(Paragraph(f"<b>{escape(lead)}</b> {escape(_pdf_text(text))}", styles["body"]))
    return story


STOP_REASONS = {"epochs": "it ran to the epoch limit", "early_stopping": "early stopping ended it",
                "time_budget": "the time budget ended it"}


def _training_paragraph(run: _Run, plan: _FigurePlan) -> str:
    training = run.training or {}
    parts, refit = [], run.parameters.get("refit_on_validation")
    for name, label in (("ours", "Our network"), ("seed_baseline", "The seed baseline")):
        summary = training.get(name)
        if not summary:
            continue
        minutes = summary.get("training_seconds")
        parts.append(f"{label} kept epoch {summary.get('best_epoch')} ("
                     + ("the last; refitted on training and validation images, so its validation MAE of "
                        f"{_months(summary.get('best_val_mae'), 2)} is in-sample" if refit else
                        f"validation MAE {_months(summary.get('best_val_mae'), 2)}") + ") after "
                     f"{len(summary.get('epoch') or []) or DASH} epochs"
                     + ("" if _missing(minutes) else f" and {_number(minutes / 60, 1)} minutes")
                     + (f"; {STOP_REASONS.get(summary['stop_reason'], 'it stopped: ' + str(summary['stop_reason']))}"
                        if summary.get("stop_reason") else "") + ".")
    text = " ".join(parts)
    if "learning_curves" in plan:
        text += (f" {plan.ref('learning_curves')} shows the learning curves: the training MAE is measured on "
                 "augmented images, so it can lie above the validation MAE.")
    return text


def _results_table(metrics: dict, styles) -> Table:
    rows = [["Metric", "Ours", "95% CI", "Seed baseline", "Mean predictor"]]
    baseline = metrics.get("seed_baseline")
    for label, key, digits, signed in RESULT_ROWS:
        interval = _interval_of(metrics, key)
        mean_predictor = _number(metrics.get("baseline_mae_mean_predictor"), digits) if key == "mae" else DASH
        rows.append([label, _value(metrics, key, digits, signed),
                     _range(interval, digits, signed) if interval else DASH,
                     _value(baseline, key, digits, signed), mean_predictor])
    interval = metrics.get("prediction_interval") or {}
    nominal = interval.get("nominal_pct")
    rows.append([f"Interval coverage (%){'' if _missing(nominal) else f', nominal {_number(nominal, 0)}%'}",
                 _number(interval.get("coverage_pct")), _range(_interval_of(interval, "coverage_pct")), DASH, DASH])
    rows.append(["Mean interval width (months)", _number(interval.get("mean_width")), DASH, DASH, DASH])
    return _table(rows, [6.4 * cm, 2.4 * cm, 3.2 * cm, 2.6 * cm, TEXT_WIDTH - 14.6 * cm], styles)


def _group_table(name: str, groups: dict, baseline_groups: dict | None, interval_groups: dict | None, styles) -> Table:
    """Per-group metrics with their intervals; the baseline and coverage columns only when known."""
    baseline_groups, interval_groups = baseline_groups or {}, interval_groups or {}
    columns = [
        ("n", lambda group, entry: _count(entry.get("n")) + (" *" if entry.get("few_images") else "")),
        ("MAE (months)", lambda group, entry: _number(entry.get("mae"), 2)),
        ("MAE 95% CI", lambda group, entry: _range(_interval_of(entry, "mae"))),
        ("Bias (months)", lambda group, entry: _number(entry.get("bias"), 1, signed=True)),
        ("Within 12 months (%)", lambda group, entry: _number(entry.get("within_12_pct"))),
        ("Seed baseline MAE", lambda group, entry: _number((baseline_groups.get(group) or {}).get("mae"), 2)),
        ("Coverage (%)", lambda group, entry: _number(_interval_record(interval_groups.get(group)).get("coverage_pct"))),
        ("Coverage 95% CI", lambda group, entry: _range(_interval_of(_interval_record(interval_groups.get(group)),
                                                                     "coverage_pct"), 0)),
    ]
    body = [[label, [cell(group, groups[group]) for group in groups]] for label, cell in columns]
    body = [column for column in body if any(value != DASH for value in column[1])]
    rows = [[name, *(label for label, _ in body)]]
    rows += [[group, *(column[1][row] for column in body)] for row, group in enumerate(groups)]
    first = 2.2 * cm
    return _table(rows, [first] + [(TEXT_WIDTH - first) / len(body)] * len(body), styles)


def _few_images_note(run: _Run) -> str:
    few = [group for name in ("by_age_band", "by_sex") for group, entry in (run.metrics.get(name) or {}).items()
           if entry.get("few_images") or (not _missing(entry.get("n")) and entry["n"] < 30)]
    if not few:
        return ""
    return (f" * fewer than 30 test images ({', '.join(few)}): the numbers of these groups are imprecise, as their "
            "wide intervals show.")


def _agreement(metrics: dict) -> str:
    """The Bland-Altman limits of agreement from the bias and the RMSE (SD of the error = sqrt(MSE - bias²))."""
    bias, rmse = metrics.get("bias"), metrics.get("rmse")
    if _missing(bias) or _missing(rmse) or rmse**2 < bias**2:
        return ""
    spread = 1.96 * math.sqrt(rmse**2 - bias**2)
    return (f" The 95% limits of agreement (bias +/- 1.96 SD of the error) run from {_number(bias - spread, 1, True)} "
            f"to {_number(bias + spread, 1, True)} months.")


def _results(run: _Run, plan: _FigurePlan, styles) -> list:
    metrics = run.metrics
    story = [Paragraph("3. Results", styles["heading"])]
    training = _training_paragraph(run, plan)
    if training:
        story += [Paragraph("3.1 Training", styles["subheading"]), _paragraph(training, styles)]
    story += plan.place("learning_curves") + plan.rest("training")
    story += [Paragraph("3.2 Accuracy on the test split", styles["subheading"]), _paragraph(
        f"The table gives each metric on the {_count(metrics.get('n'))} test images with its 95% confidence interval. "
        f"The MAE of {_months(metrics.get('mae'), 2)} compares with "
        f"{_months(metrics.get('baseline_mae_mean_predictor'), 2)} for predicting the mean age of the training "
        f"images; the bias of {_months(metrics.get('bias'), 2, True)} "
        + ("is within its interval of zero" if (_interval_of(metrics, "bias") or {}).get("low", 1) <= 0
           <= (_interval_of(metrics, "bias") or {}).get("high", -1) else "is the overall tendency to read hands "
           + ("older" if (metrics.get("bias") or 0) > 0 else "younger") + " than the reference")
        + "." + (f" Predictions against the truth are in {plan.ref('predicted_vs_true')}" if "predicted_vs_true" in plan
                 else "") + (f", their agreement in {plan.ref('bland_altman')}" if "bland_altman" in plan else "")
        + (f" and the distribution of errors in {plan.ref('error_distribution')}" if "error_distribution" in plan
           else "") + "." + _agreement(metrics), styles), _results_table(metrics, styles)]
    story += plan.place("predicted_vs_true", "bland_altman", "error_distribution")
    bands, sexes = metrics.get("by_age_band") or {}, metrics.get("by_sex") or {}
    baseline = run.baseline or {}
    interval = run.interval
    if bands or sexes:
        story.append(Paragraph("3.3 By age band and sex", styles["subheading"]))
        text = ("Age bands are bands of the true (reference) bone age." + (
            f" {plan.ref('metrics_by_band')} shows the MAE per band with its interval." if "metrics_by_band" in plan
            else "") + _few_images_note(run))
        story.append(_paragraph(text, styles))
    if bands:
        story.append(_group_table("Band", bands, baseline.get("by_age_band"), interval.get("by_age_band"), styles))
    if sexes:
        story += [Spacer(1, 6), _group_table("Sex", sexes, baseline.get("by_sex"), interval.get("by_sex"), styles)]
    story += plan.place("metrics_by_band")
    if interval:
        short = [band for band, entry in (interval.get("by_age_band") or {}).items()
                 if (_interval_of(entry, "coverage_pct") or {}).get("high", 101) < (interval.get("nominal_pct") or 0)]
        story += [Paragraph("3.4 Prediction intervals", styles["subheading"]), _paragraph(
            f"The {_number(interval.get('nominal_pct'), 0)}% intervals ({interval.get('method') or 'conformal'}) covered "
            f"{_estimate(interval, 'coverage_pct')}% of the test images with a mean width of "
            f"{_months(interval.get('mean_width'))}."
            + (f" Per band ({plan.ref('interval_coverage')}), " if "interval_coverage" in plan else " Per band, ")
            + (f"the intervals cover too rarely in {', '.join(short)}: the whole confidence interval of the coverage "
               "lies below the nominal level." if short else
               "no band's coverage is clearly below the nominal level (each confidence interval reaches it).")
            + " A coverage above nominal means wider intervals than needed.", styles)]
    story += plan.place("interval_coverage") + plan.rest("results")
    return story


def _baseline_comparison(run: _Run, styles) -> list:
    story = [Paragraph("4. Comparison with the seed baseline", styles["heading"])]
    baseline = run.baseline
    if baseline is None:
        return story + [_paragraph(
            "This run did not train the seed study's network (train_seed_baseline: false), so there is no paired "
            "comparison; the mean predictor is the only reference on these images.", styles)]
    difference = baseline.get("paired_mae_difference")
    if difference:
        real = difference["low"] > 0 or difference["high"] < 0
        text = (f"On the same {_count(difference.get('n'))} test images the seed baseline's MAE is "
                f"{_months(baseline.get('mae'), 2)} and ours {_months(run.metrics.get('mae'), 2)}: a paired difference "
                f"(baseline minus ours) of {_months(difference['difference'], 2, True)} (95% CI "
                f"{_range(difference, 2, True)}). "
                + ("The interval excludes zero: the difference is not an accident of which images were drawn for the "
                   "test split." if real else "The interval holds zero: this split cannot tell the two apart."))
    else:
        text = (f"On the same test images the seed baseline's MAE is {_months(baseline.get('mae'), 2)} and ours "
                f"{_months(run.metrics.get('mae'), 2)} (this metrics file has no paired interval).")
    story.append(_paragraph(text, styles))
    story.append(_paragraph(
        "What makes it like for like: the same split and images, the same preprocessing and input size, the same "
        "epoch limit, early-stopping rule, time budget and seed. What does not: the architecture, optimiser, "
        "learning rate and batch size are the seed study's own (a fixed reference, not tuned here); the baseline "
        "uses its own, heavier augmentation including flips and ignores the sex; and test-time augmentation is "
        "applied to our model only. The comparison therefore measures the two recipes as a whole, not any single "
        "choice.", styles))
    return story


# Published anchors (months of MAE). Sources: Halabi et al., Radiology 2019 (the RSNA challenge, its
# winner and reader agreement); the from-scratch range collects published RSNA studies at 224 px and
# more (see ../shared/NOTES.md).
ANCHORS = [
    ("Predicting the training mean", "33.5", "RSNA training images, 100 px", "single reader", "any",
     "the floor any model must beat"),
    ("CNNs trained from scratch (published)", "8.0-10.8", "RSNA validation or own splits", "single reader",
     "224 px and more", "closest in kind: same labels, 5x or more our pixels"),
    ("RSNA 2017 winner, validation", "6.8", "RSNA validation set (1,425)", "single reader", "about 500 px",
     "same labels; ImageNet-pretrained InceptionV3, much higher resolution"),
    ("RSNA 2017 winner, test", "4.2", "RSNA test set (200)", "six-reader mean", "about 500 px",
     "not with our test split (other labels); with our six-reader check"),
    ("One radiologist against six", "4.8-7.0", "RSNA test set", "six-reader mean", "full resolution",
     "the disagreement of one reader: a floor for single-reader labels"),
]


def _anchors(run: _Run, styles) -> list:
    metrics = run.metrics
    size = metrics.get("model", {}).get("image_size")
    ours_resolution = (f"{size} px" + (" from 100 px thumbnails" if run.thumbnails else "")) if size else DASH
    rows = [["Reference", "MAE (months)", "Evaluated on", "Labels", "Resolution", "Comparable with ours?"],
            ["This run", f"{_number(metrics.get('mae'), 2)} ({_range(_interval_of(metrics, 'mae'))})",
             f"our test split ({_count(metrics.get('n'))})", "synthetic (exact)" if run.synthetic else "single reader",
             ours_resolution, DASH],
            ["Mean predictor, this run", _number(metrics.get("baseline_mae_mean_predictor"), 2),
             f"our test split ({_count(metrics.get('n'))})", DASH, DASH, "the floor on our split"]]
    external = run.external or {}
    if external.get("available"):
        rows.append(["This run, six-reader check", f"{_number(external.get('mae'), 2)} ({_range(_interval_of(external, 'mae'))})",
                     f"RSNA test images (n = {external['n']})", "six-reader mean", ours_resolution,
                     "with the winner's 4.2 in labels, not in n"])
    rows += [list(anchor) for anchor in ANCHORS]
    story = [Paragraph("5. Published results beside ours", styles["heading"]), _paragraph(
        "Bone-age errors depend on the labels as much as on the model: single-reader labels carry that reader's own "
        "error (one radiologist differs from the mean of six by 4.8 to 7.0 months), so an MAE against them cannot "
        "fall far below that however good the model is, while six-reader labels remove much of it, which is why the "
        "RSNA winner scored 6.8 on the single-reader validation set and 4.2 on the six-reader test set. Resolution "
        "matters next: the growth plates that stage maturity are a few pixels wide at 100 px."
        + (" This run used synthetic images: none of the published figures is comparable with it."
           if run.synthetic else ""), styles)]
    widths = [3.4 * cm, 2.3 * cm, 3.0 * cm, 2.2 * cm, 2.3 * cm]
    story.append(_table(rows, widths + [TEXT_WIDTH - sum(widths)], styles, numeric_from=6))
    story.append(_paragraph("Sources: Halabi et al., Radiology 2019 (challenge results, reader agreement); the "
                            "from-scratch range collects published RSNA studies, as summarised in the project's field "
                            "notes.", styles, "small"))
    return story


def _sex_by_band_table(findings: dict, styles) -> Table | None:
    table = findings.get("sex_by_band") or {}
    if not table:
        return None
    sexes = [sex for sex in ("female", "male") if any(sex in entry for entry in table.values())]
    rows = [["Band", *(f"{sex} {what}" for sex in sexes for what in ("n", "MAE", "bias"))]]
    for band, entry in table.items():
        row = [band]
        for sex in sexes:
            cell = entry.get(sex) or {}
            row += [_count(cell.get("n")) + (" *" if cell.get("few_images") else ""), _number(cell.get("mae"), 1),
                    _number(cell.get("bias"), 1, signed=True)]
        rows.append(row)
    first = 2.4 * cm
    return _table(rows, [first] + [(TEXT_WIDTH - first) / (len(rows[0]) - 1)] * (len(rows[0]) - 1), styles)


def _error_analysis(run: _Run, plan: _FigurePlan, styles) -> list:
    metrics, findings = run.metrics, run.findings or {}
    story = [Paragraph("6. Error analysis", styles["heading"])]
    trend = metrics.get("regression_to_mean") or {}
    bands = metrics.get("by_age_band") or {}
    if not _missing(trend.get("slope")):
        slope_interval = _interval_of(trend, "slope")
        first, last = (next(iter(bands)), list(bands)[-1]) if bands else (None, None)
        text = (f"Regression towards the mean: a straight line fitted to the residual (predicted - true) against the "
                f"true age has a slope of {_number(trend['slope'], 3, True)} months per month"
                + (f" (95% CI {_range(slope_interval, 3, True)})" if slope_interval else "")
                + f" and an intercept of {_months(trend.get('intercept'), 1, True)}. ")
        if trend["slope"] < 0 and (slope_interval is None or slope_interval["high"] < 0):
            text += ("A negative slope means that predictions are pulled towards the mean age: the youngest "
                     "children are read too old and the oldest too young"
                     + (f" (bias {_months(bands[first].get('bias'), 1, True)} in {first} and "
                        f"{_months(bands[last].get('bias'), 1, True)} in {last})" if first else "")
                     + ". A regressor trained with few images at the extremes of age does this; it matters most "
                     "where clinical questions arise, in the very young and near maturity.")
        else:
            text += "The slope is not clearly below zero: no systematic pull towards the mean age."
        text += ((f" {plan.ref('residuals_by_age')} shows the residuals by age and sex" if "residuals_by_age" in plan
                  else "") + (f", {plan.ref('calibration')} the mean true age per bin of predictions"
                              if "calibration" in plan else "") + ("." if plan.ref("residuals_by_age") else ""))
        story.append(_paragraph(text, styles))
    story += plan.place("residuals_by_age", "calibration")
    if not findings:
        story.append(_paragraph("The findings of the error-analysis stage (error_analysis.json) are not in this "
                                "results folder: run stage 05 for the tables below.", styles))
    table = _sex_by_band_table(findings, styles)
    if table is not None:
        story += [Paragraph("Sex and age band", styles["subheading"]), _paragraph(
            "MAE and bias (months) of girls and boys in each band of the true age; * marks cells of fewer than 30 "
            "images, whose numbers are imprecise.", styles), table]
    quality = findings.get("quality_flags") or {}
    if quality:
        flagged, unflagged = quality.get("flagged") or {}, quality.get("unflagged") or {}
        by_flag = quality.get("by_flag") or {}
        text = (f"Quality flags: {_count(flagged.get('n'))} of {_count(findings.get('n'))} test images are flagged as "
                "unlike the training images"
                + (" (" + ", ".join(f"{flag} {_count(entry.get('n'))}" for flag, entry in by_flag.items() if flag != "ok")
                   + ")" if flagged.get("n") else "")
                + (f"; their MAE is {_estimate(flagged, 'mae')} months against {_estimate(unflagged, 'mae')} for the "
                   "unflagged images." if flagged.get("n") else
                   f"; the MAE of all images is {_estimate(unflagged, 'mae')} months."))
        if flagged.get("n") and flagged["n"] < 30:
            text += f" With {_count(flagged['n'])} flagged images the comparison is imprecise."
        rejection = run.rejection or {}
        if rejection.get("n_rejected") and not _missing(rejection.get("mae_kept")):
            gain = rejection.get("mae_gain_ci95")
            text += (f" Refusing an age for flagged images (python -m utils.predict --reject-flagged) would leave "
                     f"{_number(100 - rejection.get('rejected_pct', 0), 1)}% of the images with an MAE of "
                     f"{_months(rejection['mae_kept'], 2)}"
                     + (f" (gain {_number(rejection.get('mae_gain'), 2, True)}, 95% CI {_number(gain[0], 2, True)} to "
                        f"{_number(gain[1], 2, True)})" if isinstance(gain, (list, tuple)) and len(gain) == 2 else "")
                     + ".")
        story += [Paragraph("Image quality", styles["subheading"]), _paragraph(text, styles)]
    profile = findings.get("worst_cases") or {}
    if profile.get("notes") or "worst_cases" in plan:
        text = (f"The worst cases: the {_count(profile.get('n'))} largest errors (the worst "
                f"{_number(profile.get('share_pct'), 0)}%, at least {_months(profile.get('threshold_months'), 0)} off) "
                "compared with all test images. " if profile else "")
        text += " ".join(profile.get("notes") or [])
        if "worst_cases" in plan:
            text += f" {plan.ref('worst_cases')} shows the twelve largest."
        story += [Paragraph("The worst cases", styles["subheading"]), _paragraph(text.strip(), styles)]
    story += plan.place("worst_cases")
    gallery = findings.get("gallery") or []
    if gallery or "prediction_gallery" in plan:
        inside = sum(1 for row in gallery if row["boneage_low"] <= row["boneage"] <= row["boneage_high"])
        errors = [abs(row["boneage_pred"] - row["boneage"]) for row in gallery]
        text = ("Typical predictions: the worst cases are chosen, so " + (
            f"{plan.ref('prediction_gallery')} shows " if "prediction_gallery" in plan else "the gallery holds ")
                + f"{len(gallery) or 'a'} test images drawn at random"
                + (f"; their errors range from {_number(min(errors), 0)} to {_number(max(errors), 0)} months and "
                   f"{inside} of {len(gallery)} true ages lie inside their intervals." if gallery else "."))
        story += [Paragraph("A random sample", styles["subheading"]), _paragraph(text, styles)]
    story += plan.place("prediction_gallery")
    gradcam = findings.get("gradcam") or {}
    if "gradcam" in plan or gradcam:
        text = (f"Where the network looks: {plan.ref('gradcam') or 'the Grad-CAM figure'} shows Grad-CAM maps "
                "(Selvaraju et al. 2017): the gradient of the predicted age with respect to the last convolutional "
                "features, averaged per feature channel, weights those features into a coarse map of the regions "
                "that moved the prediction. The map is drawn with its sign, red where a region raises the predicted "
                "age and blue where it lowers it")
        if gradcam.get("cases"):
            text += (f"; of its {gradcam['cases']} maps, {gradcam.get('blank_classic', DASH)} would be blank in the "
                     f"classic form, which keeps only what raises the age, and {gradcam.get('blank_signed', DASH)} are "
                     "blank signed")
        text += (". The map has the resolution of the last feature map (a few cells across), so it points at "
                 "regions, not at single bones.")
        story += [Paragraph("Where the network looks", styles["subheading"]), _paragraph(text, styles)]
    story += plan.place("gradcam") + plan.rest("error_analysis")
    return story


def _external_check(run: _Run, styles) -> list:
    story = [Paragraph("7. External check on six-reader labels", styles["heading"])]
    external = run.external
    if not external:
        return story + [_paragraph(
            "Not run: this results folder has no external_check.json (stage 05 writes it).", styles)]
    if not external.get("available"):
        return story + [_paragraph(
            "Not run: " + str(external.get("reason") or "no reason recorded") + ". The check predicts the 20 official "
            "RSNA test images of ../shared/data/rsna-fullres-sample, whose labels are the mean of six radiologists.",
            styles)]
    n = external.get("n")
    story.append(_paragraph(
        f"The run's model predicted the {n} official RSNA test images in {external.get('folder') or 'the sample'}, "
        f"whose labels are the mean of six radiologists' readings, with this run's preprocessing. n = {n}: this is a "
        "small external check, not a measurement; the confidence intervals show how little 20 images pin down. The "
        "images are full-resolution radiographs segmented and aligned by a public recipe, unlike the training images, "
        "so the check also tests how the model copes with that difference.", styles))
    rows = [["Metric", "Value", "95% CI"],
            ["Images (n)", _count(n), DASH],
            ["MAE (months)", _number(external.get("mae"), 2), _range(_interval_of(external, "mae"), 2)],
            ["RMSE (months)", _number(external.get("rmse"), 2), _range(_interval_of(external, "rmse"), 2)],
            ["Bias (months)", _number(external.get("bias"), 2, True), _range(_interval_of(external, "bias"), 2, True)],
            ["Within 12 months (%)", _number(external.get("within_12_pct")), _range(_interval_of(external, "within_12_pct"))],
            ["Interval coverage (%)", _number(external.get("coverage_pct")), _range(external.get("ci_coverage_pct"))]]
    story.append(_table(rows, [6.4 * cm, 3.0 * cm, 4.0 * cm], styles))
    bias = _interval_of(external, "bias")
    direction = ("reads these images older than the six readers" if bias and bias["low"] > 0 else
                 "reads these images younger than the six readers" if bias and bias["high"] < 0 else
                 "shows no clear bias on them")
    story.append(_paragraph(
        f"Against six readers the MAE is {_months(external.get('mae'), 2)}, against "
        f"{_months(run.metrics.get('mae'), 2)} on our single-reader test split; the model {direction} (bias "
        f"{_estimate(external, 'bias', 1, True)} months)"
        + (f", and {external.get('left_out_seen_ids')} image(s) of the sample were left out because the run's own "
           "data set holds them" if external.get("left_out_seen_ids") else "") + ".", styles))
    return story


def _discussion(run: _Run) -> list[str]:
    metrics = run.metrics
    mae = metrics.get("mae")
    paragraphs = []
    if run.synthetic:
        paragraphs.append(
            f"On synthetic images the network reached an MAE of {_months(mae, 2)} against "
            f"{_months(metrics.get('baseline_mae_mean_predictor'), 2)} for the mean predictor: the pipeline learns, "
            "evaluates, calibrates and reports end to end. The images are simpler than radiographs and their labels "
            "exact, so these numbers carry no meaning for real hands; the real-data run (preset rsna100) does.")
    else:
        position = ""
        if not _missing(mae):
            position = ("inside" if 8.0 <= mae <= 10.8 else "below" if mae < 8.0 else "above")
        paragraphs.append(
            f"With an MAE of {_months(mae, 2)} the network is {position} the 8.0 to 10.8 months published for "
            "networks trained from scratch at 224 pixels and more" + (
                ", on thumbnails of a fifth of that side: the resolution, not only the network, bounds it."
                if run.thumbnails else ".")
            + " It stays well above the pretrained, high-resolution entries of the RSNA challenge, and part of the "
            "gap to them is the single-reader labels, whose own error (4.8 to 7.0 months between one reader and six) "
            "no model can remove from the measured MAE.")
    trend = metrics.get("regression_to_mean") or {}
    if not _missing(trend.get("slope")) and trend["slope"] < 0:
        paragraphs.append(
            "The errors are not uniform: predictions are pulled towards the mean age, so the youngest children are "
            "over- and the oldest under-estimated. These are the ages with the fewest training images and where bone "
            "age is read from few structures (carpal bones appearing, growth plates closing). Any use near those "
            "extremes needs the band-wise numbers, not the overall MAE.")
    interval = run.interval
    if interval:
        paragraphs.append(
            f"The conformal intervals kept their promise overall ({_number(interval.get('coverage_pct'))}% for a "
            f"nominal {_number(interval.get('nominal_pct'), 0)}%), but at a mean width of "
            f"{_months(interval.get('mean_width'))} they are wide: they state honestly how uncertain a single reading "
            "is. They hold for images like the calibration images; the quality flag marks those that are not.")
    paragraphs.append(
        "What would help most, by the field's experience: more pixels (the full-resolution radiographs), a hand crop, "
        "pretrained features, an ensemble, and an evaluation against multi-reader labels on more than 20 images.")
    return paragraphs


def _limitations(metrics: dict) -> list[str]:
    dataset = metrics.get("dataset", {})
    described = f"{dataset.get('name') or ''} {dataset.get('source') or ''}".lower()
    items = []
    if "synthetic" in described:
        items.append("The images are synthetic drawings made by the project's generator. These results show "
                     "that the pipeline runs end to end; they are not evidence about accuracy on real "
                     "radiographs. The labels are the generator's exact ages, unlike real readings.")
    elif "rsna" in described:
        items.append("Training and test labels are one radiologist's clinical reading (integer months). A "
                     "single reader differs from a multi-reader consensus by several months, so part of the "
                     "measured error is label noise and the reference itself is uncertain.")
        if "100" in described:
            items.append("The images are 100 x 100 pixel thumbnails, stretched without keeping the aspect "
                         "ratio. Fine ossification detail visible at full resolution is lost; errors are not "
                         "comparable with models evaluated on full-resolution radiographs.")
    else:
        items.append("The labels come from the data set as provided; their reading protocol and inter-reader "
                     "variability are not known to this report.")
    items.append("No external validation beyond a 20-image check: the test split is held out from the same data set "
                 "(same source, population and acquisition). Accuracy on other hospitals, scanners or populations is "
                 "unknown.")
    items.append("One split, one training run: the confidence intervals cover the sampling of test images, not the "
                 "randomness of training (another seed gives another model) nor of the split.")
    small = [band for band, entry in (metrics.get("by_age_band") or {}).items()
             if not _missing(entry.get("n")) and entry["n"] < 30]
    if small:
        items.append(f"Few test images in the band(s) {', '.join(small)} (fewer than 30 each): their "
                     "per-band figures are imprecise.")
    items.append("The seed baseline is the seed study's recipe as it stood, not re-tuned for these images; Grad-CAM "
                 "maps are coarse and show association, not reasoning.")
    return items


DISCLAIMER = ("<b>Medical disclaimer.</b> This report and the software that produced it are for research use "
              "only. They are not a medical device, have not been cleared or approved by any regulator, and "
              "must not be used for diagnosis, treatment or any other clinical decision. Bone-age assessment "
              "for patient care must be made by a qualified clinician.")


def _machine(machine: dict) -> str:
    sets = machine.get("instruction_sets")
    return (f"{machine.get('cpu') or DASH}, {machine.get('logical_cpus') or DASH} logical CPUs"
            + (f"; {' '.join(sets) or 'no AVX2, AVX-512 or AMX'}" if sets is not None else ""))


def _run_details(run: _Run, styles) -> list:
    metrics = run.metrics
    run_record, dataset, model = metrics.get("run", {}), metrics.get("dataset", {}), metrics.get("model", {})
    versions = run_record.get("library_versions") or {}
    rows = [
        ["Item", "Value"],
        ["Run name", run_record.get("name") or DASH],
        ["Preset", run_record.get("preset") or DASH],
        ["Dataset", " ".join(filter(None, [dataset.get("name"), f"({dataset['source']})"
                                            if dataset.get("source") else None])) or DASH],
        ["Model file", model.get("path") or DASH],
        ["Run date", _created(run_record)],
        ["Git commit", run_record.get("git_commit") or DASH],
        *([["Uncommitted changes", ", ".join(run_record["uncommitted_changes"])]]
          if run_record.get("uncommitted_changes") else []),
        ["Library versions", ", ".join(f"{name} {version}" for name, version in versions.items()) or DASH],
        *([["Machine", _machine(run_record["machine"])]] if run_record.get("machine") else []),
    ]
    story = [Paragraph("Appendix: the run", styles["heading"]),
             _table(rows, [3.5 * cm, TEXT_WIDTH - 3.5 * cm], styles, numeric_from=2)]
    parameters = run.parameters
    if parameters:
        items = list(parameters.items())
        half = (len(items) + 1) // 2
        rows = [["Parameter", "Value", "Parameter", "Value"]]
        for index in range(half):
            right = items[half + index] if half + index < len(items) else ("", "")
            rows.append([items[index][0], _plain(items[index][1]), right[0], _plain(right[1]) if right[0] else ""])
        story += [Paragraph("Run parameters", styles["subheading"]),
                  _table(rows, [3.6 * cm, TEXT_WIDTH / 2 - 3.6 * cm] * 2, styles, numeric_from=4)]
    timing = metrics.get("timing") or {}
    if timing:
        seconds = timing.get("inference_seconds_single_image")
        rows = [["Measure (on the machine of the run)", "Value"],
                ["Training time (s)", _number(timing.get("training_seconds"), 0)],
                ["Training throughput (images/s)", _number(timing.get("training_images_per_second"), 0)],
                ["Inference throughput (images/s)", _number(timing.get("inference_images_per_second"), 0)],
                ["Latency of one image (ms)", DASH if _missing(seconds) else _number(seconds * 1000.0, 1)]]
        story += [Paragraph("Compute", styles["subheading"]), _table(rows, [7.4 * cm, 3.2 * cm], styles)]
    return story


def _footer(title: str, run_name: str):
    def draw(canvas, document):
        canvas.saveState()
        canvas.setFont("Helvetica", 8)
        canvas.setFillColor(colors.HexColor("#555555"))
        canvas.drawString(MARGIN, 1.2 * cm, f"{title} {DASH} {run_name}" if run_name else title)
        canvas.drawRightString(A4[0] - MARGIN, 1.2 * cm, f"Page {document.page}")
        canvas.restoreState()

    return draw


# The study's sections, in reading order (tests check it).
SECTIONS = ("Abstract", "Key findings", "1. Question and data", "2. Method", "3. Results",
            "4. Comparison with the seed baseline", "5. Published results beside ours", "6. Error analysis",
            "7. External check on six-reader labels", "8. Discussion", "9. Limitations", "Medical disclaimer",
            "Appendix: the run")


def build_report(results_dir, output_pdf, *, title: str = DEFAULT_TITLE, compress: bool = True,
                 empty_shares: list | None = None) -> Path:
    """Render the run in `results_dir` as an A4 PDF at `output_pdf` (written atomically).

    Reads performance_metrics.json and, when the later stages wrote them, error_analysis.json,
    external_check.json, rejection.json and training_summary.json, and the report figures of
    the registry (utils/figures.py). `compress=False` leaves page streams uncompressed so that
    tests can find the text in the file; a list `empty_shares` receives, page by page, the share
    of the text frame left empty.
    """
    results_dir = Path(results_dir)
    output_pdf = Path(output_pdf)
    run = _Run.read(results_dir)
    styles = _styles()
    plan = _FigurePlan(results_dir / "figures", styles)
    story = [
        *_title_section(run, title, plan, styles),
        *_question_and_data(run, plan, styles),
        *_method(run, plan, styles),
        *_results(run, plan, styles),
        *_baseline_comparison(run, styles),
        *_anchors(run, styles),
        *_error_analysis(run, plan, styles),
        *_external_check(run, styles),
        Paragraph("8. Discussion", styles["heading"]),
        *(_paragraph(text, styles) for text in _discussion(run)),
        # A list does not keep with its heading by itself: together, or the heading can end a page.
        KeepTogether([Paragraph("9. Limitations", styles["heading"]), _bullets(_limitations(run.metrics), styles)]),
        _Barrier(),
        KeepTogether([Paragraph(DISCLAIMER, styles["notice"])]),  # a boxed paragraph must not split
        *_run_details(run, styles),
    ]
    run_name = run.metrics.get("run", {}).get("name") or ""
    footer = _footer(title, run_name)
    with atomic_path(output_pdf) as temporary:
        document = _StudyDocument(
            str(temporary), pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
            bottomMargin=MARGIN, title=title, subject=f"Run {run_name}", author="bone-age pipeline",
            pageCompression=1 if compress else 0,
        )
        document.empty_shares = empty_shares
        document.build(story, onFirstPage=footer, onLaterPages=footer)
    return output_pdf


def main(argv=None) -> Path | None:
    parser = argparse.ArgumentParser(description="Render the PDF report of a run's results folder.")
    parser.add_argument("results_dir", type=Path, help="results/<run_name> holding performance_metrics.json")
    parser.add_argument("--out", type=Path, default=None, help="PDF to write (default: RESULTS_DIR/Report.pdf)")
    parser.add_argument("--title", default=DEFAULT_TITLE)
    parser.add_argument("--markdown", action="store_true", help="print the results table in Markdown instead")
    arguments = parser.parse_args(argv)
    if arguments.markdown:
        print(results_markdown(read_metrics(arguments.results_dir / config.METRICS_FILE)), end="")
        return None
    output = build_report(arguments.results_dir, arguments.out or arguments.results_dir / "Report.pdf",
                          title=arguments.title)
    print(output)
    return output


if __name__ == "__main__":
    main()
