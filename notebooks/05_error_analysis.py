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
# # 05 · Error analysis
#
# Where and how the model is wrong: the worst cases, the error as a function of age and sex,
# the systematic bias (regression towards the mean), the calibration of predicted ages, the
# image-quality flags, and Grad-CAM maps of what the network looked at.

# %% tags=["parameters"]
# A preset of presets.yaml and overrides of its parameters; the pipeline sets both.
# BONE_AGE_PRESET lets `jupyter nbconvert --execute` pick a preset without papermill.
import os

preset = os.environ.get("BONE_AGE_PRESET", "demo")
overrides = {}

# %%
import json

import keras
import numpy as np
import pandas as pd
from IPython.display import display

from utils import config, evaluation, explain, figures, plots, study
from utils.parameters import load_parameters

parameters = load_parameters(preset, overrides)
paths = config.RunPaths(parameters.run_name).make()
table = study.load_split_table(parameters, paths)
images = study.load_images(table, parameters, progress=False)
image_by_id = dict(zip(table["id"], images))
predictions = pd.read_csv(paths.predictions, dtype={"id": str})
predictions["error"] = predictions["boneage_pred"] - predictions["boneage"]
predictions["age_band"] = evaluation.age_band(predictions["boneage"])
metrics = json.loads(paths.metrics.read_text())
print(f"{len(predictions):,} test predictions · MAE {metrics['mae']:.2f} months")

# %% [markdown]
# ## The worst cases
# The twelve largest absolute errors, with true and predicted age in months.

# %%
worst = predictions.reindex(predictions["error"].abs().sort_values(ascending=False).index).head(12)
figure = plots.image_grid(
    np.stack([image_by_id[identifier] for identifier in worst["id"]]),
    [f"true {row.boneage:.0f} · pred {row.boneage_pred:.0f}" for row in worst.itertuples()],
    ncols=4,
    title="The largest errors on the test split",
)
figures.publish(figure, paths.figures, "worst_cases")

# %% [markdown]
# The radiographs the model got most wrong, largest error first: look for what they share
# (image quality, positioning, the youngest or oldest children, unusual anatomy).

# %% [markdown]
# ## Residuals by age and sex

# %%
figure = plots.residuals_by_age(
    predictions["boneage"].to_numpy(), predictions["boneage_pred"].to_numpy(), male=predictions["male"].to_numpy()
)
figures.publish(figure, paths.figures, "residuals_by_age")

# %% [markdown]
# The signed error (predicted − true) against true age, with its binned mean; a downward slope
# means young children are over-estimated and adolescents under-estimated.

# %%
slope = metrics["regression_to_mean"]
print(f"residual = {slope['slope']:.3f} × true age + {slope['intercept']:.1f} months")
by_sex = predictions.assign(sex=np.where(predictions["male"], "male", "female")).groupby(["age_band", "sex"])
display(by_sex["error"].agg(n="count", bias="mean", mae=lambda error: error.abs().mean()).round(2).unstack("sex"))

# %% [markdown]
# ## Calibration of predicted ages

# %%
bins = evaluation.calibration_bins(predictions["boneage"].to_numpy(), predictions["boneage_pred"].to_numpy())
figure = plots.calibration_plot(bins)
figures.publish(figure, paths.figures, "calibration")

# %% [markdown]
# Mean true age per bin of predicted age: on the diagonal, a predicted age means what it says.

# %% [markdown]
# ## Image-quality flags
# Test images whose preprocessed pixels are unlike the training images (blank, inverted,
# rotated, not a hand) are flagged; their errors are compared with the rest.

# %%
display(predictions.groupby("quality_flag")["error"].agg(n="count", mae=lambda error: error.abs().mean()).round(2))

# %% [markdown]
# ## What the network looked at: Grad-CAM
# For each age band: the best, a typical (median error) and the worst test case. Warm colours
# mark the regions whose features pushed the prediction most.

# %%
bone_age_model = keras.models.load_model(paths.model)
chosen, titles = [], []
for _, _, band in evaluation.AGE_BANDS:
    rows = predictions[predictions["age_band"] == band]
    if rows.empty:
        continue
    ordered = rows.reindex(rows["error"].abs().sort_values().index)
    for label, position in (("best", 0), ("typical", len(ordered) // 2), ("worst", len(ordered) - 1)):
        row = ordered.iloc[position]
        chosen.append(row)
        titles.append(f"{band} {label}: {row.boneage:.0f} → {row.boneage_pred:.0f} mo")
chosen = pd.DataFrame(chosen)
gradcam_images = np.stack([image_by_id[identifier] for identifier in chosen["id"]])
heatmaps = explain.grad_cam(bone_age_model, gradcam_images, chosen["male"].to_numpy(dtype="float32"))
figure = explain.gradcam_figure(gradcam_images, heatmaps, titles, ncols=3)
figures.publish(figure, paths.figures, "gradcam")

# %% [markdown]
# Each pair is the radiograph and its Grad-CAM overlay: maps concentrated on the phalanges,
# metacarpals, carpals and distal radius mean the network reads the growth regions a
# radiologist reads; maps on markers, borders or background point to shortcuts.
