"""Keras models that read a radiograph and the patient's sex and return bone age in months.

Two named architectures share the same inputs and output:

- "ours": a compact CNN (stages of Conv-BatchNorm-ReLU, residual or RepVGG blocks, global average
  pooling) with sex concatenated after pooling, trained with AdamW + warmup/cosine decay on a
  Huber or L1 loss; every choice of it is a run parameter (presets.yaml).
- "seed_baseline": the seed study's model as it stood: Conv2D + BatchNorm + MaxPool + Dropout
  blocks, global average pooling, Dense 512/256/128, linear output, Adam 1e-3, MAE loss, and
  ImageDataGenerator-style augmentation (rotation 20 deg, shifts 0.2, zoom 0.2, horizontal flip).
  It is image-only, as the Kaggle-style seed notebooks were (they fed `flow_from_dataframe`
  images alone); the "male" input exists so that both models are called the same way, and is
  left unconnected.

- a keras.applications backbone (`parameters.BACKBONES`: EfficientNetV2-B0/S, ResNet50V2,
  InceptionV3, ConvNeXt-Tiny; `utils/backbones.py`) without its classifier: the gray image
  repeated into the 3 channels ImageNet networks read, each family's own preprocess_input as a
  Keras layer (or the network's built-in rescaling), our augmentation, and our head (global
  average pooling, dropout, sex after it, Dense, standardised age). Its last feature map is an
  Identity layer named LAST_CONV_LAYER, so Grad-CAM finds it in every backbone. Random
  initialisation, Keras' ImageNet weights, or a local weights file (`init_weights`).

All models take raw 0..255 pixels (rescaling is inside) and end with a Rescaling layer that
turns the standardised prediction into months, so that a saved .keras file is self-contained.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import layers

from utils import backbones
from utils.parameters import ARCHITECTURES, BACKBONE_OPTIONS, BACKBONES, DISTRIBUTION_RANGE, NETWORK_OPTIONS
from utils.preprocessing import tta_average

LAST_CONV_LAYER = "last_conv"  # Grad-CAM (utils/explain.py) looks for this name
OUTPUT_LAYER = "bone_age_months"

# The seed baseline is the seed study's model as it stood: a fixed reference, not a design to tune.
SEED_BASELINE_DEFAULTS = {"widths": (32, 64, 128, 256), "dropout": 0.25}
# The seed study trained with Adam at 1e-3 on batches of 32, whatever the run's own settings.
SEED_BASELINE_TRAINING = {"batch_size": 32, "learning_rate": 1e-3}


def build_model(
    image_size: int,
    *,
    architecture: str = "ours",
    target_mean: float,
    target_std: float,
    augment: bool = True,
    backbone_weights=None,
    fused: bool = False,
    any_size: bool = False,
    **options,
) -> keras.Model:
    """A Functional model: {"image": (S, S, 1) raw 0..255, "male": (1,) 0/1} -> months (None, 1).

    For "ours", `options` are the network parameters (`Parameters.network_options()`: every
    one of `parameters.NETWORK_OPTIONS`, whose values live in presets.yaml). For the seed
    baseline they may override SEED_BASELINE_DEFAULTS (tests use smaller widths). For a
    keras.applications backbone they are `Parameters.backbone_options()` (head and
    augmentation), and `backbone_weights` is None (random), "imagenet" (Keras downloads them)
    or a keras.applications .h5 weights file (`backbones.resolve_init_weights` decides which).
    Augmentation layers are active only when the model is called with training=True.
    Under a mixed-precision policy (`set_precision`) the output layer stays float32.
    `fused` builds the inference form of RepVGG blocks (one 3x3 conv with a bias each), into
    which `fold_into` folds a trained network's branches. `any_size` (our network only) takes
    images of any side, for progressive resizing; the network shipped takes `image_size`.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
    if not target_std > 0:
        raise ValueError(f"target_std must be positive, got {target_std}")
    if backbone_weights is not None and architecture not in BACKBONES:
        raise ValueError(f"backbone_weights are for keras.applications backbones, not {architecture!r}")
    known = {"ours": NETWORK_OPTIONS, "seed_baseline": tuple(SEED_BASELINE_DEFAULTS)}.get(architecture, BACKBONE_OPTIONS)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for architecture {architecture!r}; known: {sorted(known)}")
    if architecture != "seed_baseline":
        missing = sorted(set(known) - set(options))
        if missing:
            raise ValueError(f"missing option(s) {missing} of the {architecture!r} network "
                             "(see Parameters.network_options() and backbone_options())")
        settings = dict(options)
    else:
        settings = {**SEED_BASELINE_DEFAULTS, **options}

    if any_size and architecture != "ours":
        raise ValueError(f"any_size (progressive resizing) is for our network, not {architecture!r}")
    side = None if any_size else image_size
    image = keras.Input((side, side, 1), name="image")
    male = keras.Input((1,), name="male")
    if architecture == "ours":
        augmentation = _ours_augmentation(settings) if augment else []
        standardised = _ours_network(_apply(augmentation, image), male, settings, fused=fused)
    elif architecture in BACKBONES:
        augmentation = _ours_augmentation(settings) if augment else []
        standardised = _backbone_network(_apply(augmentation, image), male, architecture, settings, backbone_weights)
    else:
        augmentation = _seed_augmentation() if augment else []
        standardised = _seed_network(_apply(augmentation, image), settings)
    # The network predicts the standardised age; this layer turns it into months (in float32
    # under mixed precision: the months and the loss need its range and precision).
    months = layers.Rescaling(scale=float(target_std), offset=float(target_mean), name=OUTPUT_LAYER,
                              **_float32_under_mixed_precision())(standardised)
    return keras.Model({"image": image, "male": male}, months, name=f"bone_age_{architecture}")


def build_for_run(parameters, *, target_mean: float, target_std: float, architecture: str | None = None,
                  backbone_weights=None, shipped: bool = False) -> keras.Model:
    """The network a run's `Parameters` describe (its own architecture unless `architecture` is given),
    as it trains or, with `shipped`, as it is shipped (`for_inference`); `backbone_weights` as
    `build_model` takes them (`backbones.resolve_init_weights(...).backbone`)."""
    architecture = architecture or parameters.architecture
    folds, any_side = _trained_unlike_shipped(parameters, architecture)
    options = {"ours": parameters.network_options, "seed_baseline": dict}.get(architecture, parameters.backbone_options)()
    return build_model(
        parameters.image_size,
        architecture=architecture,
        target_mean=target_mean,
        target_std=target_std,
        augment=parameters.augment,
        backbone_weights=backbone_weights,
        fused=shipped and folds,
        any_size=not shipped and any_side,
        **options,
    )


def for_inference(trained: keras.Model, parameters, *, target_mean: float, target_std: float) -> keras.Model:
    """The network a run ships: `trained` itself; or its weights in the network of `image_size`
    where it trained on any side (progressive resizing), with RepVGG branches folded into one 3x3
    conv each (the same predictions, a plain stack of convs)."""
    if not any(_trained_unlike_shipped(parameters, parameters.architecture)):
        return trained
    return fold_into(trained, build_for_run(parameters, target_mean=target_mean, target_std=target_std, shipped=True))


def _trained_unlike_shipped(parameters, architecture: str) -> tuple[bool, bool]:
    """What sets a run's network in training apart from the one it ships: (RepVGG branches to fold,
    any image side while training for progressive resizing). Our network only."""
    ours = architecture == "ours"
    return ours and parameters.block == "repvgg", ours and parameters.progressive_image_size is not None


def _apply(layer_list, tensor):
    for layer in layer_list:
        tensor = layer(tensor)
    return tensor


def _ours_augmentation(settings: dict) -> list:
    """Moderate geometric + intensity augmentation; the fill is black like the radiograph background."""
    shift = settings["augment_shift"]
    augmentation = [
        layers.RandomRotation(settings["augment_rotation_degrees"] / 360.0, fill_mode="constant", name="augment_rotation"),
        layers.RandomTranslation(shift, shift, fill_mode="constant", name="augment_shift"),
        layers.RandomZoom(settings["augment_zoom"], fill_mode="constant", name="augment_zoom"),
        layers.RandomContrast(settings["augment_contrast"], value_range=(0, 255), name="augment_contrast"),
        layers.RandomBrightness(settings["augment_brightness"], value_range=(0, 255), name="augment_brightness"),
    ]
    if settings["augment_flip"]:
        augmentation.append(layers.RandomFlip("horizontal", name="augment_flip"))
    return augmentation


def _seed_augmentation() -> list:
    """Keras ImageDataGenerator(rotation_range=20, width/height_shift_range=0.2, zoom_range=0.2,
    horizontal_flip=True) as layers; fill_mode "nearest" was ImageDataGenerator's default."""
    return [
        layers.RandomRotation(20 / 360.0, fill_mode="nearest", name="augment_rotation"),
        layers.RandomTranslation(0.2, 0.2, fill_mode="nearest", name="augment_shift"),
        layers.RandomZoom(0.2, fill_mode="nearest", name="augment_zoom"),
        layers.RandomFlip("horizontal", name="augment_flip"),
    ]


def _ours_network(image, male, settings: dict, *, fused: bool = False):
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(image)
    widths, momentum = settings["widths"], settings["batchnorm_momentum"]
    x = _conv_bn_relu(x, widths[0], "stem", stride=settings["stem_stride"], momentum=momentum)
    for stage, width in enumerate(widths, start=1):
        for index in range(1, settings["convs_per_stage"] + 1):
            last = stage == len(widths) and index == settings["convs_per_stage"]
            name = LAST_CONV_LAYER if last else f"stage{stage}_{settings['block']}{index}"
            if settings["block"] == "residual":
                x = _residual_block(x, width, name, momentum=momentum)
            elif settings["block"] == "repvgg":
                x = _repvgg_block(x, width, name, momentum=momentum, fused=fused)
            else:
                x = _conv_bn_relu(x, width, name, stride=1, momentum=momentum)
        if stage < len(widths):
            x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return _head(x, male, settings)


def _head(x, male, settings: dict):
    """Pooling, dropout, sex, Dense, the standardised age: our network's head, on any feature map."""
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(settings["dropout"], name="head_dropout")(x)
    # Sex after pooling: it shifts the age estimate, it does not change what the filters see.
    # It joins after the dropout: dropping it turned 20% of boys into girls in training, and the
    # model hedged (test bias girls +4.3, boys -1.6 months in results/rsna100 of commit 2477775).
    x = layers.Concatenate(name="with_sex")([x, male])
    x = layers.Dense(settings["dense_units"], activation="relu", name="head_dense")(x)
    if settings["head"] == "regression":
        return layers.Dense(1, name="standardised_age")(x)
    return _distribution_head(x, settings["age_bins"])


def _distribution_head(x, bins: int):
    """A softmax over `bins` standardised ages evenly spread over +-DISTRIBUTION_RANGE SD, and its
    expected value (the mean of the distribution rather than one regressed number; the loss is
    still the run's Huber or L1 on it). The bin centres are the fixed kernel of a Dense layer, so
    the saved model needs no custom layer. In float32 under mixed precision: an expected value
    over many bins in bfloat16 would be off by about 0.01 SD."""
    float32 = _float32_under_mixed_precision()
    probabilities = layers.Dense(bins, activation="softmax", name="age_distribution", **float32)(x)
    expected = layers.Dense(1, use_bias=False, trainable=False, name="standardised_age", **float32)
    standardised = expected(probabilities)
    expected.kernel.assign(distribution_centres(bins)[:, None])
    return standardised


def _float32_under_mixed_precision() -> dict:
    """A layer's keyword arguments that keep it in float32 under a mixed-precision policy."""
    return {"dtype": "float32"} if keras.mixed_precision.global_policy().name.startswith("mixed") else {}


def distribution_centres(bins: int) -> np.ndarray:
    """The standardised ages of the distribution head's bins."""
    return np.linspace(-DISTRIBUTION_RANGE, DISTRIBUTION_RANGE, bins, dtype="float32")


def _backbone_network(image, male, architecture: str, settings: dict, weights):
    """A keras.applications network without its classifier, fed the way its family expects, and our head.

    The network's layers join this model's graph (`input_tensor`), rather than nesting as one
    layer, so that Grad-CAM and `backbone_layers` see them. Keras loads ImageNet or local .h5
    weights by layer order, which the layers before it (without weights) do not disturb.
    """
    spec = backbones.SPECS[architecture]
    # ImageNet networks read RGB: the same gray in each channel.
    x = layers.Concatenate(name="gray_to_rgb")([image, image, image])
    # The family's preprocess_input (or the network's built-in rescaling) as one Rescaling layer.
    scale, offset = backbones.PREPROCESSING[spec.preprocessing]
    x = layers.Rescaling(scale, offset=offset, name="imagenet_preprocess")(x)
    own = {"include_preprocessing": False} if spec.constructor in backbones.OWN_PREPROCESSING else {}
    weights = None if weights is None else str(weights)
    network = getattr(keras.applications, spec.constructor)(include_top=False, weights=weights, input_tensor=x, **own)
    return _head(layers.Identity(name=LAST_CONV_LAYER)(network.output), male, settings)


def backbone_layers(model: keras.Model) -> list:
    """The layers `freeze_backbone_epochs` freezes: those with weights before the global pooling
    (a 4-D output: the convolutional part, whatever the network), not the head after it."""
    return [layer for layer in model.layers
            if layer.weights and not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4]


def _conv_bn_relu(x, filters: int, name: str, *, stride: int, momentum: float):
    """Conv (no bias: BatchNorm has one) -> BatchNorm -> ReLU; the ReLU output carries `name`."""
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=name)(x)


def _residual_block(x, filters: int, name: str, *, momentum: float):
    """Two 3x3 conv-BN with an identity shortcut (a 1x1 projection where the width changes).

    The second BatchNorm starts at zero scale, so each block starts as the identity and a
    deeper network trains as easily as a shallow one (Goyal et al. 2017).
    """
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
        shortcut = layers.BatchNormalization(momentum=momentum, name=f"{name}_project_bn")(shortcut)
    y = _conv_bn_relu(x, filters, f"{name}_a", stride=1, momentum=momentum)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(y)
    y = layers.BatchNormalization(momentum=momentum, gamma_initializer="zeros", name=f"{name}_b_bn")(y)
    return layers.Activation("relu", name=name)(layers.Add(name=f"{name}_add")([shortcut, y]))


def _repvgg_block(x, filters: int, name: str, *, momentum: float, fused: bool):
    """RepVGG (Ding et al. 2021): while training, a 3x3 conv-BN, a 1x1 conv-BN and, where the width
    does not change, a BatchNorm of the input itself, summed before the ReLU; the extra branches
    let a deep plain stack train like a residual one. All three are linear up to the ReLU, so for
    inference they fold into one 3x3 conv with a bias (`fused`, `fold_into`): the shipped
    network is a plain stack of 3x3 convs, the layer this CPU runs fastest."""
    if fused:
        return layers.Activation("relu", name=name)(layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x))
    branches = []
    for size in (3, 1):
        branch = layers.Conv2D(filters, size, padding="same", use_bias=False, name=f"{name}_{size}x{size}_conv")(x)
        branches.append(layers.BatchNormalization(momentum=momentum, name=f"{name}_{size}x{size}_bn")(branch))
    if x.shape[-1] == filters:
        branches.append(layers.BatchNormalization(momentum=momentum, name=f"{name}_identity_bn")(x))
    return layers.Activation("relu", name=name)(layers.Add(name=f"{name}_add")(branches))


def fold_into(trained: keras.Model, inference: keras.Model) -> keras.Model:
    """`inference` (`build_for_run(..., shipped=True)`) holding `trained`'s weights: each RepVGG
    block's branches folded into its one 3x3 conv, every other layer's weights copied by name."""
    source = {layer.name: layer for layer in trained.layers}
    for layer in inference.layers:
        if not layer.weights:
            continue
        block = layer.name.removesuffix("_conv")
        if f"{block}_3x3_conv" in source:
            layer.set_weights(_folded_branches(source, block))
        elif layer.name in source:
            layer.set_weights(source[layer.name].get_weights())
        else:
            raise ValueError(f"layer {layer.name!r} of the inference network is not in the trained one "
                             "(was the inference network built from the same parameters?)")
    return inference


def _folded_branches(source: dict, block: str) -> list[np.ndarray]:
    """[kernel (3, 3, in, out), bias (out,)] of one conv equal to the sum of a block's branches,
    each BatchNorm in inference mode: gamma * (y - mean) / sqrt(variance + epsilon) + beta."""
    def fold(kernel, batchnorm):
        gamma, beta, mean, variance = batchnorm.get_weights()
        scale = gamma / np.sqrt(variance + batchnorm.epsilon)
        return kernel * scale, beta - mean * scale

    kernel_3x3 = source[f"{block}_3x3_conv"].get_weights()[0]
    kernel_1x1 = np.zeros_like(kernel_3x3)
    kernel_1x1[1:2, 1:2] = source[f"{block}_1x1_conv"].get_weights()[0]  # the 1x1 at the 3x3's centre
    branches = [fold(kernel_3x3, source[f"{block}_3x3_bn"]), fold(kernel_1x1, source[f"{block}_1x1_bn"])]
    if f"{block}_identity_bn" in source:
        identity = np.zeros_like(kernel_3x3)
        identity[1, 1] = np.eye(kernel_3x3.shape[2], dtype=identity.dtype)  # each channel to itself
        branches.append(fold(identity, source[f"{block}_identity_bn"]))
    return [sum(kernel for kernel, _ in branches), sum(bias for _, bias in branches)]


def _seed_network(image, settings: dict):
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(image)
    for block, width in enumerate(settings["widths"], start=1):
        last = block == len(settings["widths"])
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=LAST_CONV_LAYER if last else f"block{block}_conv")(x)
        x = layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Dropout(settings["dropout"], name=f"block{block}_dropout")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    for units in (512, 256, 128):
        x = layers.Dense(units, activation="relu", name=f"dense{units}")(x)
    return layers.Dense(1, name="standardised_age")(x)


def compile_model(
    model: keras.Model,
    *,
    architecture: str,
    learning_rate: float,
    steps_per_epoch: int,
    epochs: int,
    weight_decay: float | None = None,
    loss: str | None = None,
    huber_delta: float | None = None,
    ema: bool = False,
    ema_momentum: float = 0.99,
    freeze_steps: int = 0,
    finetune_factor: float = 1.0,
) -> keras.Model:
    """Compile with the architecture's optimiser and loss; the metric "mae" is in months.

    The loss is computed on the months output, scaled so that it equals a loss on the
    standardised target times a constant: MAE(months) = std * MAE(z) and
    Huber(delta * std)(months) = std**2 * Huber(delta)(z). Adam/AdamW updates are invariant to
    a constant scale of the loss, so this trains exactly like a loss on the standardised
    pre-rescaling output, while keeping one output, built-in (serialisable) losses, and a
    saved model that needs no custom objects. `huber_delta` is in standard deviations.
    For "ours", `weight_decay`, `loss` and `huber_delta` are required
    (`Parameters.training_options()`); `ema` keeps a moving average of the weights, which
    `training.train_model` evaluates and keeps. A keras.applications backbone trains like ours.
    With `freeze_steps` (training.train_model's frozen backbone), the schedule's learning rate
    is multiplied by `finetune_factor` from that step on (`FineTuneSchedule`).
    """
    if architecture == "seed_baseline":
        optimizer = keras.optimizers.Adam(learning_rate)
        loss = keras.losses.MeanAbsoluteError()
    elif architecture == "ours" or architecture in BACKBONES:
        if weight_decay is None or loss not in ("huber", "l1") or (loss == "huber" and huber_delta is None):
            raise ValueError("our network needs weight_decay, loss ('huber' or 'l1') and, for huber, huber_delta")
        total_steps = max(1, steps_per_epoch * epochs)
        warmup_steps = min(steps_per_epoch, total_steps // 2)
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate / 10,
            warmup_target=learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=max(1, total_steps - warmup_steps),
            alpha=0.01,
        )
        if freeze_steps:
            schedule = FineTuneSchedule(schedule, boundary=freeze_steps, factor=finetune_factor)
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=weight_decay, use_ema=ema, ema_momentum=ema_momentum)
        target_std = float(model.get_layer(OUTPUT_LAYER).scale)
        loss = keras.losses.Huber(delta=huber_delta * target_std) if loss == "huber" else keras.losses.MeanAbsoluteError()
    else:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
    model.compile(optimizer=optimizer, loss=loss, metrics=[keras.metrics.MeanAbsoluteError(name="mae")])
    return model


@keras.saving.register_keras_serializable(package="bone_age")
class FineTuneSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Fine-tuning: `schedule`'s learning rate while the head trains alone (steps < `boundary`),
    times `factor` once the whole network trains (the pretrained features move less than the
    new head). Registered, so that checkpoints with their optimizer load again."""

    def __init__(self, schedule, boundary: int, factor: float):
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        self.schedule, self.boundary, self.factor = schedule, int(boundary), float(factor)

    def __call__(self, step):
        rate = self.schedule(step)
        return keras.ops.where(keras.ops.less(step, self.boundary), rate, rate * self.factor)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "boundary": self.boundary,
                "factor": self.factor}


def set_precision(policy: str) -> None:
    """Keras' global dtype policy for the models built from now on: a mode of
    `parameters.MIXED_PRECISION` ("none" is float32). mixed_float16 is for GPUs (Keras then
    scales the loss); on this CPU (AVX512-BF16) mixed_bfloat16 trains 1.27x as fast as float32 and
    mixed_float16 6x slower (results/benchmarks/mixed_precision.json)."""
    keras.mixed_precision.set_global_policy("float32" if policy == "none" else policy)


def to_float32(model: keras.Model) -> keras.Model:
    """The same network and weights computing in float32: what a mixed-precision run ships, so that
    the .keras file and its ONNX export run on any CPU (float16 kernels are slow or missing there)."""
    def as_float32(value):
        if isinstance(value, dict):
            if value.get("class_name") == "DTypePolicy" and str(value.get("config", {}).get("name", "")).startswith("mixed"):
                return {**value, "config": {**value["config"], "name": "float32"}}
            return {key: as_float32(item) for key, item in value.items()}
        if isinstance(value, list):
            return [as_float32(item) for item in value]
        return value

    copy = model.__class__.from_config(as_float32(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def distribution_strategy(distribution: str):
    """None for "none"; for "mirrored", a tf.distribute.MirroredStrategy over every visible GPU or,
    without one, over the logical CPU devices (several only where a test configured them with
    tf.config.set_logical_device_configuration before TensorFlow started; one CPU device makes a
    strategy of one replica). Build the model in `strategy.scope()` and pass the strategy to
    training.train_model. Multi-worker training is not offered: with Keras 3 on TensorFlow,
    MultiWorkerMirroredStrategy fails at the first step (keras-team/keras#20585)."""
    if distribution == "none":
        return None
    if distribution != "mirrored":
        raise ValueError(f"unknown distribution {distribution!r}; expected none or mirrored")
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
    # TensorFlow announces the devices at INFO level on stdout; the notebook says it itself.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("WARNING")
    try:
        return tf.distribute.MirroredStrategy(devices)
    finally:
        logger.setLevel(level)


def augmentation_pipeline(model: keras.Model) -> keras.Sequential:
    """The model's training-time augmentation layers as one callable, e.g. to preview them."""
    return keras.Sequential([layer for layer in model.layers if layer.name.startswith("augment_")], name="augmentation")


def model_inputs(images: np.ndarray, male: np.ndarray) -> dict:
    """The model's input dict from uint8 (N, S, S) images and (N,) sex flags."""
    images = np.asarray(images)
    male = np.asarray(male, dtype=np.float32).reshape(-1, 1)
    if images.ndim != 3 or len(images) != len(male):
        raise ValueError(f"expected images (N, S, S) and male (N,), got {images.shape} and {male.shape[:1]}")
    return {"image": images[..., np.newaxis].astype(np.float32), "male": male}


def predict_months(model: keras.Model, images: np.ndarray, male: np.ndarray, batch_size: int = 256, tta: str = "none") -> np.ndarray:
    """Bone age in months, (N,), clipped to the data's age range. `tta` (a mode of
    `parameters.TTA_MODES`) averages the views of `preprocessing.tta_views`."""

    def predict_view(view, male):
        return model.predict(model_inputs(view, male), batch_size=batch_size, verbose=0).reshape(-1)

    return tta_average(predict_view, images, male, tta)


def measure_inference_speed(model: keras.Model, image_size: int, n: int = 1024, batch_size: int = 256, repeats: int = 20) -> dict:
    """Batch throughput (images/s, via predict_months) and single-image latency (median seconds)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, image_size, image_size), dtype=np.uint8)
    male = rng.integers(0, 2, n).astype(np.float32)
    predict_months(model, images[:batch_size], male[:batch_size], batch_size=batch_size)  # trace once
    start = time.perf_counter()
    predict_months(model, images, male, batch_size=batch_size)
    batch_seconds = time.perf_counter() - start
    single = model_inputs(images[:1], male[:1])
    model.predict_on_batch(single)  # trace once
    latencies = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(single)
        latencies.append(time.perf_counter() - start)
    return {
        "batch_size": batch_size,
        "images": n,
        "batch_images_per_second": n / batch_seconds,
        "single_image_seconds": float(np.median(latencies)),
    }


def load_initial_weights(model: keras.Model, path) -> dict:
    """Copy weights saved by another run into `model` (transfer learning); returns what loaded.

    A .keras file is matched layer by layer by name, skipping layers whose weight shapes
    differ (e.g. another image size never changes conv kernels, but another width does).
    A .weights.h5 file holds no layer names, so Keras matches it by layer order with
    `skip_mismatch=True`; the report then lists the layers whose weights changed.
    Returns {"loaded": [layer names], "skipped": {layer name: reason}}.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.name.endswith(".weights.h5"):
        return _load_h5_by_order(model, path)
    if path.suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a .keras archive")
        return _load_keras_by_name(model, keras.models.load_model(path, compile=False))
    raise ValueError(f"{path}: expected a .keras or .weights.h5 file")


def _load_keras_by_name(model: keras.Model, source: keras.Model) -> dict:
    source_layers = {layer.name: layer for layer in source.layers}
    loaded, skipped = [], {}
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in source_layers:
            skipped[layer.name] = "not in the source model"
            continue
        weights = source_layers[layer.name].get_weights()
        expected = [tuple(weight.shape) for weight in layer.weights]
        found = [tuple(weight.shape) for weight in weights]
        if expected != found:
            skipped[layer.name] = f"shapes differ: model {expected}, file {found}"
            continue
        layer.set_weights(weights)
        loaded.append(layer.name)
    return {"loaded": loaded, "skipped": skipped}


def _load_h5_by_order(model: keras.Model, path: Path) -> dict:
    before = {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
    model.load_weights(path, skip_mismatch=True)
    loaded, skipped = [], {}
    for layer in model.layers:
        if layer.name not in before:
            continue
        changed = any(not np.array_equal(old, new) for old, new in zip(before[layer.name], layer.get_weights()))
        if changed:
            loaded.append(layer.name)
        else:
            skipped[layer.name] = "no matching weights in the file"
    return {"loaded": loaded, "skipped": skipped}


class KerasBoneAgeModel:
    """A .keras file behind the interface of `onnx_runtime.OnnxBoneAgeModel`, for the prediction
    command on models without an ONNX export (and for Grad-CAM, which needs the Keras graph):
    `.predict(images_uint8 (N, S, S), male (N,), tta) -> months (N,)`."""

    def __init__(self, keras_path, *, batch_size: int = 256):
        keras_path = Path(keras_path)
        if not keras_path.is_file():
            raise FileNotFoundError(f"{keras_path}: Keras model file not found")
        self.path = keras_path
        self.batch_size = batch_size
        self.model = keras.models.load_model(keras_path, compile=False)
        self.image_size = int(self.model.input["image"].shape[1])

    def predict(self, images, male, tta: str = "none") -> np.ndarray:
        """Bone age in months, (N,), from uint8 (N, S, S) images and (N,) 0/1 sex flags."""
        return predict_months(self.model, images, male, batch_size=self.batch_size, tta=tta)
