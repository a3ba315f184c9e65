"""utils.comparison and notebooks/06_comparison: runs side by side, over seeds and folds, paired against a reference."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from utils import comparison, config, evaluation, pipeline
from utils.files import atomic_path
from utils.parameters import load_parameters

N = 120


def fake_run(name, *, seed=1, fold=1, folds=1, noise=10.0, bias=0.0, ids=None, source="synthetic-a", truth_seed=0):
    """A run as stage 04 leaves it (performance_metrics.json, predictions_test.csv), without training."""
    ids = np.arange(N) if ids is None else np.asarray(ids)
    y_true = np.random.default_rng(truth_seed).uniform(10, 220, 1000)[ids]
    y_pred = y_true + bias + np.random.default_rng(seed * 100 + fold).normal(0, noise, ids.size)
    low, high = y_pred - 15, y_pred + 15
    male = ids % 2 == 0
    parameters = load_parameters("ci", {"run_name": name, "seed": seed, "fold": fold, "folds": folds}).to_dict()
    metrics = evaluation.build_performance_metrics(
        parameters=parameters, dataset_name="synthetic", dataset_source=source,
        split_counts={"train": 500, "validation": 50, "calibration": 30, "test": int(ids.size)},
        model_info={"architecture": "ours", "parameters_count": 1, "image_size": 48, "path": "x"},
        y_true=y_true, y_pred=y_pred, male=male, train_ages=y_true, interval=(low, high),
        interval_method="mondrian", interval_nominal=0.9,
        timing={key: 1.0 for key in evaluation.TIMING_KEYS})
    paths = config.RunPaths(name)
    paths.results.mkdir(parents=True, exist_ok=True)
    evaluation.write_performance_metrics(paths.metrics, metrics)
    frame = pd.DataFrame({"id": [f"{identifier:04d}" for identifier in ids], "boneage": y_true, "male": male,
                          "boneage_pred": y_pred, "boneage_low": low, "boneage_high": high,
                          "quality_score": 0.5, "quality_flag": "ok"})
    with atomic_path(paths.predictions) as temporary:
        frame.to_csv(temporary, index=False)
    return comparison.load_run(name)


def test_the_table_holds_each_runs_metrics_and_the_paired_difference():
    runs = [fake_run("cmp-seed1", seed=1), fake_run("cmp-seed2", seed=2, noise=13.0)]
    table = comparison.comparison_table(runs)
    assert table.attrs["varying"] == ["seed"] and table.attrs["reference"] == "cmp-seed1"
    for run, row in zip(runs, table.to_dict("records")):
        for key in comparison.HEADLINE:
            assert row[key] == run.metrics[key], key
        assert (row["mae_low"], row["mae_high"]) == (run.metrics["ci"]["mae"]["low"], run.metrics["ci"]["mae"]["high"])
        assert row["interval_coverage_pct"] == run.metrics["prediction_interval"]["coverage_pct"]
    reference, other = runs[0].predictions, runs[1].predictions
    expected = evaluation.paired_mae_difference(reference["boneage"], reference["boneage_pred"], other["boneage_pred"])
    second = table.iloc[1]
    assert second["mae_vs_reference"] == pytest.approx(runs[1].metrics["mae"] - runs[0].metrics["mae"])
    assert (second["mae_vs_reference_low"], second["mae_vs_reference_high"]) == (expected["low"], expected["high"])
    assert table.iloc[0]["mae_vs_reference"] == table.iloc[0]["mae_vs_reference_low"] == 0.0


def test_the_paired_interval_is_scipys_paired_bootstrap():
    from scipy import stats

    runs = [fake_run("scipy-a", seed=1), fake_run("scipy-b", seed=2, bias=3.0)]
    difference = comparison.mae_difference(runs[1], runs[0])
    a, b = (np.abs(run.predictions["boneage_pred"] - run.predictions["boneage"]).to_numpy() for run in runs)
    result = stats.bootstrap((a, b), lambda a, b, axis: b.mean(axis) - a.mean(axis), paired=True, vectorized=True,
                             n_resamples=evaluation.CI_RESAMPLES, method="percentile",
                             rng=np.random.default_rng(evaluation.CI_SEED))
    assert (difference["low"], difference["high"]) == pytest.approx(tuple(result.confidence_interval), abs=1e-12)
    assert difference["low"] < difference["difference"] < difference["high"]


def test_runs_scored_on_other_images_get_no_paired_difference():
    runs = [fake_run("other-a"), fake_run("other-b", seed=2, source="synthetic-b", truth_seed=1)]
    row = comparison.comparison_table(runs).iloc[1]
    assert comparison.mae_difference(runs[1], runs[0]) is None and math.isnan(row["mae_vs_reference"])
    with pytest.raises(ValueError, match="reference run 'nope' is not among"):
        comparison.comparison_table(runs, reference="nope")
    with pytest.raises(ValueError, match="run 'never-ran': performance_metrics.json, predictions_test.csv missing"):
        comparison.load_run("never-ran")


def test_mean_and_sd_over_seeds_per_combination_of_the_other_values():
    runs = [fake_run(f"ms-seed{seed}", seed=seed) for seed in (1, 2, 3)]
    seeds = comparison.over_seeds(comparison.comparison_table(runs))
    maes = [run.metrics["mae"] for run in runs]
    assert len(seeds) == 1 and seeds.iloc[0]["runs"] == 3 and seeds.iloc[0]["seeds"] == "1, 2, 3"
    assert seeds.iloc[0]["mae_mean"] == pytest.approx(np.mean(maes))
    assert seeds.iloc[0]["mae_sd"] == pytest.approx(np.std(maes, ddof=1))
    assert comparison.over_seeds(comparison.comparison_table(runs[:1] + [fake_run("ms-bias", bias=2.0)])) is None


def test_pooled_out_of_fold_metrics_cover_every_image_once():
    folds = 3
    order = np.random.default_rng(5).permutation(N)
    runs = [fake_run(f"cv-fold{fold}", fold=fold, folds=folds, ids=np.sort(order[fold - 1::folds]))
            for fold in range(1, folds + 1)]
    pooled = comparison.pooled_out_of_fold(runs)
    assert len(pooled) == 1 and pooled.iloc[0]["n"] == N and pooled.iloc[0]["folds_present"] == folds
    everything = pd.concat([run.predictions for run in runs])
    expected = evaluation.regression_metrics(everything["boneage"], everything["boneage_pred"])
    assert pooled.iloc[0]["mae"] == pytest.approx(expected["mae"])
    assert pooled.iloc[0]["mae_low"] < pooled.iloc[0]["mae"] < pooled.iloc[0]["mae_high"]
    overlapping = runs[:2] + [fake_run("cv-fold3-overlap", fold=3, folds=folds, ids=order[:40])]
    with pytest.raises(ValueError, match="test folds overlap"):
        comparison.pooled_out_of_fold(overlapping)


def test_markdown_shows_every_run_and_the_reference():
    runs = [fake_run("md-seed1", seed=1), fake_run("md-seed2", seed=2)]
    table = comparison.comparison_table(runs)
    text = comparison.to_markdown(table, comparison.over_seeds(table), title="Comparison: md")
    assert text.startswith("# Comparison: md") and "`md-seed1`" in text and "`md-seed2`" in text
    assert f"{runs[1].metrics['mae']:.2f} (" in text and "## Mean and SD over seeds" in text
    assert "that of `md-seed1`" in text


@pytest.mark.slow
def test_the_comparison_notebook_writes_its_table_markdown_and_figure():
    runs = [fake_run("nb-seed1", seed=1), fake_run("nb-seed2", seed=2)]
    pipeline.ensure_kernel()
    paths = config.RunPaths("nb-sweep")
    pipeline.execute_notebook(pipeline.COMPARISON_NOTEBOOK, paths.notebook(pipeline.COMPARISON),
                              {"sweep": "nb-sweep", "runs": [run.name for run in runs], "reference": None}, 300)
    written = pd.read_csv(paths.comparison_table)
    for run, row in zip(runs, written.to_dict("records")):
        assert row["run"] == run.name and row["mae"] == run.metrics["mae"] and row["rmse"] == run.metrics["rmse"]
    assert "## Mean and SD over seeds" in paths.comparison_markdown.read_text()
    assert paths.figure("mae_per_run.png").stat().st_size > 5_000
    assert paths.notebook(pipeline.COMPARISON).with_suffix(".html").exists()
    shown = json.loads(paths.notebook(pipeline.COMPARISON).read_text())
    assert any("image/png" in output.get("data", {}) for cell in shown["cells"] if cell["cell_type"] == "code"
               for output in cell.get("outputs", []))
