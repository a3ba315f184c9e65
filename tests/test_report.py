"""The PDF report renders a results folder: valid PDF, the numbers inside, clear errors."""

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from utils import plots, report
from utils.parameters import load_parameters

BANDS = ["0-2 y", "2-5 y", "5-10 y", "10-15 y", "15-19 y"]


def fake_metrics(dataset_name="rsna-bone-age-100", seed_baseline=True) -> dict:
    """A performance_metrics.json following schema_version 1 (no intervals), with recognisable values."""
    flat = {"n": 1593, "mae": 11.37, "rmse": 14.91, "mse": 222.3, "pearson_r": 0.947, "r2": 0.896,
            "bias": -0.83, "within_6_pct": 34.1, "within_12_pct": 61.9, "within_18_pct": 79.4, "within_24_pct": 89.2}
    by_band = {band: {"n": n, "mae": mae, "bias": 1.5, "within_12_pct": 60.0}
               for band, n, mae in zip(BANDS, [1, 150, 500, 800, 142], [17.25, 10.5, 11.0, 11.9, 13.2])}
    baseline = dict(flat, mae=14.56, rmse=18.2, by_age_band={band: {"n": 1, "mae": 16.0} for band in BANDS})
    return {
        "schema_version": 1,
        "run": {"name": "rsna100", "preset": "rsna100", "git_commit": "0123456789abcdef",
                "created_utc": "2025-11-26T20:30:00+00:00",
                "library_versions": {"tensorflow": "2.21.0", "keras": "3.15.1", "numpy": "2.4.6"},
                "parameters": {"dataset": "../shared/data/rsna-bone-age-100", "image_size": 96,
                               "pad_to_square": False, "contrast": "clahe", "epochs": 60, "batch_size": 32,
                               "learning_rate": 0.001, "patience": 10, "augment": True, "seed": 42,
                               "split_fractions": {"train": 0.7, "validation": 0.1, "calibration": 0.05,
                                                   "test": 0.15}}},
        "dataset": {"name": dataset_name, "source": f"../shared/data/{dataset_name}", "n_images": 10617,
                    "splits": {"train": 7431, "validation": 1062, "calibration": 531, "test": 1593}},
        "model": {"architecture": "ours", "parameters_count": 1234567, "image_size": 96,
                  "path": "models/rsna100/bone_age.keras"},
        **flat,
        "baseline_mae_mean_predictor": 33.52,
        "by_age_band": by_band,
        "by_sex": {"female": {"n": 730, "mae": 11.1, "bias": -0.5, "within_12_pct": 63.0},
                   "male": {"n": 863, "mae": 11.6, "bias": -1.1, "within_12_pct": 60.9}},
        "prediction_interval": {"method": "split conformal, absolute residual", "nominal_pct": 90.0,
                                "coverage_pct": 89.64, "mean_width": 46.8,
                                "by_age_band": {band: {"n": 10, "coverage_pct": 87.5, "mean_width": 40.0}
                                                for band in BANDS}},
        "regression_to_mean": {"slope": -0.061, "intercept": 6.4},
        "seed_baseline": baseline if seed_baseline else None,
        "timing": {"training_seconds": 1800.0, "training_images_per_second": 210.0,
                   "inference_images_per_second": 900.0, "inference_seconds_single_image": 0.021},
    }


def make_results(folder, metrics, figures=("bland_altman.png", "metrics_by_band.png", "extra_plot.png")):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "performance_metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    y_true = np.linspace(0, 228, 60)
    for index, name in enumerate(figures):
        figure = plots.bland_altman(y_true, y_true + index * np.sin(y_true))  # distinct images
        plots.save_figure(figure, folder / "figures" / name, dpi=40)
        plt.close(figure)
    return folder


def page_count(pdf: bytes) -> int:
    return len(re.findall(rb"/Type /Page\b", pdf))


def pdf_text(pdf: bytes) -> bytes:
    """The strings drawn on the pages of an uncompressed PDF, one line after the other."""
    return b" ".join(re.findall(rb"\((.*?)(?<!\\)\) Tj", pdf))


def test_report_is_a_pdf_holding_the_metrics(tmp_path):
    results = make_results(tmp_path / "run", fake_metrics())
    output = report.build_report(results, tmp_path / "out" / "Report.pdf", compress=False)
    pdf = output.read_bytes()
    text = pdf_text(pdf)
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF")
    assert page_count(pdf) >= 3  # text pages, then a page break before the figures
    for value in [b"11.37", b"14.91", b"-0.83", b"0.947", b"0.896", b"61.9", b"89.2",  # ours
                 b"14.56", b"33.52", b"89.6", b"46.8",  # seed baseline, mean predictor, intervals
                 b"17.25", b"1,593", b"rsna100", b"0123456789abcdef", b"tensorflow 2.21.0"]:
        assert value in text, value
    assert b"Page 3" in text
    assert b"100 x 100 pixel thumbnails" in text and b"not a medical device" in text
    assert list((tmp_path / "out").iterdir()) == [output]  # no temporary left


def test_figures_of_the_registry_in_its_order_with_their_captions(tmp_path):
    from utils import figures

    results = make_results(tmp_path / "run", fake_metrics(), figures=("metrics_by_band.png", "bland_altman.png",
                                                                      "sample_grid.png", "extra_plot.png"))
    pdf = report.build_report(results, tmp_path / "Report.pdf", compress=False).read_bytes()
    bland = pdf.index(figures.get("bland_altman").title.encode())
    band = pdf.index(figures.get("metrics_by_band").title.encode())
    assert bland < band  # the registry's reading order, not the files' names
    # Only the registry's report figures: not the sample grid (report=False), not an unknown file.
    assert b"extra_plot" not in pdf and figures.get("sample_grid").title.encode() not in pdf
    assert len(re.findall(rb"/FormXob\.\w+ Do", pdf)) == 2  # images drawn on the pages


def test_missing_seed_baseline_shows_dashes_and_synthetic_limitation(tmp_path):
    metrics = fake_metrics(dataset_name="synthetic", seed_baseline=False)
    results = make_results(tmp_path / "run", metrics, figures=())
    pdf = report.build_report(results, tmp_path / "Report.pdf", compress=False).read_bytes()
    text = pdf_text(pdf)
    assert b"not evidence about accuracy on real radiographs" in text
    assert b"thumbnails" not in text
    assert b"Seed baseline MAE" not in text  # the all-empty column is dropped from the band table
    assert not re.findall(rb"/FormXob\.\w+ Do", pdf)


def test_compressed_report_is_smaller_and_valid(tmp_path):
    results = make_results(tmp_path / "run", fake_metrics(), figures=())
    compressed = report.build_report(results, tmp_path / "a.pdf").read_bytes()
    plain = report.build_report(results, tmp_path / "b.pdf", compress=False).read_bytes()
    assert compressed.startswith(b"%PDF") and len(compressed) < len(plain)
    assert b"11.37" not in compressed


def test_missing_metrics_file_names_the_path(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "performance_metrics.json"))):
        report.build_report(tmp_path, tmp_path / "Report.pdf")
    assert not (tmp_path / "Report.pdf").exists()


def test_wrong_schema_version_is_refused(tmp_path):
    (tmp_path / "performance_metrics.json").write_text(json.dumps({"schema_version": 3}), encoding="utf-8")
    with pytest.raises(ValueError, match="expected schema_version 1 or 2, found 3"):
        report.build_report(tmp_path, tmp_path / "Report.pdf")


def test_command_line_writes_report_in_results_folder(tmp_path, capsys):
    results = make_results(tmp_path / "run", fake_metrics(), figures=())
    output = report.main([str(results)])
    assert output == results / "Report.pdf" and output.read_bytes().startswith(b"%PDF")
    assert str(output) in capsys.readouterr().out


# --- the report as a study (schema version 2, with the findings of stage 05) --------------------


def study_metrics(seed_baseline=True, dataset_name="rsna-bone-age-100") -> dict:
    """A schema-version-2 metrics file built by utils.evaluation, with intervals everywhere."""
    from utils import conformal, evaluation

    rng = np.random.default_rng(4)
    truth = rng.uniform(1, 228, 400)
    predicted = truth + rng.normal(0, 10, 400) - 0.07 * (truth - 120)
    intervals = conformal.fit_conformal(truth[:200], predicted[:200])
    return evaluation.build_performance_metrics(
        parameters={"run_name": "study", "preset": "rsna100", "dataset": f"../shared/data/{dataset_name}",
                    "image_size": 96, "pad_to_square": False, "contrast": "clahe", "hand_crop": "none",
                    "architecture": "ours", "widths": [32, 64], "loss": "huber", "huber_delta": 0.25, "epochs": 40,
                    "augment": True, "tta": "shift", "interval_coverage": 0.9},
        dataset_name=dataset_name, dataset_source=f"../shared/data/{dataset_name}",
        split_counts={"train": 1400, "validation": 200, "calibration": 100, "test": 400},
        model_info={"architecture": "ours", "parameters_count": 1234567, "image_size": 96, "path": "m.keras"},
        y_true=truth, y_pred=predicted, male=rng.random(400) < 0.5, train_ages=rng.uniform(1, 228, 300),
        interval=intervals.interval(predicted), interval_method=intervals.method, interval_nominal=0.9,
        timing={key: 1.0 for key in evaluation.TIMING_KEYS},
        baseline_pred=truth + rng.normal(4, 18, 400) if seed_baseline else None,
    )


def study_results(folder, metrics, external=True, figures=("age_distribution.png", "bland_altman.png",
                                                           "worst_cases.png", "gradcam.png")):
    import pandas as pd

    from utils import evaluation

    make_results(folder, metrics, figures=figures)
    rng = np.random.default_rng(5)
    truth = rng.uniform(1, 228, 100)
    predicted = truth + rng.normal(0, 10, 100)
    predictions = pd.DataFrame({"id": [str(i) for i in range(100)], "boneage": truth, "male": rng.random(100) < 0.5,
                                "boneage_pred": predicted, "boneage_low": predicted - 20, "boneage_high": predicted + 20,
                                "quality_flag": np.where(np.arange(100) < 4, "unusual", "ok")})
    findings = evaluation.error_analysis_findings(predictions, worst_ids=["1", "2"], gallery_ids=["3", "4"],
                                                  gradcam={"cases": 15, "mode": "signed", "blank_signed": 0,
                                                           "blank_classic": 6})
    (folder / "error_analysis.json").write_text(json.dumps(findings), encoding="utf-8")
    check = (evaluation.external_check(truth[:20], predicted[:20], predicted[:20] - 20, predicted[:20] + 20,
                                       ids=range(20), labels="six readers") if external
             else evaluation.external_check_skipped("the sample folder is not here"))
    (folder / "external_check.json").write_text(json.dumps(check), encoding="utf-8")
    return folder


# The report figures a full study writes, in the registry's order.
STUDY_FIGURES = ("age_distribution.png", "learning_curves.png", "predicted_vs_true.png", "bland_altman.png",
                 "error_distribution.png", "metrics_by_band.png", "interval_coverage.png", "residuals_by_age.png",
                 "calibration.png", "worst_cases.png", "gradcam.png")


@pytest.fixture(scope="module")
def study_report(tmp_path_factory):
    """(metrics, pdf bytes, empty share of each page) of one full study's report, which several
    tests read (building one takes seconds)."""
    folder = tmp_path_factory.mktemp("study")
    metrics = study_metrics()
    results = study_results(folder / "run", metrics, figures=STUDY_FIGURES)
    shares = []
    pdf = report.build_report(results, folder / "Report.pdf", compress=False, empty_shares=shares).read_bytes()
    return metrics, pdf, shares


def test_the_report_reads_as_a_study_in_order(study_report):
    text = pdf_text(study_report[1])
    positions = [text.find(section.encode()) for section in report.SECTIONS]
    assert all(position >= 0 for position in positions), dict(zip(report.SECTIONS, positions))
    assert positions == sorted(positions), dict(zip(report.SECTIONS, positions))
    for anchor in [b"33.5", b"8.0-10.8", b"6.8", b"4.2", b"4.8-7.0"]:  # the published anchors table
        assert anchor in text, anchor


def test_the_numbers_carry_their_confidence_intervals(study_report):
    metrics, pdf, _ = study_report
    text = pdf_text(pdf)
    mae, coverage = metrics["ci"]["mae"], metrics["prediction_interval"]["ci"]["coverage_pct"]
    assert f"{mae['low']:.2f} to {mae['high']:.2f}".encode() in text  # the results table
    assert f"{coverage['low']:.1f} to {coverage['high']:.1f}".encode() in text
    band = metrics["by_age_band"]["5-10 y"]["ci"]["mae"]
    assert f"{band['low']:.1f} to {band['high']:.1f}".encode() in text  # the band table
    difference = metrics["seed_baseline"]["paired_mae_difference"]
    assert f"{difference['low']:+.2f} to {difference['high']:+.2f}".encode() in text  # the paired comparison
    assert b"like for like" in text


def test_figures_are_numbered_in_reading_order_and_cited_before_they_appear(study_report):
    pdf = study_report[1]
    text = pdf_text(pdf)
    from utils import figures

    count = len(STUDY_FIGURES)
    # Each caption opens with its number and the registry's title (a bare "Figure 5. " may be a citation).
    captions = [text.find(f"Figure {number}. {figures.get(Path(name).stem).title}".encode())
                for number, name in enumerate(STUDY_FIGURES, start=1)]
    assert all(position >= 0 for position in captions) and captions == sorted(captions), captions
    assert f"Figure {count + 1}. ".encode() not in text
    assert text.find(b"in Figure 1") < captions[0]  # the age distribution, cited from the data section
    assert b"Figure 1. Age distribution" in text and f"Figure {count}. Grad-CAM".encode() in text
    assert len(re.findall(rb"/FormXob\.\w+ Do", pdf)) == count


def test_the_findings_of_stage_05_reach_the_report(study_report):
    text = pdf_text(study_report[1])
    assert b"female MAE" in text and b"male bias" in text  # the sex x band table
    assert b"Quality flags: 4 of 100 test images" in text
    assert b"largest errors" in text and b"Regression towards the mean" in text
    assert b"6 would be blank" in text  # the Grad-CAM summary
    assert b"n = 20" in text and b"External check on six-reader labels" in text


def test_without_findings_external_check_or_baseline_the_report_says_so(tmp_path):
    metrics = study_metrics(seed_baseline=False, dataset_name="synthetic")
    results = study_results(tmp_path / "run", metrics, external=False, figures=())
    (results / "error_analysis.json").unlink()
    text = pdf_text(report.build_report(results, tmp_path / "Report.pdf", compress=False).read_bytes())
    assert b"Not run: the sample folder is not here" in text
    assert b"did not train the seed study" in text
    assert b"not in this" in text  # error_analysis.json missing
    assert b"none of the published figures is comparable" in text


def test_readme_table_gains_a_ci_column_with_schema_2_only():
    with_ci = report.results_markdown(study_metrics())
    assert with_ci.splitlines()[0] == "| Metric | Ours | 95% CI | Seed baseline | Mean predictor |"
    without = report.results_markdown(fake_metrics())
    assert without.splitlines()[0] == "| Metric | Ours | Seed baseline | Mean predictor |"


def test_figures_float_so_that_no_page_but_the_last_is_left_mostly_empty(study_report):
    shares = study_report[2]
    assert len(shares) >= 8
    assert max(shares[:-1]) < 0.35, [round(share, 2) for share in shares]


@pytest.mark.parametrize("refit, expected", [
    (False, "Our network kept epoch 12 (validation MAE 9.50 months) after 15 epochs"),
    (True, "Our network kept epoch 15 (the last; refitted on training and validation images, so its validation MAE "
           "of 8.10 months is in-sample) after 15 epochs")])
def test_training_paragraph_says_when_the_validation_mae_is_in_sample(tmp_path, refit, expected):
    summary = {"best_epoch": 15 if refit else 12, "best_val_mae": 8.1 if refit else 9.5, "epoch": list(range(1, 16)),
               "training_seconds": 600.0, "stop_reason": "epochs"}
    run = report._Run(metrics={"run": {"parameters": {"refit_on_validation": refit}}}, training={"ours": summary})
    text = report._training_paragraph(run, report._FigurePlan(tmp_path, styles=None))
    assert text.startswith(expected)


def test_method_names_repvgg_blocks_and_progressive_resizing():
    parameters = load_parameters("rsna100", {"block": "repvgg", "progressive_image_size": 64,
                                             "progressive_epochs": 5}).to_dict()
    run = report._Run(metrics={"run": {"parameters": parameters}, "model": {"architecture": "ours"}}, training={})
    items = dict(report._method_items(run))
    assert "RepVGG blocks (while training, a 3 x 3 and a 1 x 1 convolution" in items["Network."]
    assert "the first 5 epochs train on the images shrunk to 64 x 64 pixels" in items["Training."]
    plain = report._Run(metrics={"run": {"parameters": load_parameters("rsna100").to_dict()},
                                 "model": {"architecture": "ours"}}, training={})
    items = dict(report._method_items(plain))
    assert "3 x 3 convolutions with batch normalisation" in items["Network."] and "Progressive" not in items["Training."]


def test_a_dirty_run_names_its_uncommitted_changes(tmp_path):
    metrics = fake_metrics()
    metrics["run"].update(git_commit="0123456789abcdef-dirty", uncommitted_changes=["utils/model.py", "presets.yaml"])
    pdf = report.build_report(make_results(tmp_path / "run", metrics, figures=()), tmp_path / "Report.pdf",
                              compress=False).read_bytes()
    assert b"utils/model.py, presets.yaml" in pdf_text(pdf)
    clean = report.build_report(make_results(tmp_path / "clean", fake_metrics(), figures=()), tmp_path / "Clean.pdf",
                                compress=False).read_bytes()
    assert b"Uncommitted changes" not in pdf_text(clean)


def test_the_appendix_names_the_machine_a_run_trained_on(tmp_path):
    metrics = fake_metrics()
    metrics["run"]["machine"] = {"cpu": "Intel Xeon Processor", "logical_cpus": 2,
                                 "instruction_sets": ["avx2", "avx512f", "avx512_bf16"]}
    pdf = report.build_report(make_results(tmp_path / "run", metrics, figures=()), tmp_path / "Report.pdf",
                              compress=False).read_bytes()
    assert b"Intel Xeon Processor, 2 logical CPUs; avx2 avx512f avx512_bf16" in pdf_text(pdf)
    assert report._machine({"cpu": "arm64", "logical_cpus": 8, "instruction_sets": []}).endswith("no AVX2, AVX-512 or AMX")
    assert report._machine({"cpu": "arm64", "logical_cpus": 8, "instruction_sets": None}) == "arm64, 8 logical CPUs"
