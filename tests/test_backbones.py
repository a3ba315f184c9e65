"""keras.applications backbones, their weights (ImageNet offline, local files), fine-tuning with a
frozen backbone, mixed precision, MirroredStrategy, and the full-resolution smoke run."""

import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from utils import backbones, config
from utils.parameters import BACKBONES, load_parameters

SMALL = 32  # the smallest side every backbone but InceptionV3 takes
SMALLEST = {"inceptionv3": 75}


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty Keras home, BONE_AGE_OFFLINE set, and any connection attempt a test failure."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv(backbones.OFFLINE_ENV, "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return tmp_path / "keras-home" / "models"


# ---- parameters and weights files (fast: no Keras) ---------------------------------------------

def test_backbones_are_architectures_with_limits_checked_up_front():
    for name in BACKBONES:
        assert load_parameters("ci", {"architecture": name, "image_size": SMALLEST.get(name, SMALL)}).architecture == name
    with pytest.raises(ValueError, match="image_size: inceptionv3 needs at least 75 px, got 64"):
        load_parameters("ci", {"architecture": "inceptionv3", "image_size": 64})
    with pytest.raises(ValueError, match="init_weights: 'imagenet' needs a keras.applications backbone"):
        load_parameters("ci", {"init_weights": "imagenet"})


def test_learning_rate_scales_linearly_with_the_global_batch():
    assert load_parameters("ci").peak_learning_rate == load_parameters("ci").learning_rate
    scaled = load_parameters("ci", {"learning_rate": 0.001, "learning_rate_reference_batch": 64, "batch_size": 256})
    assert scaled.peak_learning_rate == pytest.approx(0.004)


def test_imagenet_offline_names_the_missing_file_and_where_it_goes(no_network):
    with pytest.raises(backbones.MissingWeightsError) as error:
        backbones.resolve_init_weights("efficientnetv2s", "imagenet")
    message = str(error.value)
    assert "efficientnetv2-s_notop.h5" in message and str(no_network / "efficientnetv2-s_notop.h5") in message
    assert "BONE_AGE_OFFLINE is set" in message and "-p init_weights /path/to/efficientnetv2-s_notop.h5" in message
    assert "Nothing was trained" in message


def test_imagenet_file_in_the_keras_folder_is_used_without_the_network(no_network):
    no_network.mkdir(parents=True)
    (no_network / "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"stand-in")
    resolved = backbones.resolve_init_weights("inceptionv3", "imagenet")
    assert resolved.backbone == no_network / "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert resolved.run is None


def test_local_weights_files_resolve_by_kind(tmp_path, no_network):
    for name in ("run.keras", "run.weights.h5", "efficientnetv2-b0_notop.h5"):
        (tmp_path / name).write_bytes(b"x")
    assert backbones.resolve_init_weights("ours", str(tmp_path / "run.keras")).run == tmp_path / "run.keras"
    assert backbones.resolve_init_weights("ours", str(tmp_path / "run.weights.h5")).run == tmp_path / "run.weights.h5"
    local = backbones.resolve_init_weights("efficientnetv2b0", str(tmp_path / "efficientnetv2-b0_notop.h5"))
    assert local.backbone == tmp_path / "efficientnetv2-b0_notop.h5"
    with pytest.raises(ValueError, match="needs a keras.applications backbone"):
        backbones.resolve_init_weights("ours", str(tmp_path / "efficientnetv2-b0_notop.h5"))
    with pytest.raises(backbones.MissingWeightsError, match="no such file"):
        backbones.resolve_init_weights("ours", str(tmp_path / "absent.keras"))
    assert backbones.resolve_init_weights("ours", None) == backbones.InitialWeights()


def test_runner_stops_before_any_stage_when_imagenet_weights_are_missing(tmp_path):
    """The whole command, offline: an error naming the file, exit 1, no stage run, nothing trained."""
    environment = {**__import__("os").environ, "KERAS_HOME": str(tmp_path / "empty"), backbones.OFFLINE_ENV: "1"}
    command = [sys.executable, "-m", "utils.pipeline", "--preset", "fullres_smoke", "-p", "init_weights", "imagenet",
               "-p", "run_name", "never_trained"]
    completed = subprocess.run(command, cwd=config.PROJECT_ROOT, capture_output=True, text=True, env=environment,
                               timeout=120)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "efficientnetv2-b0_notop.h5" in completed.stderr and str(tmp_path / "empty" / "models") in completed.stderr
    assert not (config.results_root() / "never_trained").exists()
    assert not (config.models_root() / "never_trained").exists()


# ---- the networks (slow: each builds a keras.applications network) ------------------------------

def _inputs(size, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size)).astype(np.uint8), rng.integers(0, 2, n).astype(np.float32)


def _backbone(name, size=None, **changes):
    from utils import model

    parameters = load_parameters("ci", {"architecture": name, "image_size": size or SMALLEST.get(name, SMALL),
                                        "dense_units": 8, **changes})
    return model.build_for_run(parameters, target_mean=120.0, target_std=40.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_takes_the_project_inputs_and_gives_months(name):
    import keras

    from utils import explain, model

    network = _backbone(name)
    size = SMALLEST.get(name, SMALL)
    assert {key: tuple(value.shape[1:]) for key, value in network.input.items()} == {"image": (size, size, 1), "male": (1,)}
    assert isinstance(network.get_layer(model.OUTPUT_LAYER), keras.layers.Rescaling)
    assert explain.find_conv_layer(network) == model.LAST_CONV_LAYER
    images, male = _inputs(size)
    months = model.predict_months(network, images, male)
    assert months.shape == (4,) and np.isfinite(months).all()
    # Sex joins after pooling: it changes the estimate.
    assert not np.allclose(model.predict_months(network, images, 1 - male), months)
    heatmaps = explain.grad_cam(network, images[:2], male[:2], mode="signed")
    assert heatmaps.shape == (2, size, size) and np.isfinite(heatmaps).all()
    head = {layer.name for layer in network.layers} - {layer.name for layer in model.backbone_layers(network)}
    assert {"head_dense", "standardised_age", model.OUTPUT_LAYER} <= head


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_our_preprocessing_layer_equals_each_familys_own(name):
    """preprocess_input for ResNetV2 and InceptionV3; for EfficientNetV2 and ConvNeXt, whose networks
    rescale inside, the same network with its own preprocessing against ours before it."""
    import keras

    spec = backbones.SPECS[name]
    scale, offset = backbones.PREPROCESSING[spec.preprocessing]
    ours = keras.layers.Rescaling(scale, offset=offset)
    size = SMALLEST.get(name, SMALL)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    constructor = getattr(keras.applications, spec.constructor)
    if spec.constructor not in backbones.OWN_PREPROCESSING:
        family = {"resnet50v2": keras.applications.resnet_v2, "inceptionv3": keras.applications.inception_v3}[name]
        np.testing.assert_allclose(np.asarray(ours(pixels)), np.asarray(family.preprocess_input(pixels.copy())), atol=1e-6)
        return
    keras.utils.set_random_seed(0)
    theirs = constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    plain = constructor(include_top=False, weights=None, input_shape=(size, size, 3), include_preprocessing=False)
    plain.set_weights(theirs.get_weights())
    expected = np.asarray(theirs(pixels, training=False))
    np.testing.assert_allclose(np.asarray(plain(ours(pixels), training=False)), expected,
                               atol=1e-4 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.slow
def test_weight_file_names_are_the_ones_keras_asks_for():
    import inspect

    import keras

    from keras.src.applications import convnext, efficientnet_v2, inception_v3, resnet

    sources = {module: inspect.getsource(module) for module in (convnext, efficientnet_v2, inception_v3, resnet)}
    for name, spec in backbones.SPECS.items():
        default_name = inspect.signature(getattr(keras.applications, spec.constructor)).parameters["name"].default
        candidates = {f"{default_name}_notop.h5", f"{default_name}_weights_tf_dim_ordering_tf_kernels_notop.h5"}
        assert spec.weights_file in candidates or any(spec.weights_file in text for text in sources.values()), name
        assert spec.weights_url.endswith("/" + spec.weights_file)


@pytest.mark.slow
def test_a_backbone_saves_as_keras_and_exports_to_onnx(tmp_path):
    import keras

    from utils import model
    from utils.onnx_runtime import OnnxBoneAgeModel, export_onnx

    network = _backbone("efficientnetv2b0")
    network.save(tmp_path / "bone_age.keras")
    loaded = keras.models.load_model(tmp_path / "bone_age.keras", compile=False)
    images, male = _inputs(SMALL, n=6)
    expected = model.predict_months(network, images, male)
    np.testing.assert_allclose(model.predict_months(loaded, images, male), expected, atol=1e-4)
    export_onnx(loaded, tmp_path / "bone_age.onnx")
    np.testing.assert_allclose(OnnxBoneAgeModel(tmp_path / "bone_age.onnx").predict(images, male), expected, atol=1e-3)


@pytest.mark.slow
def test_a_local_keras_applications_weights_file_loads_into_the_backbone(tmp_path, no_network):
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from utils import model

    keras.utils.set_random_seed(1)
    source = keras.applications.EfficientNetV2B0(include_top=False, weights=None, input_shape=(SMALL, SMALL, 3))
    weights_file = tmp_path / "efficientnetv2-b0_notop.h5"  # the layout of Keras' own ImageNet files
    with h5py.File(weights_file, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, source)
    resolved = backbones.resolve_init_weights("efficientnetv2b0", str(weights_file))
    keras.utils.set_random_seed(2)
    parameters = load_parameters("ci", {"architecture": "efficientnetv2b0", "image_size": SMALL})
    network = model.build_for_run(parameters, target_mean=120.0, target_std=40.0, backbone_weights=resolved.backbone)
    for name in ("stem_conv", "top_conv"):
        for loaded, saved in zip(network.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(loaded, saved)


# ---- fine-tuning, mixed precision, distribution (slow: they train) ------------------------------

TINY = {"widths": (4, 8), "dense_units": 8}


def _tiny_data(n, seed, size=SMALL):
    rng = np.random.default_rng(seed)
    age = rng.uniform(0, 228, n).astype(np.float32)
    images = np.clip(rng.normal(age[:, None, None] * 0.8, 20, (n, size, size)), 0, 255).astype(np.uint8)
    return images, rng.integers(0, 2, n).astype(np.float32), age


@pytest.mark.slow
def test_frozen_backbone_trains_the_head_first_then_everything_at_a_lower_rate(tmp_path):
    import keras

    from utils import model, training

    ci = load_parameters("ci")
    keras.utils.set_random_seed(0)
    network = model.build_model(SMALL, target_mean=114.0, target_std=65.0, **{**ci.network_options(), **TINY})
    backbone, head = network.get_layer("stem_conv"), network.get_layer("head_dense")
    snapshots = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append((backbone.get_weights()[0].copy(), head.get_weights()[0].copy()))

    start = (backbone.get_weights()[0].copy(), head.get_weights()[0].copy())
    history = training.train_model(
        network, _tiny_data(64, 0), _tiny_data(32, 1), checkpoint_dir=tmp_path / "checkpoints",
        history_path=tmp_path / "history.json", epochs=3, batch_size=16, learning_rate=1e-2, patience=5, seed=0,
        progress=False, training_options=ci.training_options(), callbacks=(Snapshot(),),
        freeze_backbone_epochs=1, finetune_learning_rate_factor=0.1,
    )
    assert len(history["epoch"]) == 3
    np.testing.assert_array_equal(snapshots[0][0], start[0])  # epoch 1: the backbone did not move
    assert not np.array_equal(snapshots[0][1], start[1])  # the head did
    assert not np.array_equal(snapshots[1][0], snapshots[0][0])  # epoch 2: everything trains
    schedule = network.optimizer._learning_rate  # the schedule object (learning_rate is its current value)
    assert isinstance(schedule, model.FineTuneSchedule)
    np.testing.assert_allclose(float(schedule(4)), 0.1 * float(schedule.schedule(4)), rtol=1e-6)  # after 4 steps
    np.testing.assert_allclose(float(schedule(3)), float(schedule.schedule(3)), rtol=1e-6)
    assert all(layer.trainable for layer in network.layers)
    assert json.loads((tmp_path / "checkpoints" / "state.json").read_text())["settings"]["freeze_backbone_epochs"] == 1


@pytest.mark.slow
def test_fine_tuning_resumes_inside_the_frozen_epochs(tmp_path):
    import keras

    from utils import model, training

    ci = load_parameters("ci")

    def fit(callbacks=()):
        keras.utils.set_random_seed(0)
        network = model.build_model(SMALL, target_mean=114.0, target_std=65.0, **{**ci.network_options(), **TINY})
        return training.train_model(
            network, _tiny_data(64, 0), _tiny_data(32, 1), checkpoint_dir=tmp_path / "checkpoints",
            history_path=tmp_path / "history.json", epochs=3, batch_size=16, learning_rate=1e-2, patience=5, seed=0,
            progress=False, training_options=ci.training_options(), callbacks=callbacks, freeze_backbone_epochs=2,
        )

    class StopAfterEpoch1(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit((StopAfterEpoch1(),))
    assert json.loads((tmp_path / "checkpoints" / "state.json").read_text())["checkpoint_epoch"] == 1
    assert len(fit()["epoch"]) == 3


@pytest.mark.slow
def test_mixed_precision_keeps_months_in_float32_and_ships_float32():
    import keras

    from utils import model

    ci = load_parameters("ci")
    try:
        model.set_precision("mixed_bfloat16")
        network = model.build_model(SMALL, target_mean=114.0, target_std=65.0, **{**ci.network_options(), **TINY})
        assert network.get_layer("stem_conv").compute_dtype == "bfloat16"
        assert network.get_layer(model.OUTPUT_LAYER).compute_dtype == "float32"
    finally:
        model.set_precision("none")
    shipped = model.to_float32(network)
    assert {layer.compute_dtype for layer in shipped.layers if layer.weights} == {"float32"}
    images, male = _inputs(SMALL)
    inputs = model.model_inputs(images, male)
    # bfloat16 keeps 3 significant digits: the float32 copy agrees to a month or two.
    np.testing.assert_allclose(np.asarray(shipped(inputs, training=False)), np.asarray(network(inputs, training=False)),
                               atol=2.0)
    assert keras.mixed_precision.global_policy().name == "float32"


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import tensorflow as tf
    # Two logical CPU devices, before anything else touches TensorFlow.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from utils import model, training
    from utils.onnx_runtime import OnnxBoneAgeModel, export_onnx
    from utils.parameters import load_parameters

    folder = Path(sys.argv[1])
    parameters = load_parameters("ci", {"distribution": "mirrored", "image_size": 32, "widths": [4, 8],
                                        "dense_units": 8, "batch_size": 16})
    strategy = model.distribution_strategy(parameters.distribution)
    rng = np.random.default_rng(0)
    def data(n):
        age = rng.uniform(0, 228, n).astype(np.float32)
        images = np.clip(rng.normal(age[:, None, None] * 0.8, 20, (n, 32, 32)), 0, 255).astype(np.uint8)
        return images, rng.integers(0, 2, n).astype(np.float32), age
    train, validation = data(64), data(32)
    # The training images from a memory-mapped file, as image_cache: mmap gives them.
    np.save(folder / "train.npy", train[0])
    from utils.preprocessing import CachedRows
    mapped = np.load(folder / "train.npy", mmap_mode="r")
    train = (CachedRows(mapped, np.arange(len(mapped))), train[1], train[2])

    def fit(callbacks=()):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            network = model.build_for_run(parameters, target_mean=114.0, target_std=65.0)
        history = training.train_model(
            network, train, validation, checkpoint_dir=folder / "checkpoints", history_path=folder / "history.json",
            epochs=3, batch_size=parameters.batch_size, learning_rate=parameters.peak_learning_rate, patience=5,
            seed=0, progress=False, training_options=parameters.training_options(), callbacks=callbacks,
            strategy=strategy, time_budget_seconds=3600)
        return network, history

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:
                raise KeyboardInterrupt

    try:
        fit((Interrupt(),))
        raise SystemExit("the interruption did not happen")
    except KeyboardInterrupt:
        pass
    interrupted = json.loads((folder / "checkpoints" / "state.json").read_text())["checkpoint_epoch"]
    network, history = fit()
    network.save(folder / "bone_age.keras")
    export_onnx(folder / "bone_age.keras", folder / "bone_age.onnx")
    images, male = train[0][np.arange(8)], train[1][:8]
    keras_months = model.predict_months(keras.models.load_model(folder / "bone_age.keras", compile=False), images, male)
    onnx_months = OnnxBoneAgeModel(folder / "bone_age.onnx").predict(images, male)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "interrupted_after": interrupted,
                      "epochs": len(history["epoch"]), "stop_reason": history["stop_reason"],
                      "synchronized": any(getattr(layer, "synchronized", False) for layer in network.layers),
                      "max_difference": float(np.abs(keras_months - onnx_months).max()),
                      # The trained model itself predicts on both replicas: their BatchNorm statistics agree.
                      "max_difference_replicas": float(np.abs(model.predict_months(network, images, male)
                                                              - onnx_months).max()),
                      "finite": bool(np.isfinite(history["val_mae"]).all())}))
""")


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpu_devices_trains_resumes_and_exports(tmp_path):
    completed = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                               cwd=config.PROJECT_ROOT, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["interrupted_after"] == 1 and result["epochs"] == 3 and result["stop_reason"] == "epochs"
    assert result["finite"] and not result["synchronized"]  # synchronised BatchNorm only while training
    assert result["max_difference"] < 1e-3 and result["max_difference_replicas"] < 1e-3


# ---- the full-resolution path end to end (slow; skipped without ../shared) ------------------------

FULLRES_RUN = "fullres_smoke_test"


@pytest.mark.slow
@pytest.mark.skipif(not config.FULLRES_SAMPLE_DIR.is_dir(), reason=f"{config.FULLRES_SAMPLE_DIR} is not here")
def test_fullres_smoke_runs_the_study_and_its_model_predicts():
    command = [sys.executable, "-m", "utils.pipeline", "--preset", "fullres_smoke", "-p", "run_name", FULLRES_RUN,
               "--timeout", "1800"]
    completed = subprocess.run(command, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=3600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    paths = config.RunPaths(FULLRES_RUN)
    metrics = json.loads(paths.metrics.read_text())
    assert metrics["run"]["parameters"]["architecture"] == "efficientnetv2b0"
    assert metrics["run"]["parameters"]["hand_crop"] == "box" and metrics["model"]["image_size"] == 224
    assert metrics["n"] == metrics["dataset"]["splits"]["test"] >= 20
    assert paths.report.read_bytes().startswith(b"%PDF") and paths.onnx_model.exists() and paths.model_card.exists()
    image = config.FULLRES_SAMPLE_DIR / "boneage-test-dataset" / "4360.png"
    predicted = subprocess.run([sys.executable, "-m", "utils.predict", str(image), "--sex", "M", "--model", str(paths.models)],
                               capture_output=True, text=True, cwd=config.PROJECT_ROOT, timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    reading = json.loads(predicted.stdout)
    assert 0 <= reading["bone_age_months"] <= config.MAX_AGE_MONTHS and reading["model"].endswith(".onnx")
