# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python (bone-age)
#     language: python
#     name: bone-age
# ---

# %% [markdown]
# # 04 · Evaluation
#
# The trained model predicts the test split, which no step of training or model selection has
# seen. The numbers (MAE, RMSE, bias, agreement, share within 6/12/18/24 months, per age band
# and per sex) go to `performance_metrics.json`. Each prediction carries a split-conformal
# interval calibrated on the calibration split, and a quality flag for images unlike the
# training data. The model card and an ONNX copy of the model for the prediction CLI are
# written here, because they need the calibration.

# %% tags=["parameters"]
# A preset of presets.yaml and overrides of its parameters; the pipeline sets both.
# BONE_AGE_PRESET lets `jupyter nbconvert --execute` pick a preset without papermill.
import os

preset = os.environ.get("BONE_AGE_PRESET", "demo")
overrides = {}

# %%
import json
import time

import keras
import numpy as np
import pandas as pd
from IPython.display import display

from utils import config, conformal, evaluation, figures, model, model_card, onnx_runtime, plots, preprocessing, quality, study
from utils.parameters import TTA_MODES, load_parameters
from utils.files import atomic_path

parameters = load_parameters(preset, overrides)
paths = config.RunPaths(parameters.run_name).make()
table = study.load_split_table(parameters, paths)
images = study.load_images(table, parameters)
training_summary = json.loads(paths.training_summary.read_text())
bone_age_model = keras.models.load_model(paths.model)
calibration = study.split_arrays(table, images, "calibration")
test = study.split_arrays(table, images, "test")
test_table = table[table["split"] == "test"].reset_index(drop=True)
print(f"calibration {len(calibration[0]):,} · test {len(test[0]):,} images")

# %% [markdown]
# ## Test-time augmentation: does it pay?
# Averaging predictions over transformed copies costs a forward pass per view; the run uses the
# mode its `tta` parameter names: `none`, `shift` (sideways shifts by 3% of the width), `flip`
# (the mirror image) or `shift_flip` (both, 6 views). Here is what each would buy on the
# validation split.

# %%
validation = study.split_arrays(table, images, "validation")
tta_check, validation_pred = {}, {}
for mode in TTA_MODES:
    started = time.perf_counter()
    predicted = validation_pred[mode] = model.predict_months(bone_age_model, validation[0], validation[1], tta=mode)
    tta_check[mode] = {
        "views": len(preprocessing.tta_views(validation[0][:1], mode)),
        "validation_mae": float(np.abs(predicted - validation[2]).mean()),
        "seconds": time.perf_counter() - started,
    }
pd.DataFrame.from_dict(tta_check, orient="index").round(3)

# %% [markdown]
# ## Predictions, intervals and quality flags

# %%
calibration_pred = model.predict_months(bone_age_model, calibration[0], calibration[1], tta=parameters.tta)
test_table["boneage_pred"] = model.predict_months(bone_age_model, test[0], test[1], tta=parameters.tta)
intervals = conformal.fit_conformal(calibration[2], calibration_pred, coverage=parameters.interval_coverage)
test_table["boneage_low"], test_table["boneage_high"] = intervals.interval(test_table["boneage_pred"].to_numpy())
train = study.split_arrays(table, images, "train")
quality_reference = quality.QualityReference.fit(train[0])
test_table["quality_score"], test_table["quality_flag"] = quality_reference.assess(test[0])

baseline_pred = None
if training_summary["seed_baseline"]:
    baseline_model = keras.models.load_model(paths.baseline_model)
    # The same test-time augmentation as ours, so that the comparison is like for like.
    baseline_pred = model.predict_months(baseline_model, test[0], test[1], tta=parameters.tta)
    test_table["seed_baseline_pred"] = baseline_pred

columns = ["id", "boneage", "male", "boneage_pred", "boneage_low", "boneage_high", "quality_score", "quality_flag"]
columns += ["seed_baseline_pred"] if baseline_pred is not None else []
with atomic_path(paths.predictions) as temporary:
    test_table[columns].to_csv(temporary, index=False)
test_table[columns].head()

# %% [markdown]
# ## Speed

# %%
speed = model.measure_inference_speed(bone_age_model, parameters.image_size)
speed

# %% [markdown]
# ## The prediction command's graph
# `python -m utils.predict` runs `bone_age.onnx`, the same network exported to ONNX, for a fast
# start without TensorFlow. With `onnx_precision: int8` the graph is quantised (int8 weights and
# activations, ranges calibrated on the calibration split), which runs the network about 1.7 times
# faster on this CPU (README, Benchmarks); the Keras model, and so every metric in this notebook, stays float32. Here is what the
# graph changes on the validation and test splits (the test row is reported, never used to choose).

# %%
graph = onnx_runtime.export_prediction_graph(paths.model, paths.onnx_model, precision=parameters.onnx_precision,
                                             calibration=calibration[:2])
prediction_runtime = evaluation.prediction_runtime_record(
    graph, parameters.onnx_precision, tta=parameters.tta, validation=validation, validation_pred=validation_pred[parameters.tta],
    test=test, test_pred=test_table["boneage_pred"].to_numpy(), intervals=intervals)
pd.DataFrame({split: prediction_runtime[split] for split in ("validation", "test")}).T.round(3)

# %% [markdown]
# ## Metrics

# %%
metrics = evaluation.build_performance_metrics(
    parameters=parameters.to_dict(),
    dataset_name=study.dataset_name(parameters),
    dataset_source=str(study.dataset_folder(parameters)),
    split_counts=table["split"].value_counts().reindex(config.SPLITS, fill_value=0).to_dict(),
    model_info={
        "architecture": parameters.architecture,
        "parameters_count": bone_age_model.count_params(),
        "image_size": parameters.image_size,
        "path": config.display_path(paths.model),
    },
    y_true=test[2],
    y_pred=test_table["boneage_pred"].to_numpy(),
    male=test[1].astype(bool),
    train_ages=train[2],
    interval=(test_table["boneage_low"].to_numpy(), test_table["boneage_high"].to_numpy()),
    interval_method=intervals.method,
    interval_nominal=parameters.interval_coverage,
    baseline_pred=baseline_pred,
    prediction_runtime=prediction_runtime,
    timing={
        # Every member of an ensemble counts (older runs have no "members").
        "training_seconds": sum(member["training_seconds"] for member in training_summary.get("members") or [training_summary["ours"]]),
        "training_images_per_second": training_summary["ours"]["train_images_per_second"],
        "inference_images_per_second": speed["batch_images_per_second"],
        "inference_seconds_single_image": speed["single_image_seconds"],
        "numpy_fp32_matmul_gflops_at_training": training_summary.get("numpy_fp32_matmul_gflops"),
        "numpy_fp32_matmul_gflops_at_evaluation": evaluation.matmul_gflops(),
    },
)
evaluation.write_performance_metrics(paths.metrics, metrics)
headline = list(model_card.CARD_METRICS)


def shown(value):
    """A number as the tables show it: counts as integers, the rest with two decimals."""
    return "" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.2f}"


def interval_text(entry, key):
    interval = (entry.get("ci") or {}).get(key)
    return f"{interval['low']:.2f} to {interval['high']:.2f}" if interval else ""


comparison = pd.DataFrame({"ours": {key: shown(metrics[key]) for key in headline},
                           "ours 95% CI": {key: interval_text(metrics, key) for key in headline}})
if metrics["seed_baseline"]:
    comparison["seed baseline"] = {key: shown(metrics["seed_baseline"][key]) for key in headline}
    comparison["seed baseline 95% CI"] = {key: interval_text(metrics["seed_baseline"], key) for key in headline}
comparison["predict the training mean"] = ""
comparison.loc["mae", "predict the training mean"] = shown(metrics["baseline_mae_mean_predictor"])
comparison

# %% [markdown]
# The 95% confidence intervals are percentile bootstrap intervals over the test images
# (`evaluation.bootstrap_ci`). The seed baseline is compared on the same images, so the paired
# interval of the difference is what says whether the two differ:

# %%
if metrics["seed_baseline"]:
    difference = metrics["seed_baseline"]["paired_mae_difference"]
    print(f"seed baseline MAE - ours = {difference['difference']:+.2f} months "
          f"(95% CI {difference['low']:+.2f} to {difference['high']:+.2f}, paired bootstrap over {difference['n']:,} images)")
else:
    print("no seed baseline in this run (train_seed_baseline: false)")

# %% [markdown]
# Per age band (of the true age) and per sex. Groups with fewer than 30 test images are marked:
# their intervals are wide.

# %%
display(evaluation.group_frame(metrics["by_age_band"]))
display(evaluation.group_frame(metrics["by_sex"]))
interval = metrics["prediction_interval"]
print(f"{interval['nominal_pct']:.0f}% intervals ({interval['method']}): coverage {interval['coverage_pct']:.1f}% "
      f"(95% CI {interval_text(interval, 'coverage_pct')}), mean width {interval['mean_width']:.1f} months")
display(evaluation.group_frame({**interval["by_age_band"], **interval["by_sex"]}, keys=("n", "coverage_pct", "mean_width"), digits=1))

# %% [markdown]
# ## Figures

# %%
y_true, y_pred = test_table["boneage"].to_numpy(), test_table["boneage_pred"].to_numpy()
figure = plots.predicted_vs_true(
    y_true, y_pred, low=test_table["boneage_low"].to_numpy(), high=test_table["boneage_high"].to_numpy(),
    baseline_pred=baseline_pred,
)
figures.publish(figure, paths.figures, "predicted_vs_true")
plots.save_plotly_html(plots.plotly_predicted_vs_true(test_table), paths.figures / figures.INTERACTIVE["predicted_vs_true"]);

# %% [markdown]
# Predicted against true bone age on the test split; points on the diagonal are exact, the bars
# are the prediction intervals (a subsample). An interactive version with each image's id is in
# `figures/predicted_vs_true.html`.

# %%
figure = plots.bland_altman(y_true, y_pred)
figures.publish(figure, paths.figures, "bland_altman")

# %% [markdown]
# Bland-Altman: the difference (predicted − true) against the mean of the two; the dashed lines
# are the bias and the 95% limits of agreement.

# %%
figure = plots.error_distribution(y_true, y_pred)
figures.publish(figure, paths.figures, "error_distribution")

# %% [markdown]
# The distribution of signed errors; the guides mark ±6 and ±12 months.

# %%
figure = plots.metrics_by_band(metrics["by_age_band"], metrics["seed_baseline"]["by_age_band"] if metrics["seed_baseline"] else None)
figures.publish(figure, paths.figures, "metrics_by_band")

# %% [markdown]
# MAE per age band with 95% confidence intervals (test images per band annotated).

# %%
figure = plots.interval_coverage(interval["by_age_band"], interval["nominal_pct"])
figures.publish(figure, paths.figures, "interval_coverage")

# %% [markdown]
# Empirical coverage of the prediction intervals per age band with its 95% confidence interval,
# against the nominal level.

# %% [markdown]
# ## Model card
# `models/<run>/model_card.json` (schema in `utils/model_card.py`) holds what
# `python -m utils.predict` needs (the network's inputs and output, the preprocessing, the
# test-time augmentation, the interval calibration, the quality reference) and where the model
# came from (parameters, command, commit, headline metrics). `MODEL_CARD.md` beside it is the card
# for people: intended and out-of-scope use, data and licence, metrics with intervals, subgroups,
# failure modes.

# %%
card = model_card.ModelCard.from_run(
    parameters,
    overrides=overrides,
    calibration=intervals.to_dict(),
    quality_reference=quality_reference.to_dict(),
    target_mean=training_summary["target_mean"],
    target_std=training_summary["target_std"],
    metrics={key: metrics[key] for key in headline},
    split_counts=metrics["dataset"]["splits"],
    git_commit=metrics["run"]["git_commit"],
    model=paths.model.name,
)
card.write(paths.model_card)
card.write_markdown(paths.model_card_markdown, metrics)
print(f"model card (version {card.card_version}, tta {card.tta!r}): {config.display_path(paths.model_card)}, "
      f"{config.display_path(paths.model_card_markdown)}")
