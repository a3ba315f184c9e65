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
# # Bone age from hand radiographs: the study on one page
#
# A convolutional network reads a left-hand radiograph and the child's sex and estimates skeletal
# (bone) age in months, the quantity a radiologist reads from a Greulich & Pyle atlas. This page
# gathers one run of the study: what was run, on which data, with which software, and the
# numbers and figures that matter. Each stage is a notebook of its own (links below); the
# pipeline (`python -m utils.pipeline --preset NAME`) executes them in order, then this page.
#
# *Research software. Not a medical device; not for clinical decisions.*

# %% tags=["parameters"]
# A preset of presets.yaml and overrides of its parameters; the pipeline sets both.
# BONE_AGE_PRESET lets `jupyter nbconvert --execute` pick a preset without papermill.
import os

preset = os.environ.get("BONE_AGE_PRESET", "demo")
overrides = {}

# %%
import json

import pandas as pd
from IPython.display import Image, Markdown, display

from utils import config, evaluation, figures
from utils.parameters import load_parameters

parameters = load_parameters(preset, overrides)
paths = config.RunPaths(parameters.run_name).make()
if not paths.metrics.exists():
    raise ValueError(f"{paths.metrics} does not exist: run the stages first (python -m utils.pipeline --preset {preset})")
metrics = json.loads(paths.metrics.read_text())

# %% [markdown]
# ## What was run

# %%
run = metrics["run"]
dataset = metrics["dataset"]
display(Markdown(
    f"Run **{run['name']}** (preset `{run['preset']}`), {run['created_utc']}, commit `{run['git_commit']}`.  \n"
    f"Data: **{dataset['name']}** ({dataset['n_images']:,} radiographs) from `{dataset['source']}`; split "
    + ", ".join(f"{name} {count:,}" for name, count in dataset["splits"].items())
    + f".  \nModel: `{metrics['model']['architecture']}`, {metrics['model']['parameters_count']:,} parameters, "
    f"{metrics['model']['image_size']} px input."
))
display(pd.DataFrame({"value": run["parameters"]}).astype(str))
display(pd.DataFrame({"version": run["library_versions"]}))

# %% [markdown]
# ## Headline numbers (test split)
# Mean absolute error (MAE) in months; "within 12" is the share of predictions within a year of
# the reference reading. "Predict the training mean" is the floor any model must beat.

# %%
headline = ["mae", "rmse", "bias", "pearson_r", "within_6_pct", "within_12_pct", "within_24_pct"]
table = pd.DataFrame({"ours": {key: metrics[key] for key in headline}})
# 95% bootstrap confidence intervals over the test images (metrics schema version 2).
table["ours 95% CI"] = {key: "" if not (metrics.get("ci") or {}).get(key) else
                        f"{metrics['ci'][key]['low']:.2f} to {metrics['ci'][key]['high']:.2f}" for key in headline}
if metrics["seed_baseline"]:
    table["seed baseline"] = {key: metrics["seed_baseline"][key] for key in headline}
table.loc["mae", "predict the training mean"] = metrics["baseline_mae_mean_predictor"]
interval = metrics["prediction_interval"]
display(table.round(2))
display(Markdown(
    f"{interval['nominal_pct']:.0f}% prediction intervals: empirical coverage **{interval['coverage_pct']:.1f}%**, "
    f"mean width {interval['mean_width']:.1f} months. Training took {metrics['timing']['training_seconds'] / 60:.1f} min "
    f"on this machine; inference {metrics['timing']['inference_images_per_second']:.0f} images/s."
))
display(evaluation.group_frame(metrics["by_age_band"]))

# %% [markdown]
# ## Key figures

# %%
for figure in figures.in_summary():
    if (paths.figures / figure.file_name).exists():
        display(Markdown(f"**{figure.title}.** {figure.caption}"))
        display(Image(filename=str(paths.figures / figure.file_name), width=720))

# %% [markdown]
# ## The stages
# The executed notebooks of this run, in `results/<run>/notebooks/` (HTML beside each):
# [01 EDA](01_eda.html) · [02 preprocessing](02_preprocessing.html) · [03 training](03_training.html) ·
# [04 evaluation](04_evaluation.html) · [05 error analysis](05_error_analysis.html)
