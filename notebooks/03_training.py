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
# budget, so that stage 04 can compare the two. The network is ours or a keras.applications
# backbone with our head (`architecture`), from random, ImageNet or a local file's weights
# (`init_weights`), optionally with the backbone frozen for the first epochs, in mixed precision
# and over several devices (`mixed_precision`, `distribution`), and with progressive resizing
# (the first epochs on smaller images: `progressive_image_size`, `progressive_epochs`). With
# `refit_on_validation`, the final network trains on train + validation for exactly `epochs`
# epochs and keeps the last.

# %% tags=["parameters"]
# A preset of presets.yaml and overrides of its parameters; the pipeline sets both.
# BONE_AGE_PRESET lets `jupyter nbconvert --execute` pick a preset without papermill.
import os

preset = os.environ.get("BONE_AGE_PRESET", "demo")
overrides = {}

# %%
import contextlib
import json

import keras
import numpy as np
import pandas as pd
from IPython.display import display

from utils import backbones, config, ensemble, evaluation, figures, model, plots, study, training
from utils.parameters import load_parameters
from utils.files import write_json_atomic

parameters = load_parameters(preset, overrides)
paths = config.RunPaths(parameters.run_name).make()
table = study.load_split_table(parameters, paths)
# image_cache mmap: the images stay in the cache file, and training reads each batch from it.
images = study.load_images(table, parameters, mmap=parameters.image_cache == "mmap")
train = study.split_arrays(table, images, "train")
validation = study.split_arrays(table, images, "validation")
if parameters.refit_on_validation:
    # The final network learns from the validation images too, for the epochs a run without the
    # refit chose on them; from here on their MAE is in-sample and chooses nothing.
    train = tuple(np.concatenate(arrays) for arrays in zip(train, validation))
    print("refit: the validation images join training; every model keeps its last epoch")
target_mean, target_std = float(train[2].mean()), float(train[2].std())
print(f"train {len(train[0]):,} · validation {len(validation[0]):,} images of "
      f"{parameters.image_size} px; target mean {target_mean:.1f} months, SD {target_std:.1f}")

# %% [markdown]
# ## The model

# %%
# Stops here, before anything is built, when the weights init_weights names are not on this machine.
initial_weights = backbones.resolve_init_weights(parameters.architecture, parameters.init_weights)
model.set_precision(parameters.mixed_precision)
strategy = model.distribution_strategy(parameters.distribution)
if strategy is not None:
    print(f"{strategy.num_replicas_in_sync} replica(s): {', '.join(strategy.extended.worker_devices)}; "
          f"{parameters.batch_size} images per step in all")


def in_scope():
    """Models whose variables the distribution strategy places (all of them, when there is one)."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def build(seed, architecture=None):
    """A network of this run, seeded, with its initial weights (the seed study's model starts at random)."""
    keras.utils.set_random_seed(seed)
    own = architecture is None
    with in_scope():
        built = model.build_for_run(parameters, target_mean=target_mean, target_std=target_std,
                                    architecture=architecture, backbone_weights=initial_weights.backbone if own else None)
    if own and initial_weights.run:
        print(model.load_initial_weights(built, initial_weights.run))
    return built


bone_age_model = build(parameters.seed)
# The layers that hold weights, compactly (Keras' own summary runs to a hundred lines); a
# keras.applications backbone is one row.
layer_rows = [(layer.name, type(layer).__name__, str(layer.output.shape[1:]), layer.count_params())
              for layer in bone_age_model.layers if layer.count_params()]
if parameters.architecture in backbones.SPECS:
    backbone_part = {layer.name for layer in model.backbone_layers(bone_age_model)}
    layer_rows = [(f"{parameters.architecture} ({len(backbone_part)} layers with weights)",
                   f"keras.applications.{backbones.SPECS[parameters.architecture].constructor}",
                   str(bone_age_model.get_layer(model.LAST_CONV_LAYER).output.shape[1:]),
                   sum(row[3] for row in layer_rows if row[0] in backbone_part))] \
        + [row for row in layer_rows if row[0] not in backbone_part]
display(pd.DataFrame(layer_rows, columns=["layer", "type", "output shape", "parameters"]).set_index("layer"))
print(f"{bone_age_model.count_params():,} parameters; initial weights: {parameters.init_weights or 'random'}")

# %% [markdown]
# ## Training
# One progress line per model, rewritten after each epoch; `history.json` and the checkpoints
# are rewritten atomically after each epoch. A table of the history follows each model.

# %%
class EpochLine(keras.callbacks.Callback):
    """One line of progress, updated in place after every epoch (the notebook keeps the last)."""

    def __init__(self, name):
        super().__init__()
        self.name, self.best = name, float("inf")
        self.handle = display({"text/plain": f"{name}: starting"}, raw=True, display_id=True)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.best = min(self.best, logs.get("val_mae", float("inf")))
        self.handle.update({"text/plain": (
            f"{self.name}: epoch {epoch + 1}/{parameters.epochs} · train MAE {logs.get('mae', float('nan')):.2f} · "
            f"validation MAE {logs.get('val_mae', float('nan')):.2f} (best {self.best:.2f}) months")}, raw=True)


def history_table(history, rows=8):
    """Some epochs of a history (evenly spaced, and the best), MAE in months."""
    columns = {"mae": "train MAE", "val_mae": "validation MAE", "loss": "train loss", "val_loss": "validation loss",
               "learning_rate": "learning rate"}
    frame = pd.DataFrame({label: history[key] for key, label in columns.items() if key in history},
                         index=pd.Index(history["epoch"], name="epoch"))
    keep = set(np.linspace(0, len(frame) - 1, min(rows, len(frame))).round().astype(int))
    if history.get("best_epoch"):
        keep.add(history["epoch"].index(history["best_epoch"]))
    return frame.iloc[sorted(keep)].round(4)


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
        training_options=parameters.training_options() if architecture != "seed_baseline" else None,
        progress=False,
        callbacks=(EpochLine(checkpoint_name.replace("_", " ")),),
        strategy=strategy,
        freeze_backbone_epochs=parameters.freeze_backbone_epochs if architecture != "seed_baseline" else 0,
        finetune_learning_rate_factor=parameters.finetune_learning_rate_factor,
        keep="last" if parameters.refit_on_validation else "best",
        progressive=parameters.progressive_schedule if architecture != "seed_baseline" else None,
    )


# The machine's speed beside the training throughput (machines of one kind differ by up to 2x).
machine_gflops = evaluation.matmul_gflops()
summary = fit(parameters.architecture, bone_age_model, "ours", paths.history, parameters.batch_size,
              parameters.peak_learning_rate, parameters.seed)
print(f"best epoch {summary['best_epoch']} · validation MAE {summary['best_val_mae']:.2f} months · "
      f"{summary['training_seconds'] / 60:.1f} min · {summary['train_images_per_second']:.0f} images/s · "
      f"stopped: {summary['stop_reason']}")
history_table(summary)

# %% [markdown]
# ## Ensemble members
# With `ensemble_members` > 1, more networks of the same design are trained with the seeds
# that follow, each with its own checkpoints and history; the model shipped is their average
# (`utils/ensemble.py`), one model with the same inputs and output.

# %%
members, member_summaries = [bone_age_model], [summary]
for index in range(2, parameters.ensemble_members + 1):
    member_seed = parameters.seed + index - 1
    member = build(member_seed)
    member_summary = fit(parameters.architecture, member, f"ours_member{index}", paths.member_history(index),
                         parameters.batch_size, parameters.peak_learning_rate, member_seed)
    print(f"member {index} (seed {member_seed}): best epoch {member_summary['best_epoch']} · validation MAE "
          f"{member_summary['best_val_mae']:.2f} months · {member_summary['training_seconds'] / 60:.1f} min")
    members.append(member)
    member_summaries.append(member_summary)
# The network shipped takes image_size (after progressive resizing, training took any side), with
# RepVGG blocks folded into one 3x3 conv each (the same predictions, a plain network).
members = [model.for_inference(member, parameters, target_mean=target_mean, target_std=target_std) for member in members]
bone_age_model = ensemble.average(members)
if parameters.mixed_precision != "none":
    # Shipped in float32: the same weights, for any CPU and the ONNX export.
    bone_age_model = model.to_float32(bone_age_model)
bone_age_model.save(paths.model)

# %% [markdown]
# ## The seed study's model, same split, same budget
# Its own optimiser settings (Adam 1e-3, batches of 32, MAE loss), our epochs and time budget.

# %%
baseline_summary = None
if parameters.train_seed_baseline:
    baseline_model = build(parameters.seed, architecture="seed_baseline")
    baseline_summary = fit(
        "seed_baseline", baseline_model, "seed_baseline", paths.baseline_history, seed=parameters.seed,
        **model.SEED_BASELINE_TRAINING,
    )
    (model.to_float32(baseline_model) if parameters.mixed_precision != "none" else baseline_model).save(
        paths.baseline_model)
    print(f"seed baseline: best epoch {baseline_summary['best_epoch']} · validation MAE "
          f"{baseline_summary['best_val_mae']:.2f} months · {baseline_summary['training_seconds'] / 60:.1f} min")
    display(history_table(baseline_summary))
_ = write_json_atomic(
    paths.training_summary,
    {"ours": summary, "members": member_summaries, "seed_baseline": baseline_summary, "target_mean": target_mean,
     "target_std": target_std, "numpy_fp32_matmul_gflops": machine_gflops},
)

# %% [markdown]
# ## Learning curves
# Mean absolute error in months per epoch on the training images (augmented) and the validation
# images, both models on one axis; the star marks the epoch kept. Our own loss is drawn apart:
# the two models minimise different functions, whose values are not comparable.

# %%
baseline_history = json.loads(paths.baseline_history.read_text()) if baseline_summary else None
loss_name = (f"Huber, delta {parameters.huber_delta:g} SD = {parameters.huber_delta * target_std:.0f} months"
             if parameters.loss == "huber" else "L1, i.e. MAE in months")
figure = plots.learning_curves(json.loads(paths.history.read_text()), baseline_history, loss_name=loss_name)
figures.publish(figure, paths.figures, "learning_curves")
