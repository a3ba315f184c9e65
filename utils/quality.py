"""Image-quality flags: how unlike the training radiographs an input image is.

A model trained on hand radiographs still returns an age for a blank frame, a chest film or a
hand turned by 90 degrees. `QualityReference` learns what the training images look like from two
groups of cheap features per image: the layout (an 8x8 thumbnail standardised per image) and
summary statistics (exposure, texture, polarity, edge orientation, where the bright region lies).
A new image is scored by its Mahalanobis distance to the training images under a probabilistic
PCA model of each group; each group's distance is put in units of its own high percentile and the
larger of the two counts, so that a strong anomaly in a few statistics (the fine texture of a text
page, edges running sideways) is not drowned by the 64 thumbnail values. The threshold is a high
percentile of the training images' own out-of-fold scores, so that about (100 - percentile)% of
normal images are flagged by design.

Only NumPy and OpenCV: the prediction command imports this module and must start quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

METHOD = "grouped-ppca-mahalanobis-v1"  # stored with the reference; change it when the features change
WORKING_SIZE = 64  # every image is first reduced to this side, so the cost is independent of S
THUMBNAIL_SIZE = 8
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
SCALE_FLOOR = 0.01  # a feature constant in training (e.g. a black corner) must not get an infinite z-score
VARIANCE_FLOOR = 0.05  # standardised units: with few images the trailing eigenvalues are ~0
CROSS_FIT_FOLDS = 5
MIN_IMAGES = 20


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"quality: expected images of shape (N, S, S), got shape {images.shape}")
    # OpenCV needs a contiguous array of a type it resizes (rotated views and int arrays are neither).
    if images.dtype not in (np.uint8, np.float32):
        images = images.astype(np.float32)
    return np.ascontiguousarray(images)


def image_features(images) -> dict[str, np.ndarray]:
    """Feature groups, each (N, D_group): "layout" (8x8 thumbnail) and "statistics" (20 values)."""
    images = _check_images(images)
    if len(images) == 0:
        raise ValueError("quality: no images")
    small = np.stack(
        [cv2.resize(image, (WORKING_SIZE, WORKING_SIZE), interpolation=cv2.INTER_AREA) for image in images]
    ).astype(np.float64) / 255.0
    flat = small.reshape(len(small), -1)
    mean = flat.mean(axis=1)
    std = flat.std(axis=1)
    # Standardised per image, the thumbnail ignores exposure and contrast, which vary a lot
    # between real radiographs, and keeps the layout: fingers at the top, forearm at the
    # bottom, hand brighter than the background.
    thumbnails = np.stack(
        [cv2.resize(image, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), interpolation=cv2.INTER_AREA) for image in small]
    ).reshape(len(small), -1)
    # Noise: the share of the variation that a light blur removes (small for radiographs).
    high_frequency = np.array(
        [np.abs(image - cv2.GaussianBlur(image, (5, 5), 1.0)).mean() for image in small]
    ) / (std + 0.02)
    blurred = np.stack([cv2.GaussianBlur(image, (0, 0), 4.0) for image in small])
    return {
        "layout": (thumbnails - mean[:, None]) / (std[:, None] + 0.02),
        "statistics": np.column_stack([
            mean, std, np.percentile(flat, PERCENTILES, axis=1).T,  # exposure and contrast
            [_edge_density(image) for image in small], high_frequency,  # texture
            _skewness(flat), _skewness(flat - blurred.reshape(len(small), -1)),  # polarity
            [_edge_orientation(image) for image in small],
            [_bright_region_shape(image) for image in small],
        ]),
    }


def _skewness(values: np.ndarray) -> np.ndarray:
    """Per row: a radiograph is mostly dark with bright bones (positive); inverted, it is negative."""
    centred = values - values.mean(axis=1, keepdims=True)
    squared = centred * centred  # not `**`: a float power is ten times slower
    return (squared * centred).mean(axis=1) / (squared.mean(axis=1) ** 1.5 + 1e-12)


def _edge_orientation(image: np.ndarray) -> list[float]:
    """Structure-tensor anisotropy: fingers and forearm bones run vertically, so edges are mostly
    vertical (positive first value); a hand turned by 90 degrees gives a negative value."""
    smooth = cv2.GaussianBlur(image, (0, 0), 1.0)
    # Without the margin (image borders, padding) and with the strongest 10% of gradients
    # clipped, a few long straight edges (a film's frame) cannot outvote the hand.
    gradient_x = cv2.Sobel(smooth, cv2.CV_64F, 1, 0, ksize=3)[4:-4, 4:-4]
    gradient_y = cv2.Sobel(smooth, cv2.CV_64F, 0, 1, ksize=3)[4:-4, 4:-4]
    magnitude = np.hypot(gradient_x, gradient_y)
    clip = np.minimum(1.0, np.percentile(magnitude, 90) / (magnitude + 1e-12))
    gradient_x, gradient_y = gradient_x * clip, gradient_y * clip
    energy_x, energy_y = (gradient_x**2).mean(), (gradient_y**2).mean()
    total = energy_x + energy_y + 1e-12
    return [(energy_x - energy_y) / total, 2.0 * (gradient_x * gradient_y).mean() / total]


def _bright_region_shape(image: np.ndarray) -> list[float]:
    """Centroid and spread of what is brighter than the median: an upright hand is tall and central."""
    weights = np.maximum(image - np.median(image), 0.0)
    moments = cv2.moments(weights)
    if moments["m00"] <= 1e-6:
        return [0.5, 0.5, 0.0, 0.0, 0.0]
    area, side = moments["m00"], image.shape[0]
    return [
        moments["m10"] / area / side,
        moments["m01"] / area / side,
        np.sqrt(moments["mu20"] / area) / side,
        np.sqrt(moments["mu02"] / area) / side,
        moments["mu11"] / area / side**2,
    ]


def _edge_density(image: np.ndarray) -> float:
    gradient_x = cv2.Sobel(image, cv2.CV_64F, 1, 0, ksize=3)
    gradient_y = cv2.Sobel(image, cv2.CV_64F, 0, 1, ksize=3)
    return float(np.sqrt(gradient_x**2 + gradient_y**2).mean())


@dataclass
class _Gaussian:
    """Probabilistic PCA model of standardised features: top components plus isotropic residual."""

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray  # (k, D), rows are unit eigenvectors
    variances: np.ndarray  # (k,)
    residual_variance: float

    @classmethod
    def fit(cls, features: np.ndarray, n_components: int) -> "_Gaussian":
        mean = features.mean(axis=0)
        scale = np.maximum(features.std(axis=0), SCALE_FLOOR)
        standardised = (features - mean) / scale
        eigenvalues, eigenvectors = np.linalg.eigh(standardised.T @ standardised / len(standardised))
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        k = min(n_components, features.shape[1] - 1, len(features) - 2)
        residual_variance = max(float(eigenvalues[k:].mean()), VARIANCE_FLOOR)
        variances = np.maximum(eigenvalues[:k], residual_variance)
        return cls(mean, scale, np.ascontiguousarray(eigenvectors[:, :k].T), variances, residual_variance)

    def distance(self, features: np.ndarray) -> np.ndarray:
        standardised = (features - self.mean) / self.scale
        projections = standardised @ self.components.T
        residual = np.maximum((standardised**2).sum(axis=1) - (projections**2).sum(axis=1), 0.0)
        squared = (projections**2 / self.variances).sum(axis=1) + residual / self.residual_variance
        return np.sqrt(squared)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "components": self.components.tolist(),
            "variances": self.variances.tolist(),
            "residual_variance": self.residual_variance,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "_Gaussian":
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            components=np.asarray(data["components"], dtype=np.float64).reshape(-1, len(data["mean"])),
            variances=np.asarray(data["variances"], dtype=np.float64),
            residual_variance=float(data["residual_variance"]),
        )


@dataclass
class _GroupedDistance:
    """One Gaussian per feature group; the distance is the largest group distance in units of its scale."""

    gaussians: dict[str, _Gaussian]
    scales: dict[str, float]

    def distance(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return np.max(
            [self.gaussians[name].distance(values) / self.scales[name] for name, values in features.items()],
            axis=0,
        )


@dataclass
class QualityReference:
    """What the training images look like; `score` > 1 means more unusual than `percentile`% of them."""

    distance: _GroupedDistance
    threshold: float  # distance at `percentile` of the training images' out-of-fold distances
    percentile: float
    blank_std: float  # gray levels: below this the image carries no picture at all
    image_shape: tuple[int, int]  # texture depends on the resolution: score images of this shape only
    n_images: int

    @classmethod
    def fit(cls, images, percentile: float = 99.0, *, n_components: int = 16, blank_std: float = 2.0,
            seed: int = 0) -> "QualityReference":
        """Fit on training images (N, S, S) uint8, the same arrays the model sees."""
        images = _check_images(images)
        if len(images) < MIN_IMAGES:
            raise ValueError(f"quality: need at least {MIN_IMAGES} training images, got {len(images)}")
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"quality: percentile must be in (0, 100), got {percentile}")
        features = image_features(images)
        # Distances of training images to a model fitted on themselves are too small (the more
        # so the more features per image); calibrating on held-out folds keeps the false-flag
        # rate on new normal images near 100 - percentile.
        folds = np.random.default_rng(seed).permutation(len(images)) % CROSS_FIT_FOLDS
        out_of_fold = {name: np.empty(len(images)) for name in features}
        for fold in range(CROSS_FIT_FOLDS):
            held_out = folds == fold
            for name, values in features.items():
                gaussian = _Gaussian.fit(values[~held_out], n_components)
                out_of_fold[name][held_out] = gaussian.distance(values[held_out])
        # Each group in units of its own high percentile, so that a group whose training
        # distances have a long tail does not set the bar for the others.
        distance = _GroupedDistance(
            gaussians={name: _Gaussian.fit(values, n_components) for name, values in features.items()},
            scales={name: float(np.percentile(values, percentile)) for name, values in out_of_fold.items()},
        )
        combined = np.max([out_of_fold[name] / distance.scales[name] for name in features], axis=0)
        return cls(
            distance=distance,
            threshold=float(np.percentile(combined, percentile)),
            percentile=float(percentile),
            blank_std=float(blank_std),
            image_shape=tuple(int(side) for side in images.shape[1:]),
            n_images=len(images),
        )

    def score(self, images) -> np.ndarray:
        """Distance to the training images in units of the threshold (N,): higher = more unusual."""
        images = self._check_shape(_check_images(images))
        if len(images) == 0:
            return np.zeros(0)
        return self.distance.distance(image_features(images)) / self.threshold

    def flag(self, images) -> np.ndarray:
        """'ok', or why not: 'blank', 'inverted', 'rotated' (by 90, 180 or 270 degrees) or 'unusual'."""
        return self.assess(images)[1]

    def assess(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(score, flag) of each image, computing the features once."""
        images = self._check_shape(_check_images(images))
        flags = np.full(len(images), "ok", dtype=object)
        scores = self.score(images)
        blank = images.std(axis=(1, 2)) < self.blank_std
        flags[scores > 1.0] = "unusual"
        # An unusual image that passes, and scores far lower, once inverted or turned back was
        # inverted or turned: re-score those few candidates to name the cause.
        candidates = np.flatnonzero((scores > 1.0) & ~blank)
        if len(candidates):
            suspects = images[candidates].astype(np.float32)
            restored = {"inverted": self.score(255.0 - suspects)}
            if images.shape[1] == images.shape[2]:
                restored["rotated"] = np.min(
                    [self.score(np.rot90(suspects, turns, axes=(1, 2))) for turns in (1, 2, 3)], axis=0
                )
            for cause in ("rotated", "inverted"):
                if cause in restored:
                    explained = (restored[cause] <= 1.0) & (restored[cause] <= scores[candidates] / 2.0)
                    flags[candidates[explained]] = cause
        flags[blank] = "blank"
        return scores, flags.astype(str)

    def _check_shape(self, images: np.ndarray) -> np.ndarray:
        if images.shape[1:] != self.image_shape:
            raise ValueError(
                f"quality: the reference was fitted on {self.image_shape[0]}x{self.image_shape[1]} images, "
                f"got {images.shape[1]}x{images.shape[2]}; preprocess them as the training images were"
            )
        return images

    def to_dict(self) -> dict:
        """JSON-serialisable (it is stored in the model card)."""
        return {
            "method": METHOD,
            "percentile": self.percentile,
            "threshold": self.threshold,
            "blank_std": self.blank_std,
            "image_shape": list(self.image_shape),
            "n_images": self.n_images,
            "groups": {
                name: {"distance_scale": self.distance.scales[name], **gaussian.to_dict()}
                for name, gaussian in self.distance.gaussians.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> "QualityReference":
        if data.get("method") != METHOD:
            raise ValueError(
                f"quality reference: method {data.get('method')!r} is not {METHOD!r}; refit the reference"
            )
        distance = _GroupedDistance(
            gaussians={name: _Gaussian.from_dict(group) for name, group in data["groups"].items()},
            scales={name: float(group["distance_scale"]) for name, group in data["groups"].items()},
        )
        return cls(distance, float(data["threshold"]), float(data["percentile"]),
                   float(data["blank_std"]), tuple(int(side) for side in data["image_shape"]), int(data["n_images"]))
