"""utils.training: history JSON, best checkpoint, resume after an interruption, time budget, fine-tuning."""

import json
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from utils.model import build_model, load_initial_weights, predict_months
from utils.parameters import load_parameters
from utils import training
from utils.training import make_dataset, train_model


SIZE = 32
CI = load_parameters("ci")
TINY = {**CI.network_options(), "widths": (4, 8), "dense_units": 8}


def tiny_data(n, seed):
    rng = np.random.default_rng(seed)
    age = rng.uniform(0, 228, n).astype(np.float32)
    # Brightness grows with age so that there is something to learn.
    images = np.clip(rng.normal(age[:, None, None] * 0.8, 20, (n, SIZE, SIZE)), 0, 255).astype(np.uint8)
    return images, rng.integers(0, 2, n).astype(bool), age


TRAIN, VALIDATION = tiny_data(64, 0), tiny_data(32, 1)


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return build_model(SIZE, target_mean=114.0, target_std=65.0, **TINY)


def fit(model, tmp_path, **overrides):
    arguments = dict(
        checkpoint_dir=tmp_path / "checkpoints", history_path=tmp_path / "history.json", epochs=2,
        batch_size=16, learning_rate=1e-3, patience=5, seed=0, progress=False,
        training_options=CI.training_options(),
    )
    train = overrides.pop("train", TRAIN)
    return train_model(model, train, VALIDATION, **{**arguments, **overrides})


class InterruptInEpoch(keras.callbacks.Callback):
    """Simulates a killed run: raises KeyboardInterrupt in the middle of epoch `epoch` (1-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            raise KeyboardInterrupt


class FirstEpoch(keras.callbacks.Callback):
    """Records the first epoch (1-based) that `fit` runs; None if it runs none."""

    def __init__(self):
        super().__init__()
        self.first = None

    def on_epoch_begin(self, epoch, logs=None):
        self.first = epoch + 1 if self.first is None else self.first


def test_make_dataset_batches_inputs_and_target():
    inputs, target = next(iter(make_dataset(*TRAIN, batch_size=8, shuffle=False)))
    assert inputs["image"].shape == (8, SIZE, SIZE, 1) and inputs["image"].dtype == "float32"
    assert inputs["male"].shape == (8, 1) and target.shape == (8, 1)
    np.testing.assert_array_equal(inputs["image"].numpy()[..., 0], TRAIN[0][:8])


def test_make_dataset_refuses_misaligned_arrays():
    with pytest.raises(ValueError, match="boneage"):
        make_dataset(TRAIN[0], TRAIN[1], TRAIN[2][:10], batch_size=8, shuffle=False)


@pytest.mark.slow
def test_history_json_and_best_checkpoint(tmp_path):
    model = tiny_model()
    history = fit(model, tmp_path)
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["epoch"] == [1, 2] and len(saved["val_mae"]) == 2 and len(saved["learning_rate"]) == 2
    assert saved["stop_reason"] == "epochs" and saved["best_val_mae"] == min(saved["val_mae"])
    assert history["best_epoch"] == saved["best_epoch"]
    best = keras.models.load_model(tmp_path / "checkpoints" / "best.keras")
    images, male, _ = VALIDATION
    # The model ends with the best weights, and the checkpoint reproduces its predictions.
    np.testing.assert_allclose(predict_months(best, images, male), predict_months(model, images, male), rtol=1e-5)
    validation_mae = np.mean(np.abs(predict_months(model, images, male) - VALIDATION[2]))
    assert validation_mae == pytest.approx(history["best_val_mae"], rel=1e-3)


@pytest.mark.slow
def test_resume_after_interruption_continues_from_last_completed_epoch(tmp_path):
    fit(tiny_model(), tmp_path, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(), tmp_path, epochs=4, callbacks=(InterruptInEpoch(3),))
    state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert state["history"]["epoch"] == [1, 2]
    first = FirstEpoch()
    history = fit(tiny_model(), tmp_path, epochs=4, callbacks=(first,))
    assert first.first == 3
    assert history["epoch"] == [1, 2, 3, 4] and len(history["val_mae"]) == 4
    # The optimizer's step counter came back with the checkpoint: 4 epochs x 4 steps.
    assert int(keras.models.load_model(tmp_path / "checkpoints" / "last.keras").optimizer.iterations) == 16


@pytest.mark.slow
def test_finished_run_is_not_trained_again(tmp_path):
    fit(tiny_model(), tmp_path, epochs=2)
    first = FirstEpoch()
    history = fit(tiny_model(), tmp_path, epochs=2, callbacks=(first,))
    assert first.first is None and history["epoch"] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, differs",
    [({"learning_rate": 5e-4}, "learning_rate"), ({"seed": 1}, "seed"), ({"network": {"dropout": 0.5}}, "network_sha256"),
     ({"training_options": {**CI.training_options(), "loss": "l1"}}, "training_options"),
     # The same labels and size with inverted images: only the content differs.
     ({"train": (255 - TRAIN[0], *TRAIN[1:])}, "train_data_sha256"),
     # A refit keeps its last epoch: not a checkpoint that kept the best.
     ({"keep": "last"}, "keep")],
)
def test_checkpoints_of_other_settings_are_not_resumed(tmp_path, change, differs):
    fit(tiny_model(), tmp_path, epochs=1)
    model = build_model(SIZE, target_mean=114.0, target_std=65.0, **{**TINY, **change.pop("network", {})})
    with pytest.raises(ValueError, match=f"other settings \\({differs} differ"):
        fit(model, tmp_path, epochs=2, **change)


@pytest.mark.slow
def test_time_budget_stops_training(tmp_path):
    history = fit(tiny_model(), tmp_path, epochs=50, time_budget_seconds=0.01)
    assert history["epoch"] == [1] and history["stop_reason"] == "time_budget"


@pytest.mark.slow
def test_early_stopping_on_validation_mae(tmp_path):
    # A frozen model (BatchNorm in inference mode too) never improves on epoch 1,
    # so training stops `patience` epochs later.
    model = tiny_model()
    model.trainable = False
    history = fit(model, tmp_path, epochs=20, patience=2)
    assert history["stop_reason"] == "early_stopping" and len(history["epoch"]) == 3


@pytest.mark.slow
def test_keep_last_ends_with_the_final_epoch_and_never_stops_early(tmp_path):
    # A frozen model never improves on epoch 1: keeping the best, it would stop after epoch 2.
    frozen = tiny_model()
    frozen.trainable = False
    history = fit(frozen, tmp_path / "frozen", epochs=4, patience=1, keep="last")
    assert history["epoch"] == [1, 2, 3, 4] and history["stop_reason"] == "epochs"
    assert history["best_epoch"] == 4 and history["best_val_mae"] == history["val_mae"][-1]
    # A network that learns ends with its last weights, whatever its validation MAE did.
    model = tiny_model()
    history = fit(model, tmp_path / "learning", epochs=3, learning_rate=5e-2, keep="last")
    assert history["best_epoch"] == 3
    images, male, _ = VALIDATION
    last = keras.models.load_model(tmp_path / "learning" / "checkpoints" / "last.keras")
    np.testing.assert_allclose(predict_months(model, images, male), predict_months(last, images, male), rtol=1e-5)


def test_shrunk_images_are_area_averages():
    inputs, _ = next(iter(training._shrunk(make_dataset(*TRAIN, batch_size=8, shuffle=False), SIZE // 2)))
    assert inputs["image"].shape == (8, SIZE // 2, SIZE // 2, 1) and inputs["male"].shape == (8, 1)
    expected = TRAIN[0][:8].astype(np.float32).reshape(8, SIZE // 2, 2, SIZE // 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(inputs["image"].numpy()[..., 0], expected, rtol=1e-5)
    assert training._shrunk(make_dataset(*TRAIN, batch_size=8, shuffle=False), None).element_spec[0]["image"].shape[1] == SIZE


def any_size_model(seed=0):
    keras.utils.set_random_seed(seed)
    return build_model(SIZE, target_mean=114.0, target_std=65.0, any_size=True, **TINY)


@pytest.mark.slow
def test_progressive_resizing_trains_the_first_epochs_small_and_resumes_in_either_phase(tmp_path, monkeypatch):
    sides = []

    def recorded(dataset, side):
        sides.append(side)
        return shrunk(dataset, side)

    shrunk = training._shrunk
    monkeypatch.setattr(training, "_shrunk", recorded)
    with pytest.raises(KeyboardInterrupt):  # killed in the small phase
        fit(any_size_model(), tmp_path, epochs=4, progressive=(16, 2), callbacks=(InterruptInEpoch(2),))
    assert sides == [16]
    first = FirstEpoch()
    with pytest.raises(KeyboardInterrupt):  # resumed: epoch 2 small, then killed in the full-size phase
        fit(any_size_model(), tmp_path, epochs=4, progressive=(16, 2), callbacks=(first, InterruptInEpoch(4)))
    assert first.first == 2 and sides == [16, 16, None]
    history = fit(any_size_model(), tmp_path, epochs=4, progressive=(16, 2))
    assert sides == [16, 16, None, None] and history["epoch"] == [1, 2, 3, 4] and history["stop_reason"] == "epochs"
    # One schedule across the phases: 4 epochs x 4 steps.
    assert int(keras.models.load_model(tmp_path / "checkpoints" / "last.keras").optimizer.iterations) == 16
    with pytest.raises(ValueError, match="progressive differ"):  # a checkpoint of another schedule is not resumed
        fit(any_size_model(), tmp_path, epochs=5, progressive=(8, 2))


def test_the_budget_expects_the_first_full_size_epoch_to_take_longer():
    history = {"epoch": [1, 2], "epoch_seconds": [10.0, 10.0], "val_mae": [20.0, 19.0]}
    settings = dict(epochs=10, patience=5, budget=40.0)
    assert training._stop_reason(history, 20.0, **settings) is None
    # Epoch 3 is the first at full size: 2.25 x 10 s would end past the 40 s budget.
    assert training._stop_reason(history, 20.0, **settings, growth=(2, 2.25)) == "time_budget"
    assert training._stop_reason(history, 20.0, **settings, growth=(1, 2.25)) is None


def test_progressive_resizing_refuses_ema(tmp_path):
    with pytest.raises(ValueError, match="progressive resizing cannot be combined with ema"):
        fit(any_size_model(), tmp_path, progressive=(16, 1), training_options={**CI.training_options(), "ema": True})
    assert not (tmp_path / "checkpoints").exists()


def test_keep_must_be_best_or_last(tmp_path):
    with pytest.raises(ValueError, match="keep: expected best or last, got 'first'"):
        fit(tiny_model(), tmp_path, keep="first")


@pytest.mark.slow
def test_seed_baseline_trains(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(SIZE, architecture="seed_baseline", target_mean=114.0, target_std=65.0, widths=(4, 8))
    history = fit(model, tmp_path, epochs=1, architecture="seed_baseline")
    assert np.isfinite(history["val_mae"][0])


@pytest.mark.slow
def test_transfer_learning_then_fine_tuning(tmp_path):
    source = tiny_model(seed=0)
    fit(source, tmp_path / "a", epochs=1)
    target = tiny_model(seed=1)
    report = load_initial_weights(target, tmp_path / "a" / "checkpoints" / "best.keras")
    assert not report["skipped"]
    for layer in source.layers:
        for expected, found in zip(layer.get_weights(), target.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(expected, found)
    history = fit(target, tmp_path / "b", epochs=1, learning_rate=1e-4)
    assert np.isfinite(history["val_mae"][0])


@pytest.mark.slow
def test_ema_validates_and_keeps_the_averaged_weights(tmp_path):
    model = tiny_model()
    options = {**CI.training_options(), "ema": True, "ema_momentum": 0.5}
    history = fit(model, tmp_path, epochs=2, training_options=options)
    assert np.isfinite(history["val_mae"]).all()
    best = keras.models.load_model(tmp_path / "checkpoints" / "best.keras")
    last = keras.models.load_model(tmp_path / "checkpoints" / "last.keras")
    # best.keras holds the averages, last.keras the raw weights that training resumes from.
    differs = [not np.array_equal(a, b) for a, b in zip(best.get_weights(), last.get_weights())]
    assert history["best_epoch"] == 2 and any(differs)
    # Resuming with more epochs continues from the saved optimizer (EMA variables included).
    assert fit(tiny_model(), tmp_path, epochs=3, training_options=options)["epoch"] == [1, 2, 3]


@pytest.mark.slow
def test_leftover_temporary_checkpoints_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    leftover = tmp_path / "checkpoints" / ".best.abc123.keras"
    leftover.write_bytes(b"")
    fit(tiny_model(), tmp_path, epochs=1)
    assert not leftover.exists()


class Killed(BaseException):
    """A kill of the process at one point of an epoch's checkpoint writes (nothing after it runs)."""


def _kill_at(monkeypatch, point):
    """Make the run die in epoch 2 at `point`; returns a list that records that it did."""
    from utils import training

    fired = []
    if point == "before_best_saved":
        save = training._save_atomic

        def save_or_die(model, destination):
            if Path(destination).name.startswith("best") and _epoch_of(destination) == 2:
                fired.append(point)
                raise Killed
            save(model, destination)

        monkeypatch.setattr(training, "_save_atomic", save_or_die)
    elif point == "after_state_written":
        write = training.write_json_atomic
        epochs_seen = []

        def write_then_die(destination, data):
            write(destination, data)
            if Path(destination).name == "state.json":
                epochs_seen.append(1)
                if len(epochs_seen) == 2:
                    fired.append(point)
                    raise Killed

        monkeypatch.setattr(training, "write_json_atomic", write_then_die)
    elif point == "between_renames":
        promote = training._promote

        def promote_last_then_die(checkpoint_dir, epoch):
            if epoch != 2:
                return promote(checkpoint_dir, epoch)
            os.replace(training._pending(checkpoint_dir, "last", epoch), checkpoint_dir / "last.keras")
            fired.append(point)
            raise Killed

        monkeypatch.setattr(training, "_promote", promote_last_then_die)
    return fired


def _epoch_of(destination) -> int | None:
    """The epoch of a checkpoint file name (best.epoch0002.keras -> 2); the old code wrote best.keras
    once per improving epoch, counted here instead."""
    match = re.search(r"epoch(\d+)", Path(destination).name)
    if match:
        return int(match.group(1))
    _epoch_of.best_saves = getattr(_epoch_of, "best_saves", 0) + 1
    return _epoch_of.best_saves


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before_best_saved", "after_state_written", "between_renames"])
def test_best_checkpoint_and_state_agree_after_a_kill_at_any_point(tmp_path, monkeypatch, point):
    """Epoch 2 improves on epoch 1; a kill while its checkpoint is written, then a rerun: the model
    the run ends with is the epoch that the history names best, and nothing is left half done."""
    _epoch_of.best_saves = 0
    with monkeypatch.context() as patch:
        fired = _kill_at(patch, point)
        with pytest.raises(Killed):
            fit(tiny_model(), tmp_path, epochs=2)
    assert fired == [point]
    model = tiny_model()
    history = fit(model, tmp_path, epochs=2)
    assert history["epoch"] == [1, 2] and history["best_epoch"] == 2
    images, male, ages = VALIDATION
    validation_mae = np.mean(np.abs(predict_months(model, images, male) - ages))
    assert validation_mae == pytest.approx(history["best_val_mae"], rel=1e-4)
    best = keras.models.load_model(tmp_path / "checkpoints" / "best.keras")
    np.testing.assert_allclose(predict_months(best, images, male), predict_months(model, images, male), rtol=1e-5)
    state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert state["best_keras_epoch"] == 2 and state["checkpoint_epoch"] == 2
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["best.keras", "last.keras", "state.json"]


@pytest.mark.slow
def test_a_repvgg_network_trained_progressively_in_bfloat16_ships_as_a_fixed_size_float32_graph(tmp_path):
    """Stage 03's path for both options: train (any side, mixed_bfloat16), fold and fix the side
    (`for_inference`), float32 (`to_float32`), then the prediction command's ONNX graph."""
    from utils.model import build_for_run, for_inference, set_precision, to_float32
    from utils.onnx_runtime import export_prediction_graph

    parameters = CI.replace(widths=[4, 8], dense_units=8, image_size=SIZE, block="repvgg", epochs=3,
                            progressive_image_size=16, progressive_epochs=1, mixed_precision="mixed_bfloat16")
    try:
        set_precision(parameters.mixed_precision)
        keras.utils.set_random_seed(0)
        trained = build_for_run(parameters, target_mean=114.0, target_std=65.0)
        history = fit(trained, tmp_path, epochs=parameters.epochs, progressive=parameters.progressive_schedule)
        shipped = to_float32(for_inference(trained, parameters, target_mean=114.0, target_std=65.0))
    finally:
        set_precision("none")
    assert history["epoch"] == [1, 2, 3]
    assert tuple(shipped.input["image"].shape) == (None, SIZE, SIZE, 1)
    assert not [layer.name for layer in shipped.layers if "_1x1_" in layer.name]
    images, male, _ = VALIDATION
    expected = predict_months(shipped, images, male)
    # bfloat16 computes with 8 bits of mantissa: the trained network agrees to within a month.
    np.testing.assert_allclose(expected, predict_months(trained, images, male), atol=1.0)
    graph = export_prediction_graph(shipped, tmp_path / "shipped.onnx", precision="float32", calibration=None)
    np.testing.assert_allclose(graph.predict(images, male), expected, atol=1e-3)
