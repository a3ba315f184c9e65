"""Does a rerun reproduce a run? Compare two runs of the pipeline on the same test split.

  .venv/bin/python -m utils.pipeline --preset rsna100 -p run_name rsna100_rerun -p report_at_root false
  .venv/bin/python benchmarks/compare_runs.py rsna100 rsna100_rerun

Reads both runs with `utils.comparison.load_run` (performance_metrics.json and predictions_test.csv;
the predictions are not committed, as they hold RSNA labels, so both runs must have been made on
this machine) and their training_summary.json. Writes results/benchmarks/reproducibility.json:
for our model and the seed baseline, the headline metrics side by side, the paired bootstrap
interval of the MAE difference (`utils.comparison.mae_difference`, as a sweep's comparison
computes it), and, as an aside, the MAE of the two runs' averaged predictions (what a two-model
ensemble would give). Many runs at once: `python -m utils.pipeline --sweep ...` (README, Many runs).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

import numpy as np

from utils import comparison, config, evaluation
from utils.files import write_json_atomic

OUTPUT = config.benchmarks_dir() / "reproducibility.json"
HEADLINE = ("mae", "rmse", "bias", "within_12_pct", "pearson_r")
# model: (its column in predictions_test.csv, its key in performance_metrics.json, None for the top level)
MODELS = {"ours": ("boneage_pred", None), "seed_baseline": ("seed_baseline_pred", "seed_baseline")}
TRAINING = ("best_epoch", "best_val_mae", "stop_reason", "training_seconds")


def load_run(name: str) -> dict:
    try:
        run = comparison.load_run(name)
    except ValueError as error:
        raise SystemExit(f"{error}; run the pipeline with -p run_name {name} first") from None
    paths = config.RunPaths(name)
    if not paths.training_summary.exists():
        raise SystemExit(f"{paths.training_summary} missing; run the pipeline with -p run_name {name} first")
    return {"run": run, "training": json.loads(paths.training_summary.read_text())}


def training_record(run: dict, model: str) -> dict | None:
    summary = run["training"].get(model)
    return None if summary is None else {key: summary[key] for key in TRAINING} | {"epochs": len(summary["epoch"])}


def compare(run_a: dict, run_b: dict) -> dict:
    a, b = run_a["run"], run_b["run"]
    result = {}
    for model, (column, metrics_key) in MODELS.items():
        if column not in a.predictions or column not in b.predictions:
            continue
        difference = comparison.mae_difference(b, a, column)
        if difference is None:
            raise SystemExit("the two runs were scored on different test images: not the same split")
        pred_a, pred_b = (run.predictions[column].to_numpy(float) for run in (a, b))
        metrics_a, metrics_b = (run.metrics[metrics_key] if metrics_key else run.metrics for run in (a, b))
        result[model] = {
            "metrics": {key: {"a": metrics_a[key], "b": metrics_b[key], "b_minus_a": metrics_b[key] - metrics_a[key]} for key in HEADLINE},
            "mae_difference_paired_bootstrap": difference,
            "prediction_difference_sd_months": float(np.std(pred_b - pred_a)),
            "training": {"a": training_record(run_a, model), "b": training_record(run_b, model)},
            "averaged_predictions": evaluation.regression_metrics(a.predictions["boneage"].to_numpy(float),
                                                                  (pred_a + pred_b) / 2),
        }
    if "ours" in result:
        result["ours"]["interval_coverage_pct"] = {
            name: run.metrics["prediction_interval"]["coverage_pct"] for name, run in (("a", a), ("b", b))
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", help="a run name under results/, e.g. rsna100")
    parser.add_argument("run_b", help="its rerun, e.g. rsna100_rerun")
    arguments = parser.parse_args()
    run_a, run_b = load_run(arguments.run_a), load_run(arguments.run_b)
    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_a": {"name": arguments.run_a, "git_commit": run_a["run"].metrics["run"]["git_commit"]},
        "run_b": {"name": arguments.run_b, "git_commit": run_b["run"].metrics["run"]["git_commit"]},
        **compare(run_a, run_b),
    }
    write_json_atomic(OUTPUT, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
