"""Grad-CAM for the bone-age model: which parts of the radiograph drove the predicted age.

Grad-CAM (Selvaraju et al., 2017) weights each channel of a convolutional feature map by the
spatial mean of the gradient of the output (here: the predicted age in months) with respect to
it and upsamples the weighted sum to the image. The classic map (mode "positive") keeps only
the positive part: the regions whose features raised the predicted age. For a bone-age
regressor that map is often blank for young hands, whose features mostly *lower* the age, so
the study draws the signed map (mode "signed": raising regions red, lowering regions blue) and
the prediction command's overlays keep the classic one.
"""

from __future__ import annotations

import math

import cv2
import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

from utils.model import LAST_CONV_LAYER, model_inputs


def find_conv_layer(model: keras.Model) -> str:
    """The layer named "last_conv" if there is one, else the last layer with a 4-D output
    (batch, height, width, channels): the feature map just before global pooling."""
    names = [layer.name for layer in model.layers]
    if LAST_CONV_LAYER in names:
        return LAST_CONV_LAYER
    spatial = [
        layer.name
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4
    ]
    if not spatial:
        raise ValueError(f"model {model.name!r} has no layer with a 4-D output for Grad-CAM")
    return spatial[-1]


GRADCAM_MODES = ("positive", "signed", "absolute")


def grad_cam(model: keras.Model, images, male, layer_name: str | None = None, batch_size: int = 32,
             mode: str = "positive") -> np.ndarray:
    """Heatmaps (N, S, S) float32, one per uint8 image (N, S, S), each scaled by its own peak.

    mode "positive": in [0, 1], the regions that raised the prediction (all zeros where none
    did); "signed": in [-1, 1], positive where a region raised the predicted age and negative
    where it lowered it; "absolute": in [0, 1], the magnitude of the signed map, whichever way
    it pushed.
    """
    if mode not in GRADCAM_MODES:
        raise ValueError(f"unknown Grad-CAM mode {mode!r}; expected one of {', '.join(GRADCAM_MODES)}")
    inputs = model_inputs(images, male)
    layer_name = layer_name or find_conv_layer(model)
    # Augmentation layers stay inactive because the model is called with training=False.
    gradient_model = keras.Model(model.input, [model.get_layer(layer_name).output, model.output])
    batches = [slice(start, start + batch_size) for start in range(0, len(inputs["image"]), batch_size)]
    heatmaps = [_grad_cam_batch(gradient_model, inputs["image"][batch], inputs["male"][batch], mode) for batch in batches]
    return np.concatenate(heatmaps) if heatmaps else np.zeros((0, *np.shape(images)[1:]), np.float32)


def _grad_cam_batch(gradient_model: keras.Model, images: np.ndarray, male: np.ndarray, mode: str = "positive") -> np.ndarray:
    images = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        # Watching the input records every operation, even when the layers are frozen.
        tape.watch(images)
        feature_maps, months = gradient_model({"image": images, "male": tf.convert_to_tensor(male)}, training=False)
        # Each image's age depends only on its own features (inference mode), so the gradient
        # of the sum gives every image its own gradient.
        total = tf.reduce_sum(months)
    gradients = tape.gradient(total, feature_maps)
    if gradients is None:
        raise ValueError("Grad-CAM: the model's output does not depend on the chosen layer")
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2))  # (N, C)
    maps = tf.einsum("nhwc,nc->nhw", feature_maps, channel_weights).numpy()
    height, width = images.shape[1:3]
    upsampled = [cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR) for heatmap in maps]
    return np.stack([_normalise(heatmap, mode) for heatmap in upsampled])


def _normalise(heatmap: np.ndarray, mode: str = "positive") -> np.ndarray:
    heatmap = heatmap.astype(np.float32)
    if mode == "positive":
        heatmap = np.maximum(heatmap, 0.0)
    elif mode == "absolute":
        heatmap = np.abs(heatmap)
    peak = float(np.abs(heatmap).max())
    return heatmap / peak if peak > 0 else np.zeros_like(heatmap)


def overlay(image, heatmap, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 (S, S, 3): the gray radiograph with the heatmap in the JET colour map on top."""
    image, heatmap = np.asarray(image), np.asarray(heatmap)
    if image.shape != heatmap.shape or image.ndim != 2:
        raise ValueError(
            f"overlay: expected an image and a heatmap of the same (S, S) shape, "
            f"got {image.shape} and {heatmap.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    colours = cv2.applyColorMap(np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB).astype(np.float32)
    gray = np.repeat(image.astype(np.float32)[..., np.newaxis], 3, axis=2)
    return np.clip(np.round((1.0 - alpha) * gray + alpha * colours), 0, 255).astype(np.uint8)


RAISES_RGB = (215, 25, 28)  # signed maps: regions that raise the predicted age
LOWERS_RGB = (44, 123, 182)  # and regions that lower it


def overlay_signed(image, heatmap, alpha: float = 0.75) -> np.ndarray:
    """RGB uint8 (S, S, 3): the gray radiograph tinted red where a signed map (in [-1, 1]) is
    positive and blue where it is negative, the more opaque the larger |value| (up to `alpha`)."""
    image, heatmap = np.asarray(image), np.asarray(heatmap, dtype=np.float32)
    if image.shape != heatmap.shape or image.ndim != 2:
        raise ValueError(
            f"overlay_signed: expected an image and a heatmap of the same (S, S) shape, "
            f"got {image.shape} and {heatmap.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay_signed: alpha must be in [0, 1], got {alpha}")
    weight = alpha * np.clip(np.abs(heatmap), 0.0, 1.0)[..., np.newaxis]
    colours = np.where(heatmap[..., np.newaxis] >= 0, np.float32(RAISES_RGB), np.float32(LOWERS_RGB))
    gray = np.repeat(image.astype(np.float32)[..., np.newaxis], 3, axis=2)
    return np.clip(np.round((1.0 - weight) * gray + weight * colours), 0, 255).astype(np.uint8)


def gradcam_figure(images, heatmaps, titles=None, ncols: int = 4, alpha: float | None = None,
                   signed: bool | None = None, title: str | None = None):
    """Each case as a pair, radiograph then overlay, `ncols` pairs per row; the caller saves it.

    `signed` maps (from mode "signed"; the default when a map has negative values) are drawn
    red where they raise and blue where they lower the predicted age, with a legend saying so;
    others in the JET colour map. Titles may have two lines.
    """
    images, heatmaps = np.asarray(images), np.asarray(heatmaps)
    if images.ndim != 3 or images.shape != heatmaps.shape or len(images) == 0:
        raise ValueError(f"gradcam_figure: expected non-empty images and heatmaps of the same (N, S, S) shape, "
                         f"got {images.shape} and {heatmaps.shape}")
    titles = [""] * len(images) if titles is None else [str(title) for title in titles]
    if len(titles) != len(images):
        raise ValueError(f"gradcam_figure: {len(images)} images but {len(titles)} titles")
    signed = bool(np.min(heatmaps) < 0) if signed is None else signed
    alpha = (0.75 if signed else 0.4) if alpha is None else alpha
    ncols = max(1, min(ncols, len(images)))
    nrows = math.ceil(len(images) / ncols)
    lines = max(title.count("\n") + 1 for title in titles)
    extra = (0.35 if signed else 0.0) + (0.35 if title else 0.0)
    figure = plt.figure(figsize=(2.6 * ncols, (1.25 + 0.2 * lines) * nrows + 0.2 + extra), layout="constrained")
    cases = figure.subfigures(nrows, ncols, squeeze=False).flat
    for image, heatmap, case_title, case in zip(images, heatmaps, titles, cases):
        radiograph_axes, overlay_axes = case.subplots(1, 2)
        radiograph_axes.imshow(image, cmap="gray", vmin=0, vmax=255)
        overlay_axes.imshow(overlay_signed(image, heatmap, alpha) if signed else overlay(image, heatmap, alpha))
        for axes in (radiograph_axes, overlay_axes):
            axes.axis("off")
        case.suptitle(case_title, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=11)
    if signed:
        from matplotlib.patches import Patch

        handles = [Patch(color=np.array(RAISES_RGB) / 255, label="raises the predicted age"),
                   Patch(color=np.array(LOWERS_RGB) / 255, label="lowers the predicted age")]
        figure.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=9)
    return figure
