"""The parameters of a run: one typed, validated schema for every name in presets.yaml.

`load_parameters(preset, overrides)` merges `defaults`, the preset and the overrides, then
checks the whole set at once, before any stage runs: each bad value is named with what it
expects (`epochs: expected an integer >= 1, got 'abc'`). The result is a frozen `Parameters`
object; notebooks and `utils` read its attributes (`parameters.epochs`). The values
themselves live only in presets.yaml: this module holds their types, ranges and choices.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from utils.config import PRESETS_FILE, SPLITS

CONTRASTS = ("clahe", "percentile", "none")
HAND_CROPS = ("none", "box", "rotated")
# keras.applications networks with our head (sex after pooling, the same output layer); what each
# needs (constructor, preprocessing, ImageNet weights file) is in utils/backbones.py.
BACKBONES = ("efficientnetv2b0", "efficientnetv2s", "resnet50v2", "inceptionv3", "convnext_tiny")
ARCHITECTURES = ("ours", "seed_baseline", *BACKBONES)
# Smallest input side each keras.applications network accepts (its own checks, stated up front).
BACKBONE_MIN_IMAGE_SIZE = {"inceptionv3": 75}
IMAGENET = "imagenet"  # init_weights: Keras' ImageNet weights of a keras.applications backbone
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
DISTRIBUTIONS = ("none", "mirrored")
IMAGE_CACHES = ("memory", "mmap")
BLOCKS = ("plain", "residual", "repvgg")
# regression: one linear unit; distribution: a softmax over age bins, the prediction its expected value
HEADS = ("regression", "distribution")
DISTRIBUTION_RANGE = 4.0  # the distribution head's bins span +-this many SD of the training ages
LOSSES = ("huber", "l1")
TTA_MODES = ("none", "shift", "flip", "shift_flip")
ONNX_PRECISIONS = ("float32", "int8")
# A run name becomes a folder under results/ and models/: a plain name, never a path.
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_FOLDS = 20


# ---- checks: each returns the cleaned value or raises ValueError("expected ...") ----------------

def _integer(minimum=None, maximum=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValueError(_expected("an integer", minimum, maximum))
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValueError(_expected("an integer", minimum, maximum))
        return value
    return check


def _number(minimum=None, maximum=None, *, above=None, below=None):
    """A real number; `minimum`/`maximum` inclusive, `above`/`below` exclusive."""
    def check(value):
        bounds = [text for bound, text in ((above, f"> {above}"), (minimum, f">= {minimum}"),
                                           (below, f"< {below}"), (maximum, f"<= {maximum}")) if bound is not None]
        description = " ".join(["a number", " and ".join(bounds)]).strip()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"expected {description}")
        if ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
                or (above is not None and value <= above) or (below is not None and value >= below)):
            raise ValueError(f"expected {description}")
        return float(value)
    return check


def _expected(kind, minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"expected {kind} from {minimum} to {maximum}"
    if minimum is not None:
        return f"expected {kind} >= {minimum}"
    if maximum is not None:
        return f"expected {kind} <= {maximum}"
    return f"expected {kind}"


def _boolean(value):
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _choice(*choices):
    def check(value):
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value
    return check


def normalise_tta(value) -> str:
    """A mode of TTA_MODES; the booleans of older presets and model cards mean True -> "shift",
    False -> "none" (the one place that maps them)."""
    if isinstance(value, (bool, np.bool_)):
        return "shift" if value else "none"
    if not isinstance(value, str) or value not in TTA_MODES:
        raise ValueError(f"expected one of {', '.join(TTA_MODES)}")
    return value


def _optional(check):
    def optional(value):
        return None if value is None else check(value)
    return optional


def _text(value):
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _run_name(value):
    if not isinstance(value, str) or not RUN_NAME_PATTERN.match(value) or value in (".", ".."):
        raise ValueError("expected a plain name (letters, digits, '.', '_', '-'; no '/' and no leading '.'), "
                         "which becomes a folder under results/ and models/")
    return value


def _widths(value):
    if (not isinstance(value, (list, tuple)) or not value
            or any(isinstance(item, bool) or not isinstance(item, int) or item < 1 for item in value)):
        raise ValueError("expected a list of positive integers, e.g. [32, 64, 128, 256]")
    return tuple(value)


def _split_fractions(value):
    """Four fractions; validation, calibration and test must be present, because early stopping,
    the intervals and the reported numbers each need their own images."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of {', '.join(SPLITS)} to fractions")
    unknown = sorted(set(value) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected {', '.join(SPLITS)}")
    fractions = {}
    for split in SPLITS:
        fraction = value.get(split, 0)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"expected each of {', '.join(SPLITS)} to be a fraction between 0 and 1 "
                             f"(exclusive); {split} is {fraction!r}")
        fractions[split] = float(fraction)
    if abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"expected fractions that sum to 1; they sum to {sum(fractions.values()):.4g}")
    return fractions


def _parameter(check, help_text: str):
    return field(metadata={"check": check, "help": help_text})


@dataclass(frozen=True)
class Parameters:
    """Every parameter of a run; defaults and presets in presets.yaml, checks here."""

    preset: str = _parameter(_text, "the preset of presets.yaml this run started from")
    run_name: str = _parameter(_run_name, "folder name under results/ and models/ (default: the preset)")
    # data
    dataset: str = _parameter(_text, "'synthetic' or a folder that utils.data reads")
    synthetic_images: int = _parameter(_integer(40), "size of the generated data set")
    synthetic_image_size: int = _parameter(_integer(32, 2048), "side of the generated radiographs, pixels")
    drop_invalid: bool = _parameter(_boolean, "drop bad rows and images instead of stopping")
    split_fractions: dict = _parameter(_split_fractions, "train/validation/calibration/test fractions")
    seed: int = _parameter(_integer(0), "seed of the weights, the augmentation and (unless data_seed) the data and split")
    data_seed: int | None = _parameter(_optional(_integer(0)), "seed of the synthetic data and the split (null: seed); "
                                       "runs of one data_seed share their test images")
    folds: int = _parameter(_integer(1, MAX_FOLDS), "1: one split by split_fractions; K: K-fold cross-validation, "
                            "the test split is fold `fold` of K")
    fold: int = _parameter(_integer(1, MAX_FOLDS), "this run's test fold, 1..folds")
    # preprocessing
    image_size: int = _parameter(_integer(16, 1024), "model input side, pixels")
    pad_to_square: bool = _parameter(_boolean, "aspect-preserving pad before resizing")
    contrast: str = _parameter(_choice(*CONTRASTS), "contrast normalisation")
    hand_crop: str = _parameter(_choice(*HAND_CROPS), "crop to the hand before resizing")
    image_cache: str = _parameter(_choice(*IMAGE_CACHES), "memory: training holds the images in memory; mmap: it "
                                                         "reads each batch from the memory-mapped cache file")
    # network
    architecture: str = _parameter(_choice(*ARCHITECTURES), "our network, the seed study's, or a keras.applications "
                                   "backbone with our head")
    widths: tuple = _parameter(_widths, "filters per stage of 'ours'")
    convs_per_stage: int = _parameter(_integer(1, 8), "3x3 convolutions (or residual or RepVGG blocks) per stage")
    block: str = _parameter(_choice(*BLOCKS), "plain conv-BN-ReLU stacks, residual blocks, or RepVGG blocks "
                         "(3x3, 1x1 and identity branches in training, one 3x3 conv for inference)")
    stem_stride: int = _parameter(_integer(1, 4), "stride of the first convolution")
    dropout: float = _parameter(_number(0.0, below=1.0), "dropout before the head")
    dense_units: int = _parameter(_integer(1), "units of the head's hidden layer")
    head: str = _parameter(_choice(*HEADS), "regression (one linear output) or distribution (softmax over age bins, "
                           "its expected value)")
    age_bins: int = _parameter(_integer(2, 1000), "bins of the distribution head, evenly spread over "
                               f"+-{DISTRIBUTION_RANGE:g} SD of the training ages")
    batchnorm_momentum: float = _parameter(_number(above=0.0, below=1.0), "BatchNorm moving-average momentum")
    init_weights: str | None = _parameter(_optional(_text), "'imagenet' (Keras' weights of a keras.applications "
                                          "backbone), a keras.applications .h5 weights file, or a .keras / "
                                          ".weights.h5 file of a run to start from")
    freeze_backbone_epochs: int = _parameter(_integer(0), "epochs that train the head alone before everything trains")
    finetune_learning_rate_factor: float = _parameter(_number(above=0.0, maximum=1.0),
                                                      "learning rate after the frozen epochs, as a fraction of the schedule's")
    # training
    epochs: int = _parameter(_integer(1), "maximum epochs")
    progressive_image_size: int | None = _parameter(
        _optional(_integer(1, 1024)), "null: every epoch at image_size; N: progressive resizing, the first "
                                       "progressive_epochs epochs train on the images shrunk to N px (validation "
                                       "stays at image_size)")
    progressive_epochs: int = _parameter(_integer(0), "epochs at progressive_image_size before image_size")
    batch_size: int = _parameter(_integer(1, 4096), "images per step, over all devices together")
    learning_rate: float = _parameter(_number(above=0.0, maximum=1.0), "peak learning rate")
    learning_rate_reference_batch: int | None = _parameter(
        _optional(_integer(1)), "null: learning_rate as given; N: learning_rate is the peak for N images per step "
                                "and scales linearly with batch_size")
    mixed_precision: str = _parameter(_choice(*MIXED_PRECISION), "Keras dtype policy while training (none: float32)")
    distribution: str = _parameter(_choice(*DISTRIBUTIONS), "none, or mirrored: tf.distribute.MirroredStrategy over "
                                                           "all visible GPUs (or the logical CPU devices)")
    weight_decay: float = _parameter(_number(0.0, maximum=1.0), "AdamW decoupled weight decay")
    loss: str = _parameter(_choice(*LOSSES), "loss on the standardised age")
    huber_delta: float = _parameter(_number(above=0.0), "Huber delta in standard deviations of the age")
    ema: bool = _parameter(_boolean, "keep an exponential moving average of the weights")
    ema_momentum: float = _parameter(_number(above=0.0, below=1.0), "EMA momentum per step")
    patience: int = _parameter(_integer(1), "early-stopping patience, epochs")
    refit_on_validation: bool = _parameter(_boolean, "train on train + validation for exactly `epochs` epochs and "
                                           "keep the last (epochs chosen on validation by a run without this); "
                                           "the validation MAE is then in-sample")
    time_budget_minutes: float | None = _parameter(_optional(_number(above=0.0)), "stop training after this long")
    augment: bool = _parameter(_boolean, "training-time augmentation")
    augment_rotation_degrees: float = _parameter(_number(0.0, 180.0), "random rotation, +- degrees")
    augment_shift: float = _parameter(_number(0.0, 0.5), "random shift, fraction of the side")
    augment_zoom: float = _parameter(_number(0.0, below=1.0), "random zoom, fraction")
    augment_contrast: float = _parameter(_number(0.0, 1.0), "random contrast factor")
    augment_brightness: float = _parameter(_number(0.0, 1.0), "random brightness factor")
    augment_flip: bool = _parameter(_boolean, "random horizontal flip")
    ensemble_members: int = _parameter(_integer(1, 8), "networks trained with seeds seed, seed+1, ... and averaged")
    train_seed_baseline: bool = _parameter(_boolean, "also train the seed study's model")
    # evaluation
    tta: str = _parameter(normalise_tta, "test-time augmentation")
    interval_coverage: float = _parameter(_number(above=0.5, below=1.0), "nominal interval coverage")
    onnx_precision: str = _parameter(_choice(*ONNX_PRECISIONS), "float32, or int8: the ONNX graph of the prediction "
                                     "command quantised statically (calibrated on the calibration split)")
    report_at_root: bool = _parameter(_boolean, "also copy Report.pdf to the repository root")

    @property
    def peak_learning_rate(self) -> float:
        """The learning rate training uses: `learning_rate`, scaled linearly to `batch_size` when
        `learning_rate_reference_batch` is set (Goyal et al. 2017; the warm-up keeps the start stable)."""
        if self.learning_rate_reference_batch is None:
            return self.learning_rate
        return self.learning_rate * self.batch_size / self.learning_rate_reference_batch

    @property
    def resolved_data_seed(self) -> int:
        """The seed of the synthetic data and the split: `data_seed`, or `seed` when it is null."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def progressive_schedule(self) -> tuple[int, int] | None:
        """(side, epochs) of progressive resizing's first phase, or None (`training.train_model`'s `progressive`)."""
        if self.progressive_image_size is None:
            return None
        return self.progressive_image_size, self.progressive_epochs

    @property
    def time_budget_seconds(self) -> float | None:
        return None if self.time_budget_minutes is None else self.time_budget_minutes * 60

    def network_options(self) -> dict:
        """The options of `model.build_model` for our network."""
        return {name: getattr(self, name) for name in NETWORK_OPTIONS}

    def backbone_options(self) -> dict:
        """The options of `model.build_model` for a keras.applications backbone (head and augmentation)."""
        return {name: getattr(self, name) for name in BACKBONE_OPTIONS}

    def training_options(self) -> dict:
        """The options of `model.compile_model` for our network."""
        return {name: getattr(self, name) for name in TRAINING_OPTIONS}

    def to_dict(self) -> dict:
        """Plain values (lists, not tuples) for JSON and YAML."""
        return {name: list(value) if isinstance(value, tuple) else copy.deepcopy(value)
                for name, value in ((item.name, getattr(self, item.name)) for item in dataclasses.fields(self))}

    def replace(self, **changes) -> "Parameters":
        """A copy with some values changed, checked like any other set."""
        return _validated({**self.to_dict(), **changes})


NETWORK_OPTIONS = ("widths", "convs_per_stage", "block", "stem_stride", "dropout", "dense_units", "head", "age_bins",
                   "batchnorm_momentum", "augment_rotation_degrees", "augment_shift", "augment_zoom",
                   "augment_contrast", "augment_brightness", "augment_flip")
TRAINING_OPTIONS = ("weight_decay", "loss", "huber_delta", "ema", "ema_momentum")
# A keras.applications backbone takes our head and augmentation; its own layers are not parameters.
BACKBONE_OPTIONS = ("dropout", "dense_units", "head", "age_bins", "augment_rotation_degrees", "augment_shift", "augment_zoom",
                    "augment_contrast", "augment_brightness", "augment_flip")
NAMES = tuple(item.name for item in dataclasses.fields(Parameters))


def describe() -> dict:
    """{name: help text} of every parameter, for `--help` and documentation."""
    return {item.name: item.metadata["help"] for item in dataclasses.fields(Parameters)}


def read_presets(presets_file=PRESETS_FILE) -> dict:
    with open(presets_file, encoding="utf-8") as handle:
        presets = yaml.safe_load(handle)
    if not isinstance(presets, dict) or "defaults" not in presets or "presets" not in presets:
        raise ValueError(f"{presets_file}: expected the keys 'defaults' and 'presets'")
    missing = sorted(set(NAMES) - set(presets["defaults"]) - {"preset", "run_name"})
    if missing:
        raise ValueError(f"{presets_file}: `defaults` lacks {', '.join(missing)}")
    return presets


def load_parameters(preset: str = "demo", overrides: dict | None = None, presets_file=PRESETS_FILE) -> Parameters:
    """The checked parameters of a run: `defaults`, then the preset, then `overrides`.

    A name that `defaults` does not know is refused, so that a typo (`-p epoch 5`) cannot
    silently run with the default; every bad value is reported at once.
    """
    presets = read_presets(presets_file)
    if preset not in presets["presets"]:
        raise ValueError(f"unknown preset {preset!r}; {Path(presets_file).name} defines: {', '.join(presets['presets'])}")
    values = copy.deepcopy(presets["defaults"])
    for source, changes in ((f"preset {preset!r}", presets["presets"][preset] or {}), ("overrides", overrides or {})):
        unknown = sorted(set(changes) - set(values) - {"run_name"})
        if unknown:
            raise ValueError(f"{source} sets unknown parameter(s) {unknown}; known: {', '.join(sorted(values))}")
        values.update(copy.deepcopy(changes))
    values["preset"] = preset
    if not values.get("run_name"):
        values["run_name"] = preset
    return _validated(values)


def _validated(values: dict) -> Parameters:
    problems, clean = [], {}
    for item in dataclasses.fields(Parameters):
        value = values.get(item.name)
        try:
            clean[item.name] = item.metadata["check"](value)
        except ValueError as error:
            problems.append(f"{item.name}: {error}, got {value!r}")
    if not problems:
        problems = _combination_problems(clean)
    if problems:
        raise ValueError("invalid parameter(s):\n  " + "\n  ".join(problems))
    return Parameters(**clean)


def _combination_problems(values: dict) -> list[str]:
    """Values that are fine alone but not together."""
    problems = []
    architecture, size = values["architecture"], values["image_size"]
    if size < BACKBONE_MIN_IMAGE_SIZE.get(architecture, 0):
        problems.append(f"image_size: {architecture} needs at least {BACKBONE_MIN_IMAGE_SIZE[architecture]} px, got {size}")
    if values["fold"] > values["folds"]:
        problems.append(f"fold: expected a fold from 1 to folds ({values['folds']}), got {values['fold']}")
    if values["init_weights"] == IMAGENET and architecture not in BACKBONES:
        problems.append(f"init_weights: 'imagenet' needs a keras.applications backbone ({', '.join(BACKBONES)}); "
                        f"architecture is {architecture!r}")
    if values["progressive_image_size"] is not None:
        if architecture != "ours":
            problems.append(f"progressive_image_size: progressive resizing is for our network; architecture is "
                            f"{architecture!r}")
        # The stem's stride and a 2x2 pooling between stages: the last stage needs at least one pixel.
        smallest = values["stem_stride"] * 2 ** (len(values["widths"]) - 1)
        if not smallest <= values["progressive_image_size"] < size:
            problems.append(f"progressive_image_size: expected a side from {smallest} (the network's total stride) "
                            f"to below image_size ({size}), got {values['progressive_image_size']}")
        if values["ema"]:
            problems.append("progressive_image_size: progressive resizing cannot be combined with ema (each phase "
                            "ends by writing the averaged weights into the network)")
        if not 1 <= values["progressive_epochs"] < values["epochs"]:
            problems.append(f"progressive_epochs: expected 1 to epochs - 1 ({values['epochs'] - 1}) epochs at "
                            f"progressive_image_size, got {values['progressive_epochs']}")
    elif values["progressive_epochs"]:
        problems.append(f"progressive_epochs: {values['progressive_epochs']} epochs at which side? Set "
                        "progressive_image_size too")
    return problems
