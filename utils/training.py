"""Fit a bone-age model with a time budget, early stopping, and checkpoints that survive interruption.

Files in `checkpoint_dir`: `best.keras` (best validation MAE so far), `last.keras` (after every
epoch, with the optimizer state) and `state.json` (completed epochs, history, training seconds).
Calling `train_model` again with the same arguments after an interruption continues from the
last completed epoch; a run that already finished (all epochs, early stopping, or budget) is
not trained further, only its best weights are loaded. More epochs, another patience or budget
extend a run; another network, batch size, learning rate, seed or training set is refused,
because resuming would silently keep weights trained for something else.

Reproducibility on CPU: `keras.utils.set_random_seed(seed)` fixes weight initialisation (when
called before `build_model`), shuffling, dropout and augmentation draws. On one machine that
was enough: two rsna100 runs gave bit-identical histories over 40 epochs
(results/benchmarks/reproducibility.json). TensorFlow does not promise it: oneDNN may pick
other kernels, and so another summation order, on another CPU or thread count, and the
difference then grows over epochs. `tf.config.experimental.enable_op_determinism()` would
promise it, at the cost of slower kernels; it is left off. A time budget that stops training
makes the result depend on the machine's speed, and a resumed run reshuffles from a new
iterator, so both match an uninterrupted run statistically, not bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from utils.files import atomic_path, write_json_atomic
from utils.model import compile_model

MONITOR = "val_mae"  # validation MAE in months


def make_dataset(images: np.ndarray, male: np.ndarray, boneage: np.ndarray, *, batch_size: int, shuffle: bool, seed: int = 0) -> tf.data.Dataset:
    """Batches of ({"image": float32 (S, S, 1), "male": float32 (1,)}, months) from uint8 arrays."""
    images = np.asarray(images)
    if images.ndim != 3 or not len(images) == len(male) == len(boneage):
        raise ValueError(
            f"expected images (N, S, S), male (N,) and boneage (N,), got {images.shape}, {np.shape(male)}, {np.shape(boneage)}"
        )
    dataset = tf.data.Dataset.from_tensor_slices(
        (images, np.asarray(male, np.float32).reshape(-1, 1), np.asarray(boneage, np.float32).reshape(-1, 1))
    )
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)

    def to_inputs(image, male, age):
        return {"image": tf.cast(image, tf.float32)[..., tf.newaxis], "male": male}, age

    # Casting after batching keeps the shuffle buffer in uint8 (4x smaller).
    return dataset.batch(batch_size).map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def train_model(
    model: keras.Model,
    train: tuple,
    validation: tuple,
    *,
    checkpoint_dir,
    history_path,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    seed: int,
    time_budget_seconds: float | None = None,
    architecture: str = "ours",
    training_options: dict | None = None,
    progress: bool = True,
    callbacks: tuple = (),
) -> dict:
    """Compile and fit `model` on (images uint8 (N,S,S), male (N,), boneage (N,)) tuples; returns the history.

    Ends with the best validation-MAE weights in `model`. The history (per-epoch lists plus
    best_epoch, best_val_mae, stop_reason, training_seconds, train_images_per_second) is
    written as JSON to `history_path`. `training_options` go to `compile_model` (loss, weight
    decay, EMA: `Parameters.training_options()`). `callbacks` are extra Keras callbacks.
    """
    checkpoint_dir = Path(checkpoint_dir)
    training_options = dict(training_options or {})
    keras.utils.set_random_seed(seed)
    settings = _resume_settings(
        model, architecture=architecture, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        train_size=len(train[0]), train_data_sha256=_data_fingerprint(train), training_options=training_options,
    )
    steps_per_epoch = math.ceil(len(train[0]) / batch_size)
    compile_model(model, architecture=architecture, learning_rate=learning_rate, steps_per_epoch=steps_per_epoch,
                  epochs=epochs, **training_options)
    _remove_leftover_temporaries(checkpoint_dir)
    state = _resume(model, checkpoint_dir, settings)
    history = state["history"]
    record = _EpochRecorder(checkpoint_dir, history_path, history, state["training_seconds"], settings)
    stop_reason = _stop_reason(history, record.training_seconds, epochs=epochs, patience=patience, budget=time_budget_seconds)
    if stop_reason is None:
        # With EMA, validation and best.keras use the averaged weights: last.keras (and the
        # optimizer state) are written first with the raw ones, then the averages are swapped in.
        keep_best = _BestKeeper(record)
        epoch_end = [record, keras.callbacks.SwapEMAWeights(swap_on_epoch=True), keep_best] if training_options.get("ema") \
            else [record, keep_best]
        model.fit(
            make_dataset(*train, batch_size=batch_size, shuffle=True, seed=seed),
            validation_data=make_dataset(*validation, batch_size=max(batch_size, 256), shuffle=False),
            epochs=epochs,
            initial_epoch=len(history.get("epoch", [])),
            callbacks=[*epoch_end, _StopRule(record, epochs=epochs, patience=patience, budget=time_budget_seconds), *callbacks],
            verbose=2 if progress else 0,
            shuffle=False,  # make_dataset shuffles; Keras cannot shuffle a tf.data.Dataset
        )
        stop_reason = _stop_reason(history, record.training_seconds, epochs=epochs, patience=patience, budget=time_budget_seconds)
    model.load_weights(checkpoint_dir / "best.keras")
    return record.finish(stop_reason)


def _data_fingerprint(arrays: tuple) -> str:
    """SHA-256 of the training images, sex flags and ages: the same size of other data must not resume."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _remove_leftover_temporaries(checkpoint_dir: Path) -> None:
    """Temporary files of a save that a kill interrupted (utils.files.atomic_path names them `.<stem>.*`)."""
    for stem in ("best", "last", "state"):
        for leftover in checkpoint_dir.glob(f".{stem}.*"):
            leftover.unlink(missing_ok=True)


def _resume_settings(model: keras.Model, **settings) -> dict:
    """What a checkpoint must have been trained with to be resumed: the network (its whole
    configuration, target scaling included) and how it was fed."""
    # get_config, not to_json: the compiled configuration holds the schedule, which more epochs change.
    network = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True).encode()).hexdigest()
    return {"network_sha256": network, **settings}


def _resume(model: keras.Model, checkpoint_dir: Path, settings: dict) -> dict:
    """Restore weights and optimizer state from last.keras; the saved state, or a fresh one."""
    state_file, last = checkpoint_dir / "state.json", checkpoint_dir / "last.keras"
    if not (state_file.exists() and last.exists()):
        return {"history": {}, "training_seconds": 0.0}
    state = json.loads(state_file.read_text(encoding="utf-8"))
    saved_settings = state.get("settings", {})
    changed = sorted(name for name in settings if saved_settings.get(name) != settings[name])
    if changed:
        raise ValueError(
            f"{checkpoint_dir} holds a run trained with other settings ({', '.join(changed)} differ); "
            "delete that folder to start again, or give the run another run_name"
        )
    saved = keras.models.load_model(last)
    model.set_weights(saved.get_weights())
    model.optimizer.build(model.trainable_variables)
    if len(model.optimizer.variables) != len(saved.optimizer.variables):
        raise ValueError(f"{last}: optimizer state does not match the model being trained (another architecture?)")
    for variable, value in zip(model.optimizer.variables, saved.optimizer.variables):
        variable.assign(value)
    return state


def _epochs_since_best(history: dict) -> int:
    values = history.get(MONITOR, [])
    return len(values) - 1 - int(np.argmin(values)) if values else 0


def _stop_reason(history, training_seconds, *, epochs, patience, budget):
    """Why training must not start another epoch, or None.

    The budget stops training when the next epoch (estimated by the last one) would end past it.
    """
    completed = len(history.get("epoch", []))
    if completed >= epochs:
        return "epochs"
    if completed and _epochs_since_best(history) >= patience:
        return "early_stopping"
    if budget is not None and completed:
        if training_seconds + history["epoch_seconds"][-1] > budget:
            return "time_budget"
    return None


def _save_atomic(model: keras.Model, destination: Path) -> None:
    """The whole model, optimizer state included, so that it can resume."""
    with atomic_path(destination) as temporary:
        model.save(temporary)


class _EpochRecorder(keras.callbacks.Callback):
    """After each epoch: extend the history, write last.keras + state.json + history (`_BestKeeper` keeps best.keras)."""

    def __init__(self, checkpoint_dir: Path, history_path, history: dict, training_seconds: float, settings: dict):
        super().__init__()
        self.checkpoint_dir, self.history_path = checkpoint_dir, Path(history_path)
        self.history, self.training_seconds, self.settings = history, training_seconds, settings

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.epoch_start
        self.training_seconds += seconds
        entry = {
            "epoch": epoch + 1,
            **{name: float(value) for name, value in (logs or {}).items()},
            "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "epoch_seconds": seconds,
            "epoch_images_per_second": self.settings["train_size"] / seconds,  # includes the validation pass
        }
        for name, value in entry.items():
            self.history.setdefault(name, []).append(value)
        _save_atomic(self.model, self.checkpoint_dir / "last.keras")
        write_json_atomic(
            self.checkpoint_dir / "state.json",
            {"history": self.history, "training_seconds": self.training_seconds, "settings": self.settings},
        )
        write_json_atomic(self.history_path, self.history)

    def finish(self, stop_reason: str) -> dict:
        values = self.history.get(MONITOR, [])
        best = int(np.argmin(values)) if values else None
        self.history.update(
            best_epoch=None if best is None else best + 1,
            best_val_mae=None if best is None else values[best],
            stop_reason=stop_reason,
            training_seconds=self.training_seconds,
            train_images_per_second=(len(values) * self.settings["train_size"] / self.training_seconds) if values else None,
        )
        write_json_atomic(self.history_path, self.history)
        return self.history


class _BestKeeper(keras.callbacks.Callback):
    """best.keras after an epoch that improved the validation MAE (a separate callback so that,
    with EMA, it runs after the averaged weights are swapped in)."""

    def __init__(self, recorder: _EpochRecorder):
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch, logs=None):
        if _epochs_since_best(self.recorder.history) == 0:
            _save_atomic(self.model, self.recorder.checkpoint_dir / "best.keras")


class _StopRule(keras.callbacks.Callback):
    """Early stopping on validation MAE (patience counted over resumed epochs too) and the time budget."""

    def __init__(self, recorder: _EpochRecorder, *, epochs: int, patience: int, budget: float | None):
        super().__init__()
        self.recorder, self.epochs, self.patience, self.budget = recorder, epochs, patience, budget

    def on_epoch_end(self, epoch, logs=None):
        reason = _stop_reason(self.recorder.history, self.recorder.training_seconds, epochs=self.epochs, patience=self.patience, budget=self.budget)
        if reason in ("early_stopping", "time_budget"):
            self.model.stop_training = True
