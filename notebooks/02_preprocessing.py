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
# # 02 · Preprocessing and the split
#
# Each radiograph is decoded to one 8-bit channel, optionally padded to a square (keeping the
# aspect ratio), resized to the model's input size and contrast-normalised. The result is cached,
# so later stages and reruns do not decode again. The data set is then split into train,
# validation (early stopping), calibration (prediction intervals) and test (the reported
# numbers), stratified by age band and sex, and the split is written to `split.csv`.

# %% tags=["parameters"]
# A preset of presets.yaml and overrides of its parameters; the pipeline sets both.
# BONE_AGE_PRESET lets `jupyter nbconvert --execute` pick a preset without papermill.
import os

preset = os.environ.get("BONE_AGE_PRESET", "demo")
overrides = {}

# %%
import time

import cv2
import numpy as np
import pandas as pd
from IPython.display import display

from utils import config, data, evaluation, figures, model, plots, preprocessing, study
from utils.parameters import load_parameters

parameters = load_parameters(preset, overrides)
paths = config.RunPaths(parameters.run_name).make()
table = study.load_table(parameters, paths)
print(f"{len(table):,} radiographs; image_size={parameters.image_size}, "
      f"pad_to_square={parameters.pad_to_square}, contrast={parameters.contrast!r}")

# %% [markdown]
# ## Before and after
# Top: the file as stored. Bottom: exactly what the model receives (this run's hand crop,
# padding or stretching, resizing and contrast normalisation), each input pixel enlarged
# without smoothing.

# %%
examples = table.sort_values("boneage").iloc[np.linspace(0, len(table) - 1, 6).astype(int)]
before = [
    preprocessing.preprocess_image(preprocessing.read_grayscale(path), 128, pad_to_square=True, contrast="none")
    for path in examples["path"]
]
after = [
    preprocessing.preprocess_image(
        preprocessing.read_grayscale(path),
        parameters.image_size,
        pad_to_square=parameters.pad_to_square,
        contrast=parameters.contrast,
        hand_crop=parameters.hand_crop,
    )
    for path in examples["path"]
]
# Enlarged by repeating pixels (nearest neighbour), so the display adds no detail the model lacks.
after = [cv2.resize(image, (128, 128), interpolation=cv2.INTER_NEAREST) for image in after]
titles = [f"{age / 12:.1f} y" for age in examples["boneage"]]
size = parameters.image_size
figure = plots.image_grid(np.stack(before + after), titles + [f"input {size}x{size}"] * len(titles), ncols=6,
    title="As stored (top) and as the model receives them (bottom)",
)
figures.publish(figure, paths.figures, "preprocessing_examples")

# %% [markdown]
# ## The cache
# All images, preprocessed once (both cores, with progress) and stored as one `.npy` keyed by
# the preprocessing parameters and the files' sizes and dates; a second call reads the cache.

# %%
started = time.perf_counter()
images = study.load_images(table, parameters)
print(f"{images.shape[0]:,} images of {images.shape[1]}x{images.shape[2]} ({images.dtype}) "
      f"in {time.perf_counter() - started:.1f} s")
started = time.perf_counter()
study.load_images(table, parameters, progress=False)
print(f"second load (from the cache): {time.perf_counter() - started:.2f} s")

# %% [markdown]
# ## The split
# Stratified by age band × sex and seeded (`data_seed`, by default `seed`); rows a source layout
# marks as its test set stay in test. With `folds` K > 1 the test split is fold `fold` of K
# (cross-validation: the K runs' test folds partition the data) and train, validation and
# calibration share out the rest. Every later stage reads `split.csv`, so the split is made once
# per run.

# %%
split = data.split_dataset(table, parameters.split_fractions, seed=parameters.resolved_data_seed,
                           folds=parameters.folds, fold=parameters.fold)
data.write_split(paths.split, table, split)
table["split"] = split.to_numpy()
table["age_band"] = evaluation.age_band(table["boneage"])
counts = table.pivot_table(index="age_band", columns="split", values="id", aggfunc="count", fill_value=0)
counts = counts.reindex([label for _, _, label in evaluation.AGE_BANDS], fill_value=0)
counts = counts[[name for name in config.SPLITS if name in counts.columns]]
counts.loc["total"] = counts.sum()
display(counts)
summary = table.groupby("split").agg(
    n=("id", "count"), male_pct=("male", lambda values: 100 * values.mean()), mean_age_months=("boneage", "mean")
)
summary.round(1)

# %% [markdown]
# ## Augmentation preview
# The random transformations applied to training images only (rotation, shift, zoom,
# brightness and contrast); at validation and test time the model sees the image unchanged.

# %%
preview_model = model.build_for_run(parameters, target_mean=0.0, target_std=1.0)
augmentation = model.augmentation_pipeline(preview_model)
first = images[table.index[table["split"] == "train"][0]]
augmented = [first] + [
    np.clip(augmentation(first[None, :, :, None].astype("float32"), training=True)[0, :, :, 0], 0, 255).astype("uint8")
    for _ in range(5)
]
figure = plots.image_grid(np.stack(augmented), ["original"] + [f"augmented {index}" for index in range(1, 6)], ncols=6,
    title="Training-time augmentation of one image",
)
figures.publish(figure, paths.figures, "augmentation_preview")
