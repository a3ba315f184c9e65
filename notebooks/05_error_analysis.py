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

from utils import config, evaluation, explain, figures, growth, model, model_card, plots, rejection, study
from utils.files import write_json_atomic
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
# The twelve largest absolute errors, as the model receives the images, with true and
# predicted age in months, sex and quality flag (flagged titles in red).

# %%
predictions["hand_fraction"] = evaluation.foreground_fraction(np.stack([image_by_id[i] for i in predictions["id"]]))
worst = predictions.reindex(predictions["error"].abs().sort_values(ascending=False, kind="stable").index).head(12)
figure = plots.image_grid(
    np.stack([image_by_id[identifier] for identifier in worst["id"]]),
    [f"true {row.boneage:.0f} · pred {row.boneage_pred:.0f} mo\n{'boy' if row.male else 'girl'} · {row.quality_flag}"
     for row in worst.itertuples()],
    ncols=4,
    title="The largest errors on the test split",
    title_colors=["black" if flag == "ok" else "#B03A2E" for flag in worst["quality_flag"]],
)
figures.publish(figure, paths.figures, "worst_cases")

# %% [markdown]
# What the largest errors share, counted against all test images (the worst 5%, at least 12):
# age band, direction of the error, sex, quality flags and the size of the hand in the frame.

# %%
worst_profile = evaluation.worst_case_profile(predictions)
for note in worst_profile["notes"]:
    print("·", note)

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
slope_interval = (slope.get("ci") or {}).get("slope")
print(f"residual = {slope['slope']:.3f} × true age + {slope['intercept']:.1f} months"
      + (f" (slope 95% CI {slope_interval['low']:.3f} to {slope_interval['high']:.3f})" if slope_interval else ""))
# Bands in age order (a plain groupby would sort the labels as text: 0-2, 10-15, 15-19, 2-5, ...).
band_order = pd.CategoricalDtype([label for _, _, label in evaluation.AGE_BANDS], ordered=True)
by_sex = predictions.assign(sex=np.where(predictions["male"], "male", "female"),
                            age_band=predictions["age_band"].astype(band_order)).groupby(["age_band", "sex"], observed=True)
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
# ## Rejecting flagged images: what it costs and what it buys
# `python -m utils.predict --reject-flagged` returns no age for an image whose quality flag is
# not `ok` (`utils/rejection.py`). On the test split: the share of images that would get no age
# (the cost) and the error of those that still get one (what it buys), with a bootstrap interval
# of the MAE gain. Written to `rejection.json` for the report.

# %%
rejection_summary = rejection.rejection_summary(
    predictions["boneage"], predictions["boneage_pred"], predictions["quality_flag"],
    low=predictions["boneage_low"], high=predictions["boneage_high"], seed=parameters.seed,
)
write_json_atomic(paths.rejection, rejection_summary)
display(pd.DataFrame({
    "images": [rejection_summary["n"], rejection_summary["n"] - rejection_summary["n_rejected"], rejection_summary["n_rejected"]],
    "MAE (months)": [rejection_summary["mae_all"], rejection_summary["mae_kept"], rejection_summary["mae_rejected"]],
}, index=["all test images", "kept (flag ok)", "rejected (flagged)"]).round(2))
gain_interval = rejection_summary["mae_gain_ci95"]
print(f"rejecting {rejection_summary['n_rejected']} of {rejection_summary['n']} test images "
      f"({rejection_summary['rejected_pct']:.1f}%) changes the MAE from {rejection_summary['mae_all']:.2f} to "
      f"{rejection_summary['mae_kept']:.2f} months"
      + ("" if gain_interval is None else f" (gain {rejection_summary['mae_gain']:+.2f}; 95% bootstrap interval "
                                           f"{gain_interval[0]:+.2f} to {gain_interval[1]:+.2f})"))

# %% [markdown]
# With few flagged images the gain is uncertain: read the interval, not only the point.

# %% [markdown]
# ## The readout on a growth chart
# The prediction command reads a bone age against the chronological age (`--age-months`): the
# difference in months, the standard deviation score against the Greulich & Pyle SD for age and
# sex, and delayed / normal / advanced beyond ±2 SD, drawn with `--chart` as below for the most
# delayed, a typical and the most advanced test reading. It needs chronological ages: the
# synthetic data has them by construction (each hand is drawn for an age, its label, so a
# point's distance from the dashed line is the model's error); RSNA has bone ages only.

# %%
if parameters.dataset == "synthetic":
    dated = growth.visit_readings(predictions.assign(patient=predictions["id"], chronological_age_months=predictions["boneage"]))
    ordered = dated.dropna(subset=["bone_age_sds"]).sort_values("bone_age_sds").reset_index(drop=True)  # flagged: no SDS
    cases = {"most delayed": 0, "typical": len(ordered) // 2, "most advanced": len(ordered) - 1}
    children = [
        growth.chart_child(ordered.iloc[[position]], f"{label}: test image {ordered.loc[position, 'id']} "
                           f"({'boy' if ordered.loc[position, 'male'] else 'girl'})", 100 * parameters.interval_coverage)
        for label, position in cases.items()
    ]
    figure = growth.growth_chart(children, title="The readout of three test children on the bone-age chart")
    figures.publish(figure, paths.figures, "growth_charts")
    display(ordered.iloc[list(cases.values())].set_index(pd.Index(list(cases), name="case"))[
        ["id", "male", "chronological_age_months", "boneage_pred", "boneage_low", "boneage_high", "bone_age_sds",
         "bone_age_centile", "category"]].round(2))
else:
    print(f"{parameters.dataset}: no chronological ages in the data set, so no growth charts")

# %% [markdown]
# ## What the network looked at: Grad-CAM
# For each age band: the best, a typical (median error) and the worst test case. The signed
# map is drawn: red where a region raises the predicted age, blue where it lowers it. The
# classic Grad-CAM keeps the red part only, and is blank for hands whose features all push the
# age down (most young hands); the count below says how many.

# %%
bone_age_model = keras.models.load_model(paths.model)
chosen, titles = [], []
for _, _, band in evaluation.AGE_BANDS:
    rows = predictions[predictions["age_band"] == band]
    if rows.empty:
        continue
    ordered = rows.reindex(rows["error"].abs().sort_values(kind="stable").index)
    for label, position in (("best", 0), ("typical", len(ordered) // 2), ("worst", len(ordered) - 1)):
        row = ordered.iloc[position]
        chosen.append(row)
        titles.append(f"{band} · {label}\ntrue {row.boneage:.0f} · pred {row.boneage_pred:.0f} mo")
chosen = pd.DataFrame(chosen)
gradcam_images = np.stack([image_by_id[identifier] for identifier in chosen["id"]])
gradcam_male = chosen["male"].to_numpy(dtype="float32")
heatmaps = explain.grad_cam(bone_age_model, gradcam_images, gradcam_male, mode="signed")
classic = explain.grad_cam(bone_age_model, gradcam_images, gradcam_male, mode="positive")
gradcam_summary = {"cases": len(chosen), "mode": "signed",
                   "blank_signed": int(np.sum(np.abs(heatmaps).max(axis=(1, 2)) == 0)),
                   "blank_classic": int(np.sum(classic.max(axis=(1, 2)) == 0))}
print(f"{gradcam_summary['cases']} maps: {gradcam_summary['blank_signed']} blank signed, "
      f"{gradcam_summary['blank_classic']} would be blank as classic (positive-only) Grad-CAM")
figure = explain.gradcam_figure(gradcam_images, heatmaps, titles, ncols=3, signed=True)
figures.publish(figure, paths.figures, "gradcam")

# %% [markdown]
# Each pair is the model's input and its signed Grad-CAM overlay: colour concentrated on the
# phalanges, metacarpals, carpals and distal radius means the network reads the growth regions
# a radiologist reads; colour on markers, borders or background points to shortcuts.

# %% [markdown]
# ## A random sample of predictions
# The worst cases are selected; these twelve are not (drawn with the run's seed, shown by true
# age): the true age, the prediction with its interval, and the quality flag. A red title marks
# a true age outside the interval.

# %%
sample_rows = np.random.default_rng(parameters.seed).choice(len(predictions), size=min(12, len(predictions)), replace=False)
gallery = predictions.iloc[sample_rows].sort_values("boneage", kind="stable")
covered = (gallery["boneage_low"] <= gallery["boneage"]) & (gallery["boneage"] <= gallery["boneage_high"])
figure = plots.image_grid(
    np.stack([image_by_id[identifier] for identifier in gallery["id"]]),
    [f"true {row.boneage:.0f} · pred {row.boneage_pred:.0f}\n[{row.boneage_low:.0f}, {row.boneage_high:.0f}] · "
     f"{row.quality_flag}" for row in gallery.itertuples()],
    ncols=4,
    title="A random sample of test predictions (months)",
    title_colors=["black" if inside else "#B03A2E" for inside in covered],
)
figures.publish(figure, paths.figures, "prediction_gallery")

# %% [markdown]
# ## External check: the official test images read by six radiologists
# The training and test labels above are one radiologist's reading. The 20 official RSNA test
# images in `../shared/data/rsna-fullres-sample` carry the mean of six readers: a better
# reference, on very few images (n = 20, so the interval is wide). They are full-resolution and
# were segmented and aligned by a public recipe, unlike the training images; this run's
# preprocessing is applied to them. Skipped, with the reason, when the folder is absent or the
# model learnt from synthetic images.

# %%
card = model_card.ModelCard.read(paths.model_card)
external = study.external_check(
    parameters, lambda images, male: model.predict_months(bone_age_model, images, male, tta=card.tta),
    card.conformal_interval(), card.quality(), known_ids=table["id"],
)
write_json_atomic(paths.external_check, external)
if external["available"]:
    mae_interval = external["ci"]["mae"]
    print(f"n = {external['n']} six-reader images: MAE {external['mae']:.2f} months (95% CI {mae_interval['low']:.2f} "
          f"to {mae_interval['high']:.2f}), bias {external['bias']:+.2f}, interval coverage {external['coverage_pct']:.0f}%")
    display(pd.DataFrame(external["rows"]).set_index("id").round(1))
else:
    print(f"external check skipped: {external['reason']}")

# %% [markdown]
# ## The findings, for the report
# Everything this notebook found, in `error_analysis.json` (schema in
# `evaluation.error_analysis_findings`): the sex × age-band table, the error of flagged and
# unflagged images, what the worst cases share, the gallery and the Grad-CAM summary.

# %%
findings = evaluation.error_analysis_findings(
    predictions, worst_ids=worst["id"], gallery_ids=gallery["id"], gradcam=gradcam_summary,
)
write_json_atomic(paths.findings, findings)
quality_table = pd.DataFrame.from_dict(
    {name: {"n": entry["n"], "MAE (months)": entry["mae"],
            "95% CI": "" if not entry["ci"]["mae"] else f"{entry['ci']['mae']['low']:.2f} to {entry['ci']['mae']['high']:.2f}"}
     for name, entry in findings["quality_flags"].items() if name != "by_flag"}, orient="index")
quality_table.round(2)
