"""The PDF report of a run, rendered with reportlab from its results folder.

Reads `performance_metrics.json` and the PNG figures a run saved; needs neither a browser
nor LaTeX. Usage: python -m utils.report RESULTS_DIR [--out PDF]
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.lib.utils import ImageReader
from reportlab.platypus import (Image, KeepTogether, ListFlowable, ListItem, PageBreak, Paragraph,
                                SimpleDocTemplate, Spacer, Table, TableStyle)

from utils import config, figures
from utils.files import atomic_path
from utils.parameters import normalise_tta

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


def read_metrics(path) -> dict:
    """The parsed performance_metrics.json; ValueError naming the file if absent or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: metrics file not found (run the evaluation step first)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(metrics, dict) or metrics.get("schema_version") != 1:
        found = metrics.get("schema_version") if isinstance(metrics, dict) else type(metrics).__name__
        raise ValueError(f"{path}: expected schema_version 1, found {found!r}")
    return metrics


def _styles() -> dict:
    sheet = getSampleStyleSheet()
    return {
        "title": sheet["Title"],
        "heading": ParagraphStyle("heading", parent=sheet["Heading2"], spaceBefore=10, spaceAfter=4,
                                  keepWithNext=1),
        "subheading": ParagraphStyle("subheading", parent=sheet["Heading4"], spaceBefore=6, spaceAfter=3,
                                     keepWithNext=1),
        "body": ParagraphStyle("body", parent=sheet["BodyText"], fontSize=9.5, leading=12.5, spaceAfter=4),
        "cell": ParagraphStyle("cell", parent=sheet["BodyText"], fontSize=8.5, leading=10.5),
        "header": ParagraphStyle("header", parent=sheet["BodyText"], fontName="Helvetica-Bold",
                                 fontSize=8.5, leading=10.5),
        "caption": ParagraphStyle("caption", parent=sheet["BodyText"], fontName="Helvetica-Oblique",
                                  fontSize=8.5, leading=10.5, alignment=TA_CENTER, spaceAfter=10),
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


def _title_section(metrics: dict, title: str, styles) -> list:
    run, dataset, model = metrics.get("run", {}), metrics.get("dataset", {}), metrics.get("model", {})
    versions = run.get("library_versions") or {}
    rows = [
        ["Item", "Value"],
        ["Run name", run.get("name") or DASH],
        ["Preset", run.get("preset") or DASH],
        ["Dataset", " ".join(filter(None, [dataset.get("name"), f"({dataset['source']})"
                                            if dataset.get("source") else None])) or DASH],
        ["Model file", model.get("path") or DASH],
        ["Run date", _created(run)],
        ["Git commit", run.get("git_commit") or DASH],
        ["Library versions", ", ".join(f"{name} {version}" for name, version in versions.items()) or DASH],
    ]
    return [
        Paragraph(escape(title), styles["title"]),
        Paragraph("<b>Research use only.</b> Not a medical device; not for clinical decisions "
                  "(see the disclaimer at the end).", styles["notice"]),
        Paragraph("Run", styles["heading"]),
        _table(rows, [3.5 * cm, TEXT_WIDTH - 3.5 * cm], styles, numeric_from=2),
    ]


def _data_section(metrics: dict, styles) -> list:
    dataset = metrics.get("dataset", {})
    splits = dataset.get("splits") or {}
    total = dataset.get("n_images")
    if _missing(total) and splits:
        total = sum(value for value in splits.values() if not _missing(value))
    text = (f"Data set: {dataset.get('name') or 'not recorded'}"
            + (f", read from {dataset['source']}" if dataset.get("source") else "")
            + ("" if _missing(total) else f"; {_count(total)} images") + ".")
    if splits:
        text += (" The images are divided at random into the splits below. The calibration split is used only "
                 "to size the prediction intervals; every number in the results comes from the test split, "
                 "which took no part in training or model selection.")
    story = [Paragraph("Data", styles["heading"]), _paragraph(text, styles)]
    if splits:
        rows = [["Split", *splits, "total"],
                ["images", *(_count(value) for value in splits.values()), _count(total)]]
        width = TEXT_WIDTH / (len(splits) + 2)
        story.append(_table(rows, [width] * (len(splits) + 2), styles))
    by_sex = metrics.get("by_sex") or {}
    by_band = metrics.get("by_age_band") or {}
    composition = []
    if by_sex:
        composition.append(" and ".join(f"{_count(entry.get('n'))} {sex}" for sex, entry in by_sex.items()))
    if by_band:
        composition.append("by bone-age band: " + ", ".join(
            f"{band} {_count(entry.get('n'))}" for band, entry in by_band.items()))
    if composition:
        story += [Spacer(1, 4), _paragraph(f"Test split ({_count(metrics.get('n'))} images): "
                                           + "; ".join(composition) + ".", styles)]
    return story


def _method_section(metrics: dict, styles) -> list:
    parameters = metrics.get("run", {}).get("parameters") or {}
    model = metrics.get("model", {})
    interval = metrics.get("prediction_interval") or {}
    size = model.get("image_size") or parameters.get("image_size")
    sentences = []
    geometry = {True: "padded to a square so that the aspect ratio is kept",
                False: "used as stored, without padding (the aspect ratio is not corrected)"}.get(
        parameters.get("pad_to_square"), "brought to a square")
    contrast = CONTRAST_DESCRIPTIONS.get(parameters.get("contrast"), "a contrast normalisation")
    sentences.append(f"Input: each radiograph is read as 8-bit grayscale, {geometry}, processed with "
                     f"{contrast} and resized to "
                     + (f"{size} x {size} pixels." if size else "the network's input size."))
    architecture = model.get("architecture") or parameters.get("architecture")
    count = model.get("parameters_count")
    sentences.append((f"Network: the '{architecture}' convolutional network" if architecture
                      else "Network: a convolutional network")
                     + (f" with {count:,} parameters" if not _missing(count) else "")
                     + ". The patient's sex enters as a second input (0 female, 1 male) next to the image, "
                     "and the output is bone age in months.")
    augment = parameters.get("augment")
    if augment is not None:
        sentences.append("Augmentation: random augmentation layers perturb the training images (inactive at "
                         "inference)." if augment else "Augmentation: none.")
    loss = parameters.get("loss")
    budget = [f"up to {parameters['epochs']} epochs" if parameters.get("epochs") else None,
              f"batch size {parameters['batch_size']}" if parameters.get("batch_size") else None,
              f"learning rate {parameters['learning_rate']}" if parameters.get("learning_rate") else None]
    budget = ", ".join(filter(None, budget))
    sentences.append("Training: regression of bone age" + (f" with the {loss} loss" if loss else "")
                     + (f"; {budget}" if budget else "")
                     + (f"; early stopping after {parameters['patience']} epochs without improvement of the "
                        "validation MAE" if parameters.get("patience") else "")
                     + "; the weights of the best validation epoch are kept.")
    tta = normalise_tta(parameters.get("tta") or "none")
    if tta != "none":
        sentences.append(f"Test-time augmentation: predictions are averaged over {TTA_VIEWS[tta]}.")
    if interval:
        nominal = interval.get("nominal_pct")
        calibration_count = (metrics.get("dataset", {}).get("splits") or {}).get("calibration")
        sentences.append(f"Prediction intervals: {interval.get('method') or 'conformal prediction'}"
                         + (f" at a nominal {_number(nominal, 0)}% coverage" if not _missing(nominal) else "")
                         + ", fitted on the calibration split"
                         + (f" ({_count(calibration_count)} images)" if not _missing(calibration_count) else "")
                         + " and evaluated on the test split.")
    comparison = "Comparisons: a mean predictor (the training-set mean age for every image)"
    if metrics.get("seed_baseline") is not None:
        comparison += " and the seed study's network, trained on the same split with the same budget"
    sentences.append(comparison + ".")
    story = [Paragraph("Method", styles["heading"]), *(_paragraph(text, styles) for text in sentences)]
    if parameters:
        items = list(parameters.items())
        half = (len(items) + 1) // 2
        rows = [["Parameter", "Value", "Parameter", "Value"]]
        for index in range(half):
            right = items[half + index] if half + index < len(items) else ("", "")
            rows.append([items[index][0], _plain(items[index][1]), right[0],
                         _plain(right[1]) if right[0] else ""])
        story += [Paragraph("Run parameters", styles["subheading"]),
                  _table(rows, [3.6 * cm, TEXT_WIDTH / 2 - 3.6 * cm] * 2, styles, numeric_from=4)]
    return story


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
    """The results table as text: a header, then one row per metric (ours, seed baseline, mean predictor)."""
    baseline = metrics.get("seed_baseline")
    interval = metrics.get("prediction_interval") or {}
    rows = [["Metric", "Ours", "Seed baseline", "Mean predictor"]]
    for label, key, digits, signed in RESULT_ROWS:
        mean_predictor = _number(metrics.get("baseline_mae_mean_predictor"), digits) if key == "mae" else DASH
        rows.append([label, _value(metrics, key, digits, signed), _value(baseline, key, digits, signed),
                     mean_predictor])
    nominal = interval.get("nominal_pct")
    nominal_text = "" if _missing(nominal) else f", nominal {_number(nominal, 0)}%"
    rows.append([f"Interval coverage (%){nominal_text}", _number(interval.get("coverage_pct")), DASH, DASH])
    rows.append(["Mean interval width (months)", _number(interval.get("mean_width")), DASH, DASH])
    return rows


def results_markdown(metrics: dict) -> str:
    """The same results table in Markdown, for the README."""
    rows = results_rows(metrics)
    lines = ["| " + " | ".join(rows[0]) + " |", "| --- |" + " ---: |" * (len(rows[0]) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def _results_table(metrics: dict, styles) -> Table:
    return _table(results_rows(metrics), [7.4 * cm, 3.2 * cm, 3.2 * cm, TEXT_WIDTH - 13.8 * cm], styles)


def _interval_record(entry) -> dict:
    """Interval results of one group: a {"coverage_pct", "mean_width", ...} record or a bare coverage."""
    return entry if isinstance(entry, dict) else {"coverage_pct": entry}


def _group_table(name: str, groups: dict, baseline_groups: dict | None, interval_groups: dict | None,
                 styles) -> Table:
    """Per-group metrics; the optional columns (baseline, intervals) only when some value exists."""
    baseline_groups, interval_groups = baseline_groups or {}, interval_groups or {}
    columns = [
        ("n", lambda group: _count(groups[group].get("n"))),
        ("MAE (months)", lambda group: _number(groups[group].get("mae"), 2)),
        ("Bias (months)", lambda group: _number(groups[group].get("bias"), 2, signed=True)),
        ("Within 12 months (%)", lambda group: _number(groups[group].get("within_12_pct"))),
        ("Seed baseline MAE (months)", lambda group: _number((baseline_groups.get(group) or {}).get("mae"), 2)),
        ("Interval coverage (%)", lambda group: _number(
            _interval_record(interval_groups.get(group)).get("coverage_pct"))),
        ("Interval width (months)", lambda group: _number(
            _interval_record(interval_groups.get(group)).get("mean_width"))),
    ]
    body = [[label, [cell(group) for group in groups]] for label, cell in columns]
    body = [column for index, column in enumerate(body) if index < 4 or any(cell != DASH for cell in column[1])]
    rows = [[name, *(label for label, _ in body)]]
    rows += [[group, *(column[1][row] for column in body)] for row, group in enumerate(groups)]
    first = 2.4 * cm
    return _table(rows, [first] + [(TEXT_WIDTH - first) / len(body)] * len(body), styles)


def _results_section(metrics: dict, styles) -> list:
    baseline = metrics.get("seed_baseline") or {}
    interval = metrics.get("prediction_interval") or {}
    story = [Paragraph("Results (test split)", styles["heading"]), _results_table(metrics, styles)]
    if metrics.get("by_age_band"):
        story += [Paragraph("By bone-age band", styles["subheading"]),
                  _group_table("Band", metrics["by_age_band"], baseline.get("by_age_band"),
                               interval.get("by_age_band"), styles)]
    if metrics.get("by_sex"):
        story += [Paragraph("By sex", styles["subheading"]),
                  _group_table("Sex", metrics["by_sex"], baseline.get("by_sex"), interval.get("by_sex"), styles)]
    trend = metrics.get("regression_to_mean") or {}
    if not _missing(trend.get("slope")):
        story += [Spacer(1, 6), _paragraph(
            f"Regression to the mean: a straight-line fit of the residual (predicted - true) on true age has "
            f"slope {_number(trend['slope'], 3, signed=True)} months per month and intercept "
            f"{_number(trend.get('intercept'), 1, signed=True)} months. A negative slope means the youngest "
            "children are over-estimated and the oldest under-estimated (predictions pulled towards the mean).",
            styles)]
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


def _figure(path: Path, caption: str, number: int, styles) -> KeepTogether:
    """A figure scaled to the text width and at most FIGURE_MAX_HEIGHT, with its caption."""
    pixel_width, pixel_height = ImageReader(str(path)).getSize()
    scale = min(TEXT_WIDTH / pixel_width, FIGURE_MAX_HEIGHT / pixel_height)
    image = Image(str(path), width=pixel_width * scale, height=pixel_height * scale)
    return KeepTogether([image, Paragraph(f"<b>Figure {number}.</b> {escape(caption)}", styles["caption"])])


def _figures_section(figures_dir: Path, styles) -> list:
    """The report's figures of the registry (utils/figures.py), in its order, where the run drew them."""
    present = [figure for figure in figures.in_report() if (figures_dir / figure.file_name).is_file()]
    if not present:
        return []
    return [PageBreak(), Paragraph("Figures", styles["heading"])] + [
        _figure(figures_dir / figure.file_name, f"{figure.title}. {figure.caption}", number, styles)
        for number, figure in enumerate(present, start=1)]


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
    items.append("No external validation: the test split is held out from the same data set (same source, "
                 "population and acquisition). Accuracy on other hospitals, scanners or populations is unknown.")
    small = [band for band, entry in (metrics.get("by_age_band") or {}).items()
             if not _missing(entry.get("n")) and entry["n"] < 30]
    if small:
        items.append(f"Few test images in the band(s) {', '.join(small)} (fewer than 30 each): their "
                     "per-band figures are imprecise.")
    return items


DISCLAIMER = ("<b>Medical disclaimer.</b> This report and the software that produced it are for research use "
              "only. They are not a medical device, have not been cleared or approved by any regulator, and "
              "must not be used for diagnosis, treatment or any other clinical decision. Bone-age assessment "
              "for patient care must be made by a qualified clinician.")


def _footer(title: str, run_name: str):
    def draw(canvas, document):
        canvas.saveState()
        canvas.setFont("Helvetica", 8)
        canvas.setFillColor(colors.HexColor("#555555"))
        canvas.drawString(MARGIN, 1.2 * cm, f"{title} {DASH} {run_name}" if run_name else title)
        canvas.drawRightString(A4[0] - MARGIN, 1.2 * cm, f"Page {document.page}")
        canvas.restoreState()

    return draw


def build_report(results_dir, output_pdf, *, title: str = DEFAULT_TITLE, compress: bool = True) -> Path:
    """Render the run in `results_dir` as an A4 PDF at `output_pdf` (written atomically).

    `compress=False` leaves page streams uncompressed so that tests can find the text in the file.
    """
    results_dir = Path(results_dir)
    output_pdf = Path(output_pdf)
    metrics = read_metrics(results_dir / config.METRICS_FILE)
    styles = _styles()
    story = [
        *_title_section(metrics, title, styles),
        *_data_section(metrics, styles),
        *_method_section(metrics, styles),
        *_results_section(metrics, styles),
        *_figures_section(results_dir / "figures", styles),
        Paragraph("Limitations", styles["heading"]),
        _bullets(_limitations(metrics), styles),
        KeepTogether([Paragraph(DISCLAIMER, styles["notice"])]),  # a boxed paragraph must not split
    ]
    run_name = metrics.get("run", {}).get("name") or ""
    footer = _footer(title, run_name)
    with atomic_path(output_pdf) as temporary:
        document = SimpleDocTemplate(
            str(temporary), pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
            bottomMargin=MARGIN, title=title, subject=f"Run {run_name}", author="bone-age pipeline",
            pageCompression=1 if compress else 0,
        )
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
