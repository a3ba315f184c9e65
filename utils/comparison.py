"""Comparing runs: each run's headline metrics, the mean and SD over seeds, the pooled out-of-fold
metrics of a cross-validation, and each run's MAE minus a reference run's on the same test images.

The comparison notebook (notebooks/06_comparison.py), which a sweep executes after its runs
(`python -m utils.pipeline --sweep ...`), calls these, and so does benchmarks/compare_runs.py.
They read what stage 04 writes: `performance_metrics.json` and `predictions_test.csv` of each run.

comparison.csv, one row per run
-------------------------------
- ``run``; then each parameter whose value differs between the runs (``seed``, ``image_size``, ...);
- ``n``, ``mae``, ``rmse``, ``bias``, ``pearson_r``, ``r2``, ``within_12_pct``: the run's
  performance_metrics.json; ``mae_low``, ``mae_high``: its 95% bootstrap interval;
- ``interval_coverage_pct``, ``interval_mean_width``: its conformal prediction intervals;
- ``mae_vs_reference``, ``mae_vs_reference_low``, ``mae_vs_reference_high``: the run's MAE minus the
  reference run's on the same test images, with the paired bootstrap 95% interval
  (`evaluation.paired_mae_difference`); empty when the two were scored on other images (another
  data set or split: `data_seed`, `fold`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils import config, evaluation
from utils.files import atomic_path, write_text_atomic

HEADLINE = ("n", "mae", "rmse", "bias", "pearson_r", "r2", "within_12_pct")
# The numbers summarised over seeds (mean and SD), with their labels in comparison.md.
SUMMARISED = {"mae": "MAE", "rmse": "RMSE", "bias": "bias", "within_12_pct": "within 12 mo (%)",
              "interval_coverage_pct": "coverage (%)"}
# Parameters that differ between runs by construction, not as a condition of the comparison.
IGNORED_PARAMETERS = ("run_name",)


@dataclass(frozen=True)
class Run:
    """One run as stage 04 left it: its metrics file and its test predictions (indexed by id)."""

    name: str
    metrics: dict
    predictions: pd.DataFrame

    @property
    def parameters(self) -> dict:
        return self.metrics["run"]["parameters"]


def load_run(name: str) -> Run:
    """The run `name` of results/; a ValueError says which file is missing and what writes it."""
    paths = config.RunPaths(name)
    missing = [path.name for path in (paths.metrics, paths.predictions) if not path.exists()]
    if missing:
        raise ValueError(f"run {name!r}: {', '.join(missing)} missing in {paths.results}; "
                         "stage 04 of the run writes them")
    # In the file's order: the bootstrap draws images by position, as from the file itself.
    predictions = pd.read_csv(paths.predictions, dtype={"id": str}).set_index("id")
    return Run(name, json.loads(paths.metrics.read_text(encoding="utf-8")), predictions)


def varying_parameters(runs: list[Run]) -> list[str]:
    """The parameters whose values differ between the runs, in the order the runs record them."""
    names = dict.fromkeys(name for run in runs for name in run.parameters)
    return [name for name in names if name not in IGNORED_PARAMETERS
            and len({json.dumps(run.parameters.get(name), sort_keys=True) for run in runs}) > 1]


def same_test_images(run: Run, other: Run) -> bool:
    """Scored on the same images: the same data set folder, test ids and true ages."""
    if (run.metrics["dataset"]["source"] != other.metrics["dataset"]["source"]
            or not run.predictions.index.sort_values().equals(other.predictions.index.sort_values())):
        return False
    return np.array_equal(run.predictions.loc[other.predictions.index, "boneage"].to_numpy(),
                          other.predictions["boneage"].to_numpy())


def mae_difference(run: Run, reference: Run, column: str = "boneage_pred") -> dict | None:
    """`run`'s MAE minus `reference`'s on the same test images, with its paired bootstrap 95%
    interval (`evaluation.paired_mae_difference`); None when the two were scored on other images.
    `column` is the prediction column of predictions_test.csv (`seed_baseline_pred` for that model)."""
    if not same_test_images(run, reference):
        return None
    return evaluation.paired_mae_difference(reference.predictions["boneage"], reference.predictions[column],
                                            run.predictions.loc[reference.predictions.index, column])


def _cell(value):
    """A parameter's value in a table cell: lists and mappings as JSON, the rest as they are."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def comparison_table(runs: list[Run], reference: str | None = None) -> pd.DataFrame:
    """One row per run (the columns of comparison.csv, in this module's docstring); the paired
    differences are against `reference` (a run's name; default: the first run)."""
    if not runs:
        raise ValueError("no runs to compare")
    reference_run = _find(runs, reference)
    varying = varying_parameters(runs)
    rows = []
    for run in runs:
        metrics, interval = run.metrics, run.metrics["prediction_interval"]
        mae_ci = (metrics.get("ci") or {}).get("mae") or {}
        difference = mae_difference(run, reference_run) or {}
        rows.append({
            "run": run.name,
            **{name: _cell(run.parameters.get(name)) for name in varying},
            **{key: metrics[key] for key in HEADLINE},
            "mae_low": mae_ci.get("low", math.nan),
            "mae_high": mae_ci.get("high", math.nan),
            "interval_coverage_pct": interval["coverage_pct"],
            "interval_mean_width": interval["mean_width"],
            "mae_vs_reference": difference.get("difference", math.nan),
            "mae_vs_reference_low": _number(difference.get("low")),
            "mae_vs_reference_high": _number(difference.get("high")),
        })
    table = pd.DataFrame(rows)
    table.attrs.update(reference=reference_run.name, varying=varying)
    return table


def _find(runs: list[Run], name: str | None) -> Run:
    if name is None:
        return runs[0]
    for run in runs:
        if run.name == name:
            return run
    raise ValueError(f"reference run {name!r} is not among the compared runs: {', '.join(run.name for run in runs)}")


def _number(value) -> float:
    return math.nan if value is None else float(value)


def over_seeds(table: pd.DataFrame) -> pd.DataFrame | None:
    """Mean and SD (n - 1) of SUMMARISED over the seeds of each combination of the other varying
    parameters; None when the runs do not differ in `seed`."""
    varying = table.attrs["varying"]
    if "seed" not in varying:
        return None
    groups = [name for name in varying if name != "seed"]
    parts = table.groupby(groups, sort=False, dropna=False) if groups else [((), table)]
    rows = []
    for key, part in parts:
        key = key if isinstance(key, tuple) else (key,)
        row = {**dict(zip(groups, key)), "runs": len(part), "seeds": ", ".join(str(seed) for seed in part["seed"])}
        for column in SUMMARISED:
            row[f"{column}_mean"] = float(part[column].mean())
            row[f"{column}_sd"] = float(part[column].std(ddof=1)) if len(part) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def pooled_out_of_fold(runs: list[Run]) -> pd.DataFrame | None:
    """The metrics of the pooled test predictions of each cross-validation among the runs (runs
    that differ only in `fold`): every image predicted by the run whose test fold held it. None
    when the runs do not differ in `fold`; a ValueError when the test folds of a group overlap."""
    varying = varying_parameters(runs)
    if "fold" not in varying:
        return None
    groups = [name for name in varying if name != "fold"]
    members: dict[tuple, list[Run]] = {}
    for run in runs:
        members.setdefault(tuple(_cell(run.parameters.get(name)) for name in groups), []).append(run)
    rows = []
    for key, group in members.items():
        pooled = pd.concat([run.predictions for run in group])
        if pooled.index.duplicated().any() or len({run.metrics["dataset"]["source"] for run in group}) > 1:
            raise ValueError(f"runs {', '.join(run.name for run in group)}: their test folds overlap, so they are "
                             "not the folds of one cross-validation (one data set, data_seed and folds)")
        y_true, y_pred = pooled["boneage"].to_numpy(float), pooled["boneage_pred"].to_numpy(float)
        metrics = evaluation.regression_metrics(y_true, y_pred)
        mae_ci = evaluation.accuracy_ci(y_true, y_pred)["mae"] or {}
        coverage = evaluation.interval_metrics(y_true, pooled["boneage_low"], pooled["boneage_high"])
        rows.append({
            **dict(zip(groups, key)),
            "folds": group[0].parameters["folds"],
            "folds_present": len(group),
            **{name: metrics[name] for name in HEADLINE},
            "mae_low": mae_ci.get("low", math.nan),
            "mae_high": mae_ci.get("high", math.nan),
            "interval_coverage_pct": coverage["coverage_pct"],
        })
    return pd.DataFrame(rows)


def _signed(value, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.{digits}f}"


def _plain(value, digits: int = 2) -> str:
    if isinstance(value, (bool, np.bool_, str)) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def _range(low, high, signed: bool = False) -> str:
    if any(value is None or math.isnan(value) for value in (low, high)):
        return "—"
    text = _signed if signed else _plain
    return f"{text(low)} to {text(high)}"


def _markdown_table(header: list[str], rows: list[list[str]], right: int) -> list[str]:
    """A pipe table; the last `right` columns (numbers) right-aligned."""
    align = ["---"] * (len(header) - right) + ["---:"] * right
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(row) + " |" for row in rows)]


def to_markdown(table: pd.DataFrame, seeds: pd.DataFrame | None = None, pooled: pd.DataFrame | None = None,
                title: str = "Comparison") -> str:
    """comparison.md: the runs, then the mean and SD over seeds, then the pooled out-of-fold metrics."""
    varying, reference = table.attrs["varying"], table.attrs["reference"]
    lines = [f"# {title}", "",
             f"Test-split metrics of each run (results/<run>/performance_metrics.json); 95% bootstrap intervals. "
             f"\"MAE vs reference\" is the run's MAE minus that of `{reference}` on the same test images, with a "
             "paired bootstrap 95% interval (an interval that holds 0: the test split cannot tell the two apart; "
             "— : scored on other images).", ""]
    header = ["run", *varying, "n", "MAE (95% CI)", "RMSE", "bias", "within 12 mo (%)", "coverage (%)",
              "MAE vs reference (95% CI)"]
    rows = [[f"`{row['run']}`", *(str(row[name]) for name in varying), _plain(row["n"]),
             f"{_plain(row['mae'])} ({_range(row['mae_low'], row['mae_high'])})", _plain(row["rmse"]),
             _signed(row["bias"]), _plain(row["within_12_pct"], 1), _plain(row["interval_coverage_pct"], 1),
             "reference" if row["run"] == reference else "—" if math.isnan(row["mae_vs_reference"]) else
             f"{_signed(row['mae_vs_reference'])} ({_range(row['mae_vs_reference_low'], row['mae_vs_reference_high'], True)})"]
            for row in table.to_dict("records")]
    lines += _markdown_table(header, rows, right=7)
    if seeds is not None:
        groups = [name for name in varying if name != "seed"]
        lines += ["", "## Mean and SD over seeds", ""]
        header = [*groups, "seeds", *(f"{label}, mean ± SD" for label in SUMMARISED.values())]
        rows = [[*(str(row[name]) for name in groups), row["seeds"],
                 *(f"{_plain(row[f'{name}_mean'])} ± {_plain(row[f'{name}_sd'])}" for name in SUMMARISED)]
                for row in seeds.to_dict("records")]
        lines += _markdown_table(header, rows, right=len(SUMMARISED))
    if pooled is not None:
        groups = [name for name in pooled.columns if name not in
                  ("folds", "folds_present", *HEADLINE, "mae_low", "mae_high", "interval_coverage_pct")]
        lines += ["", "## Pooled out-of-fold metrics", "",
                  "Each image predicted by the run whose test fold held it; 95% bootstrap intervals over the images.", ""]
        header = [*groups, "folds", "n", "MAE (95% CI)", "RMSE", "bias", "within 12 mo (%)", "coverage (%)"]
        rows = [[*(str(row[name]) for name in groups), f"{row['folds_present']} of {row['folds']}", _plain(row["n"]),
                 f"{_plain(row['mae'])} ({_range(row['mae_low'], row['mae_high'])})", _plain(row["rmse"]),
                 _signed(row["bias"]), _plain(row["within_12_pct"], 1), _plain(row["interval_coverage_pct"], 1)]
                for row in pooled.to_dict("records")]
        lines += _markdown_table(header, rows, right=6)
    return "\n".join(lines) + "\n"


def write_comparison(paths: config.RunPaths, table: pd.DataFrame, markdown: str) -> tuple:
    """comparison.csv (full precision: the numbers of each run's metrics file) and comparison.md."""
    paths.results.mkdir(parents=True, exist_ok=True)
    with atomic_path(paths.comparison_table) as temporary:
        table.to_csv(temporary, index=False)
    write_text_atomic(paths.comparison_markdown, markdown)
    return paths.comparison_table, paths.comparison_markdown
