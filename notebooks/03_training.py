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
# # 03 · Training
#
# A convolutional network takes the preprocessed radiograph and the sex and predicts bone age.
# It learns a standardised target (z-scored with the training mean and SD) and outputs months.
# Training stops early on validation MAE and keeps the best epoch; a checkpoint after every epoch
# lets an interrupted run continue where it stopped (rerun the same command). With
# `train_seed_baseline`, the seed study's model is trained on the same split under the same
# budget, so that stage 04 can compare the two.

# %% tags=["parameters"]
# A preset of presets.yaml and overrides of its parameters; the pipeline sets both.
# BONE_AGE_PRESET lets `jupyter nbconvert --execute` pick a preset without papermill.
import os

preset = os.environ.get("BONE_AGE_PRESET", "demo")
overrides = {}

# %%
import json

import keras

from utils import config, ensemble, evaluation, figures, model, plots, study, training
from utils.parameters import load_parameters
from utils.files import write_json_atomic

parameters = load_parameters(preset, overrides)
paths = config.RunPaths(parameters.run_name).make()
table = study.load_split_table(parameters, paths)
images = study.load_images(table, parameters)
train = study.split_arrays(table, images, "train")
validation = study.split_arrays(table, images, "validation")
target_mean, target_std = float(train[2].mean()), float(train[2].std())
print(f"train {len(train[0]):,} · validation {len(validation[0]):,} images of "
      f"{parameters.image_size} px; target mean {target_mean:.1f} months, SD {target_std:.1f}")

# %% [markdown]
# ## The model

# %%
keras.utils.set_random_seed(parameters.seed)
bone_age_model = model.build_for_run(parameters, target_mean=target_mean, target_std=target_std)
if parameters.init_weights:
    print(model.load_initial_weights(bone_age_model, config.PROJECT_ROOT / parameters.init_weights))
bone_age_model.summary()

# %% [markdown]
# ## Training
# Progress is printed per epoch; `history.json` and the checkpoints are rewritten atomically
# after each epoch.

# %%
def fit(architecture, built_model, checkpoint_name, history_path, batch_size, learning_rate, seed):
    """Train one model of this run and return its history with the training summary."""
    return training.train_model(
        built_model,
        train=train,
        validation=validation,
        checkpoint_dir=paths.checkpoints / checkpoint_name,
        history_path=history_path,
        architecture=architecture,
        epochs=parameters.epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=parameters.patience,
        time_budget_seconds=parameters.time_budget_seconds,
        seed=seed,
        training_options=parameters.training_options() if architecture == "ours" else None,
    )


# The machine's speed beside the training throughput (machines of one kind differ by up to 2x).
machine_gflops = evaluation.matmul_gflops()
summary = fit(parameters.architecture, bone_age_model, "ours", paths.history, parameters.batch_size,
              parameters.learning_rate, parameters.seed)
print(f"best epoch {summary['best_epoch']} · validation MAE {summary['best_val_mae']:.2f} months · "
      f"{summary['training_seconds'] / 60:.1f} min · {summary['train_images_per_second']:.0f} images/s")

# %% [markdown]
# ## Ensemble members
# With `ensemble_members` > 1, more networks of the same design are trained with the seeds
# that follow, each with its own checkpoints and history; the model shipped is their average
# (`utils/ensemble.py`), one model with the same inputs and output.

# %%
members, member_summaries = [bone_age_model], [summary]
for index in range(2, parameters.ensemble_members + 1):
    member_seed = parameters.seed + index - 1
    keras.utils.set_random_seed(member_seed)
    member = model.build_for_run(parameters, target_mean=target_mean, target_std=target_std)
    member_summary = fit(parameters.architecture, member, f"ours_member{index}", paths.member_history(index),
                         parameters.batch_size, parameters.learning_rate, member_seed)
    print(f"member {index} (seed {member_seed}): best epoch {member_summary['best_epoch']} · validation MAE "
          f"{member_summary['best_val_mae']:.2f} months · {member_summary['training_seconds'] / 60:.1f} min")
    members.append(member)
    member_summaries.append(member_summary)
bone_age_model = ensemble.average(members)
bone_age_model.save(paths.model)

# %% [markdown]
# ## The seed study's model, same split, same budget
# Its own optimiser settings (Adam 1e-3, batches of 32, MAE loss), our epochs and time budget.

# %%
baseline_summary = None
if parameters.train_seed_baseline:
    keras.utils.set_random_seed(parameters.seed)
    baseline_model = model.build_for_run(
        parameters, architecture="seed_baseline", target_mean=target_mean, target_std=target_std
    )
    baseline_summary = fit(
        "seed_baseline", baseline_model, "seed_baseline", paths.baseline_history, **model.SEED_BASELINE_TRAINING
    )
    baseline_model.save(paths.baseline_model)
    print(f"seed baseline: best epoch {baseline_summary['best_epoch']} · validation MAE "
          f"{baseline_summary['best_val_mae']:.2f} months · {baseline_summary['training_seconds'] / 60:.1f} min")
write_json_atomic(
    paths.training_summary,
    {"ours": summary, "members": member_summaries, "seed_baseline": baseline_summary, "target_mean": target_mean,
     "target_std": target_std, "numpy_fp32_matmul_gflops": machine_gflops},
)

# %% [markdown]
# ## Learning curves
# Mean absolute error in months per epoch on the training images (augmented) and the validation
# images; the marker is the epoch kept.

# %%
baseline_history = json.loads(paths.baseline_history.read_text()) if baseline_summary else None
figure = plots.learning_curves(json.loads(paths.history.read_text()), baseline_history)
figures.publish(figure, paths.figures, "learning_curves")
