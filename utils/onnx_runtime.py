"""The runtime of the prediction command: the Keras model exported once to ONNX, run with onnxruntime.

Importing TensorFlow takes seconds; onnxruntime imports in a tenth of that, so the prediction
command (utils/predict.py, which reads the model card and the images) answers for one image in
about a second. `export_onnx` is the only function here that needs TensorFlow, and it imports
Keras itself. The same interface on a .keras file is `utils.model.KerasBoneAgeModel`; both
average their test-time augmentation through `preprocessing.tta_average`.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime

from utils.files import atomic_path
from utils.parameters import ONNX_PRECISIONS
from utils.preprocessing import tta_average

INPUT_NAMES = ("image", "male")
BATCH_SIZE = 256
THREADS = 2  # the machine's two cores


def export_onnx(model, onnx_path) -> Path:
    """Write the inference graph of a Keras model (or a .keras file) to `onnx_path`, atomically.

    The graph takes the model's two inputs, "image" (N, S, S, 1) and "male" (N, 1), and runs
    with training=False, so augmentation and dropout are off and BatchNorm uses its averages.
    """
    import keras

    if not isinstance(model, keras.Model):
        model = keras.models.load_model(model, compile=False)
    inference_model = _inference_model(model)
    with atomic_path(onnx_path) as temporary, warnings.catch_warnings():
        # Keras' bundled tf2onnx probes `np.object` when imported, which NumPy answers with a
        # FutureWarning about its own future: noise in every stage 04 notebook, not ours to fix.
        warnings.filterwarnings("ignore", message=".*np\\.object.*", category=FutureWarning)
        try:
            inference_model.export(
                str(temporary), format="onnx", verbose=False, input_signature=_input_signature(model)
            )
        except (ValueError, TypeError, NotImplementedError):
            # Keras versions without ONNX export (or with a broken one): convert with tf2onnx.
            _export_with_tf2onnx(inference_model, temporary)
        OnnxBoneAgeModel(temporary)  # refuse to move a graph into place that onnxruntime cannot run
    return Path(onnx_path)


def export_prediction_graph(model, onnx_path, *, precision: str, calibration) -> "OnnxBoneAgeModel":
    """The prediction command's graph of `model` at `onnx_path`: exported, then quantised to int8
    when `precision` is "int8" (ranges from `calibration`, the calibration split's (images, male)).
    Stage 04 and the ensembles of runs both make theirs here."""
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"onnx_precision: expected {' or '.join(ONNX_PRECISIONS)}, got {precision!r}")
    export_onnx(model, onnx_path)
    if precision == "int8":
        quantize_int8(onnx_path, *calibration)
    return OnnxBoneAgeModel(onnx_path)


def quantize_int8(onnx_path, images, male, *, calibration_images: int = 512) -> Path:
    """Replace the float32 graph at `onnx_path` by its static int8 quantisation, atomically.

    Weights per output channel, activations with ranges calibrated on up to `calibration_images`
    of `images` (uint8 (N, S, S), the calibration split's: never the test split) and `male` (N,),
    QDQ format, so that onnxruntime runs the convolutions on the CPU's int8 instructions (VNNI,
    AMX). Stage 04 measures what it costs in accuracy (`evaluation.runtime_agreement`).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path = Path(onnx_path)
    images, male = np.asarray(images)[:calibration_images], np.asarray(male, dtype=np.float32).reshape(-1)[:calibration_images]
    if images.ndim != 3 or len(images) == 0 or len(images) != len(male):
        raise ValueError(f"{onnx_path.name}: int8 calibration needs images (N, S, S) and male (N,), N >= 1; "
                         f"got {images.shape} and {male.shape}")

    class Batches(CalibrationDataReader):
        def __init__(self, batch_size=64):
            self.starts = iter(range(0, len(images), batch_size))
            self.batch_size = batch_size

        def get_next(self):
            start = next(self.starts, None)
            if start is None:
                return None
            return _feed(images[start : start + self.batch_size], male[start : start + self.batch_size])

    with tempfile.TemporaryDirectory(prefix="bone-age-int8-") as scratch, atomic_path(onnx_path) as temporary:
        prepared = Path(scratch) / "prepared.onnx"
        # Shape inference and graph fusion (BatchNorm into the convolutions) before quantising;
        # the symbolic shape pass needs sympy and is not needed for fixed image sizes.
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(temporary), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        OnnxBoneAgeModel(temporary)  # refuse to move a graph into place that onnxruntime cannot run
    return onnx_path


def _inference_model(model):
    """The same layers, called with training=False.

    Keras' random augmentation layers default to training=True when called outside `fit`; an
    exported graph of the plain model would augment every prediction (and hold random ops that
    ONNX lacks).
    """
    import keras

    if not isinstance(model.input, dict) or set(model.input) != set(INPUT_NAMES):
        raise ValueError(f"model {model.name!r}: expected a dict of inputs {INPUT_NAMES}, got {model.input}")
    inputs = {name: keras.Input(shape=model.input[name].shape[1:], name=name) for name in INPUT_NAMES}
    return keras.Model(inputs, model(inputs, training=False), name=f"{model.name}_inference")


def _input_signature(model) -> list:
    import keras

    return [{name: keras.InputSpec(shape=model.input[name].shape, dtype="float32", name=name) for name in INPUT_NAMES}]


def _export_with_tf2onnx(inference_model, onnx_path: Path) -> None:
    import tensorflow
    import tf2onnx

    signature = [
        {name: tensorflow.TensorSpec(inference_model.input[name].shape, tensorflow.float32, name=name)
         for name in INPUT_NAMES}
    ]
    tf2onnx.convert.from_keras(inference_model, input_signature=signature, output_path=str(onnx_path))


class OnnxBoneAgeModel:
    """An exported bone-age model: `.predict(images_uint8 (N, S, S), male (N,)) -> months (N,)`."""

    def __init__(self, onnx_path, *, batch_size: int = BATCH_SIZE, threads: int = THREADS):
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{onnx_path}: ONNX model file not found")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: the machine is shared, and the prediction
        # command runs the quality checks beside the network.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: the CLI's stderr is for the user
        try:
            self.session = onnxruntime.InferenceSession(
                str(onnx_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own unexported exception types
            raise ValueError(f"{onnx_path}: not a readable ONNX model ({error})") from error
        inputs = {node.name: node for node in self.session.get_inputs()}
        if set(inputs) != set(INPUT_NAMES):
            raise ValueError(f"{onnx_path}: expected inputs {INPUT_NAMES}, the graph has {sorted(inputs)}")
        self.path = onnx_path
        self.batch_size = batch_size
        self.image_size = int(inputs["image"].shape[1])

    def predict(self, images, male, tta: str = "none") -> np.ndarray:
        """Bone age in months, (N,), clipped to the data's age range like `model.predict_months`,
        from uint8 (N, S, S) images and (N,) 0/1 sex flags; `tta` is a mode of
        `parameters.TTA_MODES`."""
        return tta_average(self._run, images, male, tta)

    def _run(self, images: np.ndarray, male) -> np.ndarray:
        male = np.asarray(male, dtype=np.float32).reshape(-1)
        expected = (self.image_size, self.image_size)
        if images.ndim != 3 or images.shape[1:] != expected or len(images) != len(male):
            raise ValueError(
                f"{self.path.name}: expected images (N, {self.image_size}, {self.image_size}) and male (N,); "
                f"got {images.shape} and {male.shape}"
            )
        months = np.empty(len(images), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            months[start:stop] = self.session.run(None, _feed(images[start:stop], male[start:stop]))[0].reshape(-1)
        return months


def _feed(images: np.ndarray, male: np.ndarray) -> dict:
    """The graph's inputs for uint8 (N, S, S) images and float32 (N,) sex flags (the same layout as
    `model.model_inputs`, which this module cannot import: it loads TensorFlow)."""
    return {"image": images[:, :, :, np.newaxis].astype(np.float32), "male": male[:, np.newaxis]}

