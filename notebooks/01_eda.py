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
# # 01 · Exploratory data analysis
#
# What the data set holds before any model sees it: how bone age is distributed by sex,
# how balanced the sexes are, what the images look like (size, intensity) across age bands,
# and which rows or images are suspect. Nothing here changes the data; stage 02 prepares it.

# %% tags=["parameters"]
# A preset of presets.yaml and overrides of its parameters; the pipeline sets both.
# BONE_AGE_PRESET lets `jupyter nbconvert --execute` pick a preset without papermill.
import os

preset = os.environ.get("BONE_AGE_PRESET", "demo")
overrides = {}

# %%
import numpy as np
import pandas as pd
from IPython.display import display

from utils import config, evaluation, figures, plots, preprocessing, quality, study
from utils.parameters import load_parameters

parameters = load_parameters(preset, overrides)
paths = config.RunPaths(parameters.run_name).make()
rng = np.random.default_rng(parameters.seed)
pd.Series(parameters.to_dict(), dtype=object).to_frame("value")

# %% [markdown]
# ## The table
# One row per radiograph: id, image path, bone age (months), sex and the split the source
# layout assigns (train / validation / test).

# %%
table = study.load_table(parameters, paths)
table["age_band"] = evaluation.age_band(table["boneage"])
print(f"{len(table):,} labelled radiographs from {study.dataset_folder(parameters)}")
table.head()

# %% [markdown]
# ## Bone age by sex

# %%
figure = plots.age_distribution(table)
figures.publish(figure, paths.figures, "age_distribution")

# %% [markdown]
# Counts, sex balance and median age per age band: a model is judged per band in stage 04, so
# bands with few images will have noisy metrics.

# %%
band_order = [label for _, _, label in evaluation.AGE_BANDS]
bands = (
    table.assign(sex=np.where(table["male"], "male", "female"))
    .pivot_table(index="age_band", columns="sex", values="id", aggfunc="count", fill_value=0)
    .reindex(band_order, fill_value=0)
)
bands["total"] = bands.sum(axis=1)
bands["share_pct"] = (100 * bands["total"] / bands["total"].sum()).round(1)
bands["median_age_months"] = table.groupby("age_band")["boneage"].median().reindex(band_order)
display(bands)
print(f"male: {table['male'].mean():.1%} of images")

# %% [markdown]
# ## Images: size and intensity
# Measured on a random sample of the original files (before preprocessing).

# %%
sample = table.sample(min(len(table), 300), random_state=parameters.seed)
raw_images = [preprocessing.read_grayscale(path) for path in sample["path"]]
image_stats = pd.DataFrame(
    {
        "height": [image.shape[0] for image in raw_images],
        "width": [image.shape[1] for image in raw_images],
        "mean_intensity": [image.mean() for image in raw_images],
        "std_intensity": [image.std() for image in raw_images],
    },
    index=sample["id"],
)
image_stats.describe().round(1)

# %% [markdown]
# ## What the radiographs look like, band by band

# %%
grid_ids, grid_titles = [], []
for label in band_order:
    band_rows = table[table["age_band"] == label]
    picked = band_rows.sample(min(len(band_rows), 6), random_state=parameters.seed).sort_values("boneage")
    grid_ids.extend(picked.index)
    grid_titles.extend(
        f"{row.boneage / 12:.1f} y {'M' if row.male else 'F'}" for row in picked.itertuples()
    )
grid_images = np.stack(
    [
        preprocessing.preprocess_image(preprocessing.read_grayscale(path), 128, pad_to_square=True, contrast="none")
        for path in table.loc[grid_ids, "path"]
    ]
)
figure = plots.image_grid(grid_images, grid_titles, ncols=6, title="Radiographs by age band (youngest first)")
figures.publish(figure, paths.figures, "sample_grid")

# %% [markdown]
# ## Data quality
# Rows dropped by the loader (only with `drop_invalid`), and images that are unusual for this
# data set: an outlier score fitted on the whole set flags blank, inverted, rotated or non-hand
# frames for a look by eye.

# %%
if paths.dropped_rows.exists():
    dropped = pd.read_csv(paths.dropped_rows)
    print(f"{len(dropped)} rows dropped by the loader; reasons:")
    display(dropped["reason"].value_counts())
else:
    print("no rows dropped: every row passed the loader's checks")

images = study.load_images(table, parameters)
reference = quality.QualityReference.fit(images)
table["quality_score"], table["quality_flag"] = reference.assess(images)
outliers = table[table["quality_flag"] != "ok"].sort_values("quality_score", ascending=False)
print(f"{len(outliers)} of {len(table)} images flagged as unusual ({len(outliers) / len(table):.1%})")
if len(outliers):
    shown = outliers.head(12)
    figure = plots.image_grid(
        images[shown.index], [f"{row.id}: {row.quality_flag}" for row in shown.itertuples()], ncols=6,
        title="Images flagged as unusual (most unusual first)",
    )
    figures.publish(figure, paths.figures, "quality_outliers")
