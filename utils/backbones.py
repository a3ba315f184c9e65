"""The keras.applications backbones: which constructor, how each expects its pixels, and where
Keras keeps its ImageNet weights.

Light on purpose (no Keras import): the runner checks `init_weights` with `resolve_init_weights`
before any stage runs, and stage 03 again before it builds anything, so that a missing weights
file stops a run with a message that names the file and where to put it, instead of a download
that fails, or hangs, in the middle of training. `utils.model` builds the networks from this table.

Keras downloads ImageNet weights to `$KERAS_HOME/models/` (`~/.keras/models/` when KERAS_HOME is
unset; `/tmp/.keras/models/` when the home folder is not writable). A file already there is used
as it is, with no network access. Where it is missing, the download is left to Keras only when
the weights' host answers, and never when BONE_AGE_OFFLINE is set.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from utils import config
from utils.parameters import BACKBONES, IMAGENET

OFFLINE_ENV = "BONE_AGE_OFFLINE"  # set (to anything but "" or "0"): never try to download weights
NETWORK_TIMEOUT_SECONDS = 3.0
_KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """One keras.applications network as the project uses it (include_top=False, our head on top)."""

    constructor: str      # attribute of keras.applications
    # How the network wants its 3-channel 0..255 pixels (PREPROCESSING). ResNetV2 and InceptionV3:
    # preprocess_input's mode "tf", x / 127.5 - 1. EfficientNetV2 and ConvNeXt rescale inside the
    # network (their preprocess_input is the identity): EfficientNetV2-S x / 128 - 1; B0 and
    # ConvNeXt the ImageNet mean and SD per channel, with Normalization layers whose constants
    # Keras' ONNX export turns into extra graph inputs. So the project builds every network
    # without its own preprocessing (include_preprocessing=False) and applies the same
    # arithmetic as one Keras Rescaling layer (per channel where needed): no Lambda, no custom
    # layer, the same in .keras and ONNX (tests/test_backbones.py checks it against each network's own).
    preprocessing: str
    weights_file: str     # the ImageNet weights without the classifier, as Keras names the file
    weights_url: str


# ImageNet's mean and SD per channel (RGB), of pixels scaled to 0..1.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_SD = (0.229, 0.224, 0.225)
# (scale, offset) of a Rescaling layer on 0..255 pixels: x * scale + offset.
PREPROCESSING = {
    "tf": (1.0 / 127.5, -1.0),
    "tf128": (1.0 / 128.0, -1.0),
    "imagenet_mean_sd": ([1.0 / (255.0 * sd) for sd in IMAGENET_SD],
                         [-mean / sd for mean, sd in zip(IMAGENET_MEAN, IMAGENET_SD)]),
}
# Which keras.applications constructors take include_preprocessing (the others have none).
OWN_PREPROCESSING = ("EfficientNetV2B0", "EfficientNetV2S", "ConvNeXtTiny")

SPECS = {
    "efficientnetv2b0": Backbone("EfficientNetV2B0", "imagenet_mean_sd", "efficientnetv2-b0_notop.h5",
                                 _KERAS_APPLICATIONS + "efficientnet_v2/efficientnetv2-b0_notop.h5"),
    "efficientnetv2s": Backbone("EfficientNetV2S", "tf128", "efficientnetv2-s_notop.h5",
                                _KERAS_APPLICATIONS + "efficientnet_v2/efficientnetv2-s_notop.h5"),
    "resnet50v2": Backbone("ResNet50V2", "tf", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                           _KERAS_APPLICATIONS + "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "inceptionv3": Backbone("InceptionV3", "tf", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                            _KERAS_APPLICATIONS + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "convnext_tiny": Backbone("ConvNeXtTiny", "imagenet_mean_sd", "convnext_tiny_notop.h5",
                              _KERAS_APPLICATIONS + "convnext/convnext_tiny_notop.h5"),
}
assert set(SPECS) == set(BACKBONES), "parameters.BACKBONES and backbones.SPECS must name the same networks"


class MissingWeightsError(ValueError):
    """Weights that `init_weights` asks for and that are not here (a ValueError, so that the runner
    reports it like any other bad parameter, before anything runs)."""


def keras_models_dir() -> Path:
    """Where Keras looks for (and downloads) application weights, as keras.utils.get_file decides."""
    if "KERAS_HOME" in os.environ:
        base = Path(os.environ["KERAS_HOME"]).expanduser()
    else:
        home = Path.home()
        base = (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"
    return base / "models"


def imagenet_weights_path(architecture: str) -> Path:
    """The file Keras reads for `architecture`'s ImageNet weights (without the classifier)."""
    return keras_models_dir() / SPECS[architecture].weights_file


@dataclass(frozen=True)
class InitialWeights:
    """What `init_weights` resolves to. `backbone`: a keras.applications weights file for the
    backbone's constructor, or "imagenet" (Keras downloads it); `run`: a .keras / .weights.h5 file
    that `model.load_initial_weights` copies into the built model. At most one is set."""

    backbone: Path | str | None = None
    run: Path | None = None


def resolve_init_weights(architecture: str, init_weights: str | None, *, root=config.PROJECT_ROOT) -> InitialWeights:
    """Check `init_weights` against the files here, touching no network when the file is present
    or BONE_AGE_OFFLINE is set; raises MissingWeightsError saying what is missing and where it goes.

    Relative paths are relative to the project root, like the `dataset` parameter.
    """
    if init_weights is None:
        return InitialWeights()
    if init_weights == IMAGENET:
        if architecture not in SPECS:
            raise ValueError(f"init_weights 'imagenet' needs a keras.applications backbone ({', '.join(SPECS)}), "
                             f"not {architecture!r}")
        path = imagenet_weights_path(architecture)
        if path.is_file():
            return InitialWeights(backbone=path)
        reason = _why_no_download(SPECS[architecture].weights_url)
        if reason is None:
            return InitialWeights(backbone=IMAGENET)
        raise MissingWeightsError(missing_weights_message(architecture, reason))
    path = Path(init_weights).expanduser()
    path = path if path.is_absolute() else Path(root) / path
    if not path.is_file():
        raise MissingWeightsError(f"init_weights: {path}: no such file")
    if path.name.endswith(".weights.h5") or path.suffix == ".keras":
        return InitialWeights(run=path)
    if path.suffix in (".h5", ".hdf5"):
        if architecture not in SPECS:
            raise ValueError(f"init_weights: {path} is a keras.applications weights file (.h5), which needs a "
                             f"keras.applications backbone ({', '.join(SPECS)}), not {architecture!r}")
        return InitialWeights(backbone=path)
    raise ValueError(f"init_weights: {path}: expected 'imagenet', a keras.applications .h5 weights file, or a "
                     ".keras / .weights.h5 file of a run")


def missing_weights_message(architecture: str, reason: str) -> str:
    spec = SPECS[architecture]
    folder = keras_models_dir()
    where = "$KERAS_HOME/models" if "KERAS_HOME" in os.environ else "~/.keras/models"
    return (
        f"init_weights 'imagenet': {architecture} needs Keras' ImageNet weights file {spec.weights_file}, which is "
        f"not in {folder}/ ({where}), and it cannot be downloaded: {reason}. Nothing was trained.\n"
        f"  Either download {spec.weights_url} on a machine with a network and put it at "
        f"{folder / spec.weights_file},\n"
        f"  or pass the file itself: -p init_weights /path/to/{spec.weights_file}\n"
        "  (or train from random weights: -p init_weights null)."
    )


def _why_no_download(url: str) -> str | None:
    """None when Keras may download from `url`; otherwise why not."""
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        return f"{OFFLINE_ENV} is set"
    host = urlsplit(url).hostname
    try:
        socket.create_connection((host, 443), timeout=NETWORK_TIMEOUT_SECONDS).close()
    except OSError as error:
        return f"{host} is not reachable from here ({error})"
    return None
