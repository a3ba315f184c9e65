"""Fit a bone-age model with a time budget, early stopping, and checkpoints that survive interruption.

Files in `checkpoint_dir`: `best.keras` (best validation MAE so far), `last.keras` (after every
epoch, with the optimizer state) and `state.json` (completed epochs, history, training seconds,
the epoch best.keras holds). After each epoch the models are written first, under names of that
epoch (`last.epoch0007.keras`, `best.epoch0007.keras`), then state.json, which records the epoch
(the commit), then they are renamed into place. A kill at any point leaves either a committed
epoch whose renames the next start finishes, or an uncommitted one whose files it deletes, so
best.keras and state.json always agree.
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

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from utils.files import atomic_path, write_json_atomic
from utils.model import backbone_layers, compile_model
from utils.preprocessing import CachedRows

MONITOR = "val_mae"  # validation MAE in months
KEEP = ("best", "last")  # the epoch train_model ends with


def make_dataset(images: np.ndarray, male: np.ndarray, boneage: np.ndarray, *, batch_size: int, shuffle: bool, seed: int = 0) -> tf.data.Dataset:
    """Batches of ({"image": float32 (S, S, 1), "male": float32 (1,)}, months) from uint8 arrays.

    Images of a memory-mapped cache (np.memmap, `preprocessing.CachedRows`) stay on disk: the
    dataset shuffles row numbers (the same permutation as the images would get) and reads each
    batch's rows when it is needed, so the batches, and so training, are the same as in memory.
    """
    if isinstance(images, (np.memmap, CachedRows)):
        return _out_of_core_dataset(images, male, boneage, batch_size=batch_size, shuffle=shuffle, seed=seed)
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


def _out_of_core_dataset(images, male, boneage, *, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    rows = images if isinstance(images, CachedRows) else CachedRows(images, np.arange(len(images)))
    if rows.ndim != 3 or not len(rows) == len(male) == len(boneage):
        raise ValueError(
            f"expected images (N, S, S), male (N,) and boneage (N,), got {rows.shape}, {np.shape(male)}, {np.shape(boneage)}"
        )
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(rows), dtype=np.int64), np.asarray(male, np.float32).reshape(-1, 1),
         np.asarray(boneage, np.float32).reshape(-1, 1))
    )
    if shuffle:
        dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    side = rows.shape[1:]

    def to_inputs(index, male, age):
        image = tf.numpy_function(lambda batch: rows[batch], [index], tf.uint8, stateful=False)
        image = tf.ensure_shape(image, (None, *side))
        return {"image": tf.cast(image, tf.float32)[..., tf.newaxis], "male": male}, age

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
    strategy=None,
    freeze_backbone_epochs: int = 0,
    finetune_learning_rate_factor: float = 1.0,
    keep: str = "best",
    progressive: tuple[int, int] | None = None,
) -> dict:
    """Compile and fit `model` on (images uint8 (N,S,S), male (N,), boneage (N,)) tuples; returns the history.

    Ends with the best validation-MAE weights in `model`. The history (per-epoch lists plus
    best_epoch, best_val_mae, stop_reason, training_seconds, train_images_per_second) is
    written as JSON to `history_path`. `training_options` go to `compile_model` (loss, weight
    decay, EMA: `Parameters.training_options()`). `callbacks` are extra Keras callbacks.

    `strategy` (model.distribution_strategy; the model must have been built in its scope):
    `batch_size` is global, each replica gets its share of every batch, so the optimisation is
    that of one device with the same batch (the learning rate needs no change; scale it with
    batch_size, `Parameters.peak_learning_rate`). BatchNorm is synchronised across replicas while
    it trains (Keras' per-replica moving statistics drift apart otherwise, and the replicas then
    predict differently); checkpoints, resume and the time budget work as without it.
    `freeze_backbone_epochs`: the layers before the pooling (`model.backbone_layers`) are frozen for
    that many epochs, then the whole network trains at `finetune_learning_rate_factor` times the
    schedule's learning rate; checkpoints hold the whole network trainable, so any epoch resumes.
    `keep`: "best" ends with the epoch of lowest validation MAE (early stopping watches it); "last"
    with the final epoch and no early stopping, for a network refitted on train + validation, whose
    validation MAE is in-sample and must not choose (`best_epoch` is then the last epoch).
    `progressive` (side, epochs): progressive resizing, the first `epochs` epochs on the training
    images shrunk to `side` px (the model must take any side: `model.build_model(any_size=True)`),
    then the rest at full size; validation is always at full size, so every epoch's validation MAE
    is what the network scores as shipped. The schedule runs on across the switch.
    """
    if keep not in KEEP:
        raise ValueError(f"keep: expected {' or '.join(KEEP)}, got {keep!r}")
    if progressive and (training_options or {}).get("ema"):
        # Each phase's fit ends by writing the averaged weights into the model, for good.
        raise ValueError("progressive resizing cannot be combined with ema")
    checkpoint_dir = Path(checkpoint_dir)
    training_options = dict(training_options or {})
    keras.utils.set_random_seed(seed)
    settings = _resume_settings(
        model, architecture=architecture, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        train_size=len(train[0]), train_data_sha256=_data_fingerprint(train), training_options=training_options,
    )
    steps_per_epoch = math.ceil(len(train[0]) / batch_size)
    frozen = backbone_layers(model) if freeze_backbone_epochs else []
    if frozen:  # recorded only then, so that the checkpoints of other runs keep resuming
        settings.update(freeze_backbone_epochs=freeze_backbone_epochs,
                        finetune_learning_rate_factor=finetune_learning_rate_factor)
    if keep != "best":  # likewise
        settings.update(keep=keep)
    if progressive:  # likewise
        settings.update(progressive=list(progressive))
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        compile_model(model, architecture=architecture, learning_rate=learning_rate, steps_per_epoch=steps_per_epoch,
                      epochs=epochs, **training_options, freeze_steps=steps_per_epoch * freeze_backbone_epochs if frozen else 0,
                      finetune_factor=finetune_learning_rate_factor)
        if frozen:  # the optimizer holds state for every weight, frozen or not
            model.optimizer.build(model.trainable_variables)
        _remove_leftover_temporaries(checkpoint_dir)
        _settle_checkpoints(checkpoint_dir)
        state = _resume(model, checkpoint_dir, settings, ema=bool(training_options.get("ema")), keep=keep)
    history = state["history"]
    record = _EpochRecorder(checkpoint_dir, history_path, history, state["training_seconds"], settings, keep=keep,
                            best_keras_epoch=state.get("best_keras_epoch", _best_epoch(history, keep)))
    # After the small images, an epoch takes about (full side / small side)^2 as long.
    growth = (progressive[1], (train[0].shape[1] / progressive[0]) ** 2) if progressive else None
    stop_rule = _StopRule(record, epochs=epochs, patience=patience, budget=time_budget_seconds, growth=growth)
    stop_reason = stop_rule.reason()
    if stop_reason is None:
        # With EMA, validation and best.keras use the averaged weights: last.keras (and the
        # optimizer state) are written first with the raw ones, then the averages are swapped in.
        keep_best, commit = _BestKeeper(record), _Commit(record)
        epoch_end = [record, keras.callbacks.SwapEMAWeights(swap_on_epoch=True), keep_best, commit] \
            if training_options.get("ema") else [record, keep_best, commit]
        validation_data = make_dataset(*validation, batch_size=max(batch_size, 256), shuffle=False)
        # Phases of (last epoch, side of the training images): one fit each, resumed like one.
        phases = [(min(progressive[1], epochs), progressive[0]), (epochs, None)] if progressive else [(epochs, None)]
        with _fine_tuning(model, frozen, freeze_backbone_epochs, len(history.get("epoch", []))) as freezing, \
                _synchronised_batchnorm(model, strategy):
            for phase, (phase_end, side) in enumerate(phases):
                initial_epoch = len(history.get("epoch", []))
                if initial_epoch >= phase_end:
                    continue
                # Each phase its own shuffle seed: the full-size epochs do not replay the small ones' orders.
                model.fit(
                    _shrunk(make_dataset(*train, batch_size=batch_size, shuffle=True, seed=seed + phase), side),
                    validation_data=validation_data,
                    epochs=phase_end,
                    initial_epoch=initial_epoch,
                    callbacks=[*freezing, *epoch_end, stop_rule, *callbacks],
                    verbose=2 if progress else 0,
                    shuffle=False,  # make_dataset shuffles; Keras cannot shuffle a tf.data.Dataset
                )
                stop_reason = stop_rule.reason()
                if stop_reason is not None:  # early stopping or the budget ended this phase; or all epochs ran
                    break
    model.load_weights(checkpoint_dir / "best.keras")
    return record.finish(stop_reason)


def _shrunk(dataset: tf.data.Dataset, side: int | None) -> tf.data.Dataset:
    """`dataset`'s images resized to `side` px (area averaging, as for any downscaling), or `dataset`."""
    if side is None:
        return dataset

    def shrink(inputs, age):
        return {**inputs, "image": tf.image.resize(inputs["image"], (side, side), method="area")}, age

    return dataset.map(shrink, num_parallel_calls=tf.data.AUTOTUNE)


@contextlib.contextmanager
def _fine_tuning(model: keras.Model, frozen: list, freeze_epochs: int, initial_epoch: int):
    """The callbacks of `fit` that freeze `frozen` for the first `freeze_epochs` epochs (none without
    them); the whole network is trainable again afterwards, however `fit` ends."""
    if not frozen:
        yield []
        return
    freezer = _FreezeBackbone(frozen, freeze_epochs)
    freezer.set_frozen(initial_epoch < freeze_epochs)  # before fit traces its train step
    freezer.traced_frozen = initial_epoch < freeze_epochs
    try:
        yield [freezer]
    finally:
        freezer.set_frozen(False)


class _FreezeBackbone(keras.callbacks.Callback):
    """Frozen layers during the first epochs. A changed set of trainable weights needs a new train
    step (the traced one captured the old set). Each epoch ends with everything trainable again,
    before the checkpoint callbacks save, so that every checkpoint loads with the same optimizer."""

    def __init__(self, frozen: list, freeze_epochs: int):
        super().__init__()
        self.frozen, self.freeze_epochs, self.traced_frozen = frozen, freeze_epochs, None

    def set_frozen(self, frozen: bool) -> None:
        for layer in self.frozen:
            layer.trainable = not frozen

    def on_epoch_begin(self, epoch, logs=None):
        frozen = epoch < self.freeze_epochs
        self.set_frozen(frozen)
        if frozen != self.traced_frozen:
            self.model.make_train_function(force=True)
            self.traced_frozen = frozen

    def on_epoch_end(self, epoch, logs=None):
        self.set_frozen(False)


@contextlib.contextmanager
def _synchronised_batchnorm(model: keras.Model, strategy):
    """BatchNorm over the global batch while training on several replicas (TensorFlow's
    SyncBatchNorm); restored afterwards, so that the saved model is the ordinary one."""
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)] \
        if replicas > 1 else []
    for layer in layers:
        layer.synchronized = True
    try:
        yield
    finally:
        for layer in layers:
            layer.synchronized = False


def _all_layers(layer):
    for child in getattr(layer, "layers", []):
        yield child
        yield from _all_layers(child)


def _data_fingerprint(arrays: tuple) -> str:
    """SHA-256 of the training images, sex flags and ages: the same size of other data must not resume."""
    digest = hashlib.sha256()
    for array in arrays:
        rows = array if isinstance(array, CachedRows) else None
        array = array if rows is not None else np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{tuple(array.shape)}".encode())
        # Row blocks of a memory-mapped cache: the same bytes, so the same digest, in bounded memory.
        for block in (rows.chunks() if rows is not None else [array]):
            digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()


def _remove_leftover_temporaries(checkpoint_dir: Path) -> None:
    """Temporary files of a save that a kill interrupted (utils.files.atomic_path names them `.<stem>.*`)."""
    for stem in ("best", "last", "state"):
        for leftover in checkpoint_dir.glob(f".{stem}.*"):
            leftover.unlink(missing_ok=True)


PENDING = re.compile(r"(last|best)\.epoch(\d+)\.keras")


def _pending(checkpoint_dir: Path, kind: str, epoch: int) -> Path:
    """Where an epoch's model is written before state.json commits it (kind: "last" or "best")."""
    return checkpoint_dir / f"{kind}.epoch{epoch:04d}.keras"


def _promote(checkpoint_dir: Path, epoch: int) -> None:
    """After the commit: an epoch's models become last.keras and best.keras."""
    for kind in ("last", "best"):
        pending = _pending(checkpoint_dir, kind, epoch)
        if pending.exists():
            os.replace(pending, checkpoint_dir / f"{kind}.keras")


def _settle_checkpoints(checkpoint_dir: Path) -> None:
    """Finish the renames of an epoch that state.json committed, delete the files of one it did not."""
    state_file = checkpoint_dir / "state.json"
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else {}
    committed = state.get("checkpoint_epoch")
    finished, discarded = set(), set()
    for pending in sorted(checkpoint_dir.glob("*.epoch*.keras")):
        match = PENDING.fullmatch(pending.name)
        if not match:
            continue
        kind, epoch = match.group(1), int(match.group(2))
        if epoch == committed and (kind == "last" or state.get("best_keras_epoch") == epoch):
            os.replace(pending, checkpoint_dir / f"{kind}.keras")
            finished.add(epoch)
        else:
            pending.unlink()
            discarded.add(epoch)
    for epoch in sorted(finished):
        print(f"{checkpoint_dir}: finished saving epoch {epoch}, which a stop interrupted after it was recorded")
    for epoch in sorted(discarded):
        print(f"{checkpoint_dir}: epoch {epoch} was stopped before it was recorded; it is trained again")


def _check_best(checkpoint_dir: Path, state: dict, ema: bool, keep: str = "best") -> None:
    """best.keras must hold the epoch the history names best; checkpoints of older code that a kill
    left with an older best.keras are repaired from last.keras where that is the same model."""
    values = state["history"].get(MONITOR, [])
    if not values:
        return
    best_epoch = _best_epoch(state["history"], keep)
    best, last = checkpoint_dir / "best.keras", checkpoint_dir / "last.keras"
    if "best_keras_epoch" in state:
        if state["best_keras_epoch"] != best_epoch or not best.exists():
            raise ValueError(
                f"{checkpoint_dir}: best.keras holds epoch {state['best_keras_epoch']} but the history's best is "
                f"epoch {best_epoch}; delete that folder to start again"
            )
        return
    # Older checkpoints wrote best.keras after state.json: a kill between them left it behind.
    if best_epoch == len(values) and (not best.exists() or best.stat().st_mtime_ns < last.stat().st_mtime_ns):
        if ema:
            raise ValueError(f"{checkpoint_dir}: best.keras is older than the best epoch ({best_epoch}) the history "
                             "records (a kill while saving); delete that folder to start again")
        shutil.copyfile(last, best)
        print(f"{checkpoint_dir}: best.keras repaired from last.keras (epoch {best_epoch}, the best)")


def _resume_settings(model: keras.Model, **settings) -> dict:
    """What a checkpoint must have been trained with to be resumed: the network (its whole
    configuration, target scaling included) and how it was fed."""
    # get_config, not to_json: the compiled configuration holds the schedule, which more epochs change.
    network = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True).encode()).hexdigest()
    return {"network_sha256": network, **settings}


def _resume(model: keras.Model, checkpoint_dir: Path, settings: dict, ema: bool = False, keep: str = "best") -> dict:
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
    _check_best(checkpoint_dir, state, ema, keep)
    saved = keras.models.load_model(last)
    model.set_weights(saved.get_weights())
    model.optimizer.build(model.trainable_variables)
    if len(model.optimizer.variables) != len(saved.optimizer.variables):
        raise ValueError(f"{last}: optimizer state does not match the model being trained (another architecture?)")
    for variable, value in zip(model.optimizer.variables, saved.optimizer.variables):
        variable.assign(value)
    return state


def _kept_index(history: dict, keep: str = "best") -> int | None:
    """The 0-based epoch `keep` keeps so far: the lowest validation MAE, or the last epoch."""
    values = history.get(MONITOR, [])
    if not values:
        return None
    return len(values) - 1 if keep == "last" else int(np.argmin(values))


def _best_epoch(history: dict, keep: str = "best") -> int | None:
    index = _kept_index(history, keep)
    return None if index is None else index + 1


def _epochs_since_best(history: dict, keep: str = "best") -> int:
    index = _kept_index(history, keep)
    return 0 if index is None else len(history[MONITOR]) - 1 - index


def _stop_reason(history, training_seconds, *, epochs, patience, budget, keep="best", growth=None):
    """Why training must not start another epoch, or None.

    The budget stops training when the next epoch (estimated by the last one) would end past it.
    `growth` (epoch, factor): the epoch after `epoch` takes `factor` times as long as it did (the
    first full-size epoch of progressive resizing).
    """
    completed = len(history.get("epoch", []))
    if completed >= epochs:
        return "epochs"
    if completed and _epochs_since_best(history, keep) >= patience:
        return "early_stopping"
    if budget is not None and completed:
        factor = growth[1] if growth and completed == growth[0] else 1.0
        if training_seconds + factor * history["epoch_seconds"][-1] > budget:
            return "time_budget"
    return None


def _save_atomic(model: keras.Model, destination: Path) -> None:
    """The whole model, optimizer state included, so that it can resume."""
    with atomic_path(destination) as temporary:
        model.save(temporary)


class _EpochRecorder(keras.callbacks.Callback):
    """After each epoch: extend the history and write the epoch's last model (`_BestKeeper` writes
    its best model, `_Commit` then state.json, the renames and the history)."""

    def __init__(self, checkpoint_dir: Path, history_path, history: dict, training_seconds: float, settings: dict,
                 best_keras_epoch: int | None = None, keep: str = "best"):
        super().__init__()
        self.checkpoint_dir, self.history_path = checkpoint_dir, Path(history_path)
        self.history, self.training_seconds, self.settings = history, training_seconds, settings
        self.keep = keep
        self.best_keras_epoch = best_keras_epoch

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
        _save_atomic(self.model, _pending(self.checkpoint_dir, "last", epoch + 1))

    def commit(self, epoch: int) -> None:
        """state.json records epoch `epoch` (1-based) and which epoch best.keras holds; then the
        epoch's models are renamed into place."""
        write_json_atomic(
            self.checkpoint_dir / "state.json",
            {"history": self.history, "training_seconds": self.training_seconds, "settings": self.settings,
             "checkpoint_epoch": epoch, "best_keras_epoch": self.best_keras_epoch},
        )
        _promote(self.checkpoint_dir, epoch)
        write_json_atomic(self.history_path, self.history)

    def finish(self, stop_reason: str) -> dict:
        values = self.history.get(MONITOR, [])
        best = _kept_index(self.history, self.keep)
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
    """best.keras after an epoch that improved the validation MAE, or after every epoch with keep
    "last" (a separate callback so that, with EMA, it runs after the averaged weights are swapped in)."""

    def __init__(self, recorder: _EpochRecorder):
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch, logs=None):
        if _epochs_since_best(self.recorder.history, self.recorder.keep) == 0:
            _save_atomic(self.model, _pending(self.recorder.checkpoint_dir, "best", epoch + 1))
            self.recorder.best_keras_epoch = epoch + 1


class _Commit(keras.callbacks.Callback):
    """The end of an epoch's checkpoint: after `_EpochRecorder` and `_BestKeeper` wrote its models."""

    def __init__(self, recorder: _EpochRecorder):
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch, logs=None):
        self.recorder.commit(epoch + 1)


class _StopRule(keras.callbacks.Callback):
    """Early stopping on validation MAE (patience counted over resumed epochs too) and the time budget."""

    def __init__(self, recorder: _EpochRecorder, *, epochs: int, patience: int, budget: float | None, growth=None):
        super().__init__()
        self.recorder, self.epochs, self.patience, self.budget, self.growth = recorder, epochs, patience, budget, growth

    def reason(self) -> str | None:
        """`_stop_reason` of the epochs recorded so far."""
        return _stop_reason(self.recorder.history, self.recorder.training_seconds, epochs=self.epochs,
                            patience=self.patience, budget=self.budget, keep=self.recorder.keep, growth=self.growth)

    def on_epoch_end(self, epoch, logs=None):
        if self.reason() in ("early_stopping", "time_budget"):
            self.model.stop_training = True
