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
# # 06 · Comparison of runs
#
# A sweep (`python -m utils.pipeline --sweep ...` or `--folds K`) runs one ordinary study per
# combination of its values, then this notebook over the runs that finished. It reads each
# run's `performance_metrics.json` and `predictions_test.csv` and writes, to
# `results/<sweep>/`, `comparison.csv` (one row per run, the numbers of its metrics file),
# `comparison.md` and the figure of MAE per run. Is a difference real? Two runs scored on the
# same test images share that split's sampling noise, so the paired bootstrap interval of their
# MAE difference is the one to read; seeds show how much a run varies by chance alone.

# %% tags=["parameters"]
# The sweep's folder (results/<sweep>/), the runs to compare (names under results/) and the
# reference of the paired differences (default: the first run); the sweep sets all three.
sweep = "comparison"
runs = []
reference = None

# %%
from IPython.display import Markdown, display

from utils import comparison, config, figures, plots

paths = config.RunPaths(sweep)
compared = [comparison.load_run(name) for name in runs]
table = comparison.comparison_table(compared, reference)
varying = table.attrs["varying"]
print(f"{len(compared)} runs; they differ in: {', '.join(varying) or 'nothing but their names'}; "
      f"reference {table.attrs['reference']!r}")

# %% [markdown]
# ## Each run
# Headline test metrics with the 95% bootstrap interval of the MAE, and the run's MAE minus the
# reference's on the same test images with its paired bootstrap 95% interval (empty for a run
# scored on other images: another data set, `data_seed` or fold).

# %%
columns = ["run", *varying, "n", "mae", "mae_low", "mae_high", "rmse", "bias", "within_12_pct",
           "interval_coverage_pct", "mae_vs_reference", "mae_vs_reference_low", "mae_vs_reference_high"]
table[columns].round(3)

# %% [markdown]
# ## Over seeds, over folds
# With runs that differ in `seed`: the mean and SD of each number over the seeds (for each
# combination of the other swept values). With runs that differ in `fold` (a cross-validation):
# the metrics of the pooled out-of-fold predictions, each image predicted by the run whose test
# fold held it.

# %%
seeds = comparison.over_seeds(table)
pooled = comparison.pooled_out_of_fold(compared)
if seeds is not None:
    display(seeds.round(3))
if pooled is not None:
    display(pooled.round(3))
if seeds is None and pooled is None:
    print("the runs differ in neither seed nor fold")

# %% [markdown]
# ## MAE per run

# %%
figure = plots.mae_per_run(table["run"], table["mae"], table["mae_low"], table["mae_high"],
                           table["mae_vs_reference"], table["mae_vs_reference_low"], table["mae_vs_reference_high"],
                           reference=table.attrs["reference"])
figures.publish(figure, paths.figures, "mae_per_run")

# %% [markdown]
# ## comparison.csv and comparison.md

# %%
markdown = comparison.to_markdown(table, seeds, pooled, title=f"Comparison: {sweep}")
written = comparison.write_comparison(paths, table, markdown)
print("wrote", ", ".join(config.display_path(path) for path in written))
display(Markdown(markdown))
