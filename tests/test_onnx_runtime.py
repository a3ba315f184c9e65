"""The ONNX runtime must predict what the Keras model predicts, without importing TensorFlow;
the Keras runtime (utils.model) must not load onnxruntime."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from utils.model import KerasBoneAgeModel, predict_months
from utils.onnx_runtime import OnnxBoneAgeModel, export_onnx, export_prediction_graph, quantize_int8
from utils.parameters import TTA_MODES

IMAGE_SIZE = 32


def tiny_model(offset: float = 120.0) -> keras.Model:
    """The contract's inputs and a months output, with an augmentation layer that must stay off."""
    keras.utils.set_random_seed(0)
    image = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="image")
    male = keras.Input((1,), name="male")
    x = keras.layers.RandomRotation(0.2, fill_mode="constant")(image)
    x = keras.layers.Rescaling(1.0 / 255.0)(x)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Concatenate()([x, male])
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(1)(x)
    months = keras.layers.Rescaling(scale=40.0, offset=offset)(x)
    return keras.Model({"image": image, "male": male}, months)


def random_inputs(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8), rng.integers(0, 2, n)


def keras_months(model, images, male) -> np.ndarray:
    inputs = {"image": images[..., np.newaxis].astype("float32"), "male": male.astype("float32").reshape(-1, 1)}
    return model.predict(inputs, verbose=0).reshape(-1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    model = tiny_model()
    model.save(folder / "tiny.keras")
    return model, export_onnx(folder / "tiny.keras", folder / "tiny.onnx")


def test_onnx_agrees_with_keras_predict(exported):
    model, onnx_path = exported
    images, male = random_inputs(40)
    runtime = OnnxBoneAgeModel(onnx_path)
    assert runtime.image_size == IMAGE_SIZE
    onnx_months = runtime.predict(images, male)
    assert onnx_months.shape == (40,)
    np.testing.assert_allclose(onnx_months, keras_months(model, images, male), atol=1e-3)
    # Sex is an input of the graph, not ignored by the export.
    assert not np.allclose(runtime.predict(images, 1 - male), onnx_months)


@pytest.mark.parametrize("mode", ["shift", "flip", "shift_flip"])
def test_onnx_and_keras_test_time_augmentation_agree(exported, mode):
    model, onnx_path = exported
    images, male = random_inputs(12, seed=3)
    onnx_tta = OnnxBoneAgeModel(onnx_path).predict(images, male, tta=mode)
    np.testing.assert_allclose(onnx_tta, predict_months(model, images, male, tta=mode), atol=1e-3)
    keras_runtime = KerasBoneAgeModel(onnx_path.with_suffix(".keras"), batch_size=5)
    np.testing.assert_allclose(keras_runtime.predict(images, male, tta=mode), onnx_tta, atol=1e-3)
    # Each mode averages views of its own: none of them is the plain prediction or another mode's.
    for other in (other for other in TTA_MODES if other != mode):
        assert not np.allclose(onnx_tta, OnnxBoneAgeModel(onnx_path).predict(images, male, tta=other)), other


def test_test_time_augmentation_is_the_mean_of_the_views(exported):
    from utils.preprocessing import tta_views

    _, onnx_path = exported
    runtime = OnnxBoneAgeModel(onnx_path)
    images, male = random_inputs(7, seed=4)
    views = tta_views(images, "shift_flip")
    expected = np.mean([runtime.predict(view, male) for view in views], axis=0)
    np.testing.assert_allclose(runtime.predict(images, male, tta="shift_flip"), expected, atol=1e-5)


def test_int8_graph_is_quantised_and_stays_close_to_the_float_graph(exported, tmp_path):
    import onnx

    _, onnx_path = exported
    calibration = random_inputs(64, seed=2)
    graphs = {precision: export_prediction_graph(onnx_path.with_suffix(".keras"), tmp_path / f"{precision}.onnx",
                                                 precision=precision, calibration=calibration)
              for precision in ("float32", "int8")}
    operators = {precision: {node.op_type for node in onnx.load(tmp_path / f"{precision}.onnx").graph.node}
                 for precision in graphs}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators["int8"]
    assert not {"QuantizeLinear", "DequantizeLinear"} & operators["float32"]
    images, male = random_inputs(200, seed=3)
    float_months = OnnxBoneAgeModel(onnx_path).predict(images, male)
    np.testing.assert_allclose(graphs["float32"].predict(images, male), float_months, atol=1e-5)
    int8_months = graphs["int8"].predict(images, male)
    # Quantisation moves each prediction a little, far less than the predictions differ.
    assert np.abs(int8_months - float_months).mean() < 0.05 * float_months.std()
    assert np.corrcoef(int8_months, float_months)[0, 1] > 0.99


def test_int8_quantisation_refuses_bad_calibration_and_keeps_the_graph(exported, tmp_path):
    _, onnx_path = exported
    with pytest.raises(ValueError, match="onnx_precision: expected float32 or int8, got 'fp16'"):
        export_prediction_graph(onnx_path.with_suffix(".keras"), tmp_path / "any.onnx", precision="fp16", calibration=None)
    assert not (tmp_path / "any.onnx").exists()
    graph = tmp_path / "tiny.onnx"
    graph.write_bytes(onnx_path.read_bytes())
    images, male = random_inputs(8)
    with pytest.raises(ValueError, match=r"tiny\.onnx: int8 calibration needs images"):
        quantize_int8(graph, images[:, 0], male)
    assert graph.read_bytes() == onnx_path.read_bytes()


def test_onnx_predictions_are_clipped_to_the_age_range(tmp_path):
    # An offset of 1000 months puts every raw output far above 240.
    onnx_path = export_onnx(tiny_model(offset=1000.0), tmp_path / "high.onnx")
    images, male = random_inputs(6)
    for tta in TTA_MODES:
        np.testing.assert_array_equal(OnnxBoneAgeModel(onnx_path).predict(images, male, tta=tta), 240.0)


def test_onnx_is_deterministic_and_batches_agree(exported):
    _, onnx_path = exported
    images, male = random_inputs(10, seed=2)
    whole = OnnxBoneAgeModel(onnx_path).predict(images, male)
    in_batches_of_3 = OnnxBoneAgeModel(onnx_path, batch_size=3).predict(images, male)
    np.testing.assert_array_equal(whole, OnnxBoneAgeModel(onnx_path).predict(images, male))
    np.testing.assert_allclose(in_batches_of_3, whole, atol=1e-4)


def test_export_from_an_in_memory_model_with_the_tf2onnx_fallback(tmp_path, monkeypatch):
    model = tiny_model()

    def no_onnx_export(self, *args, **kwargs):
        raise ValueError("this Keras cannot export ONNX")

    monkeypatch.setattr(keras.Model, "export", no_onnx_export)
    onnx_path = export_onnx(model, tmp_path / "fallback.onnx")
    images, male = random_inputs(8, seed=3)
    np.testing.assert_allclose(
        OnnxBoneAgeModel(onnx_path).predict(images, male), keras_months(model, images, male), atol=1e-3
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fallback.onnx"]  # no temporary left


def test_predict_refuses_wrong_shapes(exported):
    runtime = OnnxBoneAgeModel(exported[1])
    images, male = random_inputs(4)
    with pytest.raises(ValueError, match=r"expected images \(N, 32, 32\)"):
        runtime.predict(images[:, :16, :16], male)
    with pytest.raises(ValueError, match="male"):
        runtime.predict(images, male[:3])


def test_missing_or_corrupt_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        OnnxBoneAgeModel(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="corrupt.onnx: not a readable ONNX model"):
        OnnxBoneAgeModel(corrupt)


@pytest.mark.slow
def test_importing_the_keras_runtime_does_not_import_onnxruntime():
    code = "import sys, utils.model; print('keras' in sys.modules, 'onnxruntime' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False"]
