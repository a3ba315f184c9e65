"""Decode radiographs of any common format to 8-bit grayscale, normalise them, and cache the result.

Every image goes through the same three steps, so that training, evaluation and inference agree:
`read_grayscale` (any file -> uint8 (H, W)), `preprocess_image` (optional `crop_to_hand`, pad,
resize, contrast -> uint8 (S, S)), and `load_images` (a whole table, cached as .npy so that a rerun
does not decode again).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pydicom
from tqdm import tqdm

from utils import config
from utils.parameters import CONTRASTS, HAND_CROPS, normalise_tta
from utils.files import atomic_path, write_json_atomic

MAX_LISTED_FAILURES = 20
# Bump when a change below alters the output pixels: it is part of the cache key.
PREPROCESSING_VERSION = 1
# Wide-range images (16-bit, DICOM) are windowed to 8 bits between these percentiles of their own
# pixels: a few saturated or dead pixels must not squeeze the hand into a handful of gray levels.
WINDOW_PERCENTILES = (0.5, 99.5)
# The "percentile" contrast stretches the 1st..99th percentile of the resized image to 0..255.
CONTRAST_PERCENTILES = (1.0, 99.0)
CLAHE_CLIP_LIMIT = 2.0
# CLAHE tiles of about 32 px: small images get fewer tiles so that each tile's histogram has
# enough pixels; large ones keep OpenCV's default 8x8 grid.
CLAHE_TILE_PIXELS = 32
CLAHE_TILES_RANGE = (2, 8)
# Optional crop to the hand (`crop_to_hand`), before padding; HAND_CROPS: "box" is the hand's
# bounding box, "rotated" first turns the hand upright, "none" leaves the pixels as they were.
# Each side of the box grows by 5% of the box's side: Otsu's threshold misses the faint soft tissue
# at the fingertips, and the mask is found at a reduced resolution (below).
HAND_CROP_MARGIN = 0.05
# The mask is found on a copy whose long side is at most 256 px: a hand's outline needs no more,
# and a 1600x2080 radiograph then costs little more than the shrinking itself.
HAND_CROP_WORK_SIZE = 256
# Blur sigma in working pixels: enough that pixel noise does not fragment the mask (shrinking a
# large radiograph has averaged most of it already), little enough that noise does not merge into
# blobs that survive the opening below (sigma 1 px makes pure noise look like a hand half the time).
HAND_CROP_BLUR_PIXELS = 0.5
# Otsu sees the blurred image clipped at its 99th percentile: a bright side marker or label (under
# 1% of the pixels) would otherwise take a class of its own on a low-contrast radiograph.
HAND_CROP_CLIP_PERCENTILE = 99.0
# Opening by a 3 px disc at the working resolution: removes specks, thin strokes of text labels and
# thin bridges to them. Not wider: it would erase the fingers of a hand that is small in the image
# (a 224 px hand on a 500x700 canvas has 5 px wide fingers at the working resolution).
HAND_CROP_OPENING_PIXELS = 3
# Below 2% of the image the largest component is a speck, a letter or a blob of noise (pure noise
# leaves blobs of about 1% at 100 px; hands cover 5% or more of RSNA radiographs); above 95% the
# threshold separated nothing. Either way there is no hand to crop to: the image is returned unchanged.
HAND_CROP_AREA_RANGE = (0.02, 0.95)
# A component that covers 90% of one whole side of the image is a collimator edge or a film border
# (a forearm meets the border over well under that), so the hand may lie outside it: unchanged.
HAND_CROP_MAX_SIDE_COVER = 0.9
# Components of at least 30% of the largest one's area belong to the hand too: a thumb or forearm
# that the threshold cut off. Letters, markers and specks are far smaller.
HAND_CROP_PART_FRACTION = 0.3
# rotate=True does not turn by less than 1 degree: interpolation would blur for nothing.
HAND_CROP_MIN_ROTATION = 1.0


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file and the problem."""


class ImageErrors(ImageError):
    """Several image files that cannot be read, all of them: `failures` maps each path to the
    message of its ImageError; `images` holds the others, preprocessed (the failed rows are zero)."""

    def __init__(self, failures: dict[str, str], images: np.ndarray | None = None):
        self.failures, self.images = dict(failures), images
        listed = [f"  - {message}" for message in list(self.failures.values())[:MAX_LISTED_FAILURES]]
        if len(self.failures) > MAX_LISTED_FAILURES:
            listed.append(f"  ... and {len(self.failures) - MAX_LISTED_FAILURES} more")
        super().__init__(f"{len(self.failures)} image(s) cannot be decoded:\n" + "\n".join(listed))


def read_grayscale(path) -> np.ndarray:
    """Decode an image file (PNG, JPEG, 8/16-bit, gray/RGB/RGBA/palette, or DICOM) to uint8 (H, W)."""
    path = Path(path)
    is_dicom_name = path.suffix.lower() == ".dcm"
    if not is_dicom_name:
        # Decode first, diagnose only failures: the checks cost ~30 us, a third of decoding a thumbnail.
        # IMREAD_UNCHANGED keeps 16 bits and the alpha channel; cv2 expands palette PNGs to BGR(A).
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is not None:
            return _to_gray_uint8(image, path)
    if not path.exists():
        raise ImageError(f"{path}: does not exist")
    if not path.is_file():
        raise ImageError(f"{path}: is not a file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: is empty (0 bytes)")
    if is_dicom_name or _has_dicom_magic(path):
        return _read_dicom(path)
    raise ImageError(f"{path}: cannot be decoded (corrupt or not an image)")


def _has_dicom_magic(path: Path) -> bool:
    """DICOM files without the .dcm suffix: the 4 bytes after the 128-byte preamble read DICM."""
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _read_dicom(path: Path) -> np.ndarray:
    """Pixel values in modality units (rescale slope/intercept), bright = dense, windowed to uint8."""
    try:
        # force=True: some .dcm files lack the 128-byte preamble and the DICM magic.
        dataset = pydicom.dcmread(path, force=True)
        stored = dataset.pixel_array
        values = pydicom.pixels.apply_modality_lut(stored, dataset)
    except Exception as error:  # pydicom raises many types: missing tags, unsupported compression...
        raise ImageError(f"{path}: cannot be decoded as DICOM ({type(error).__name__}: {error})") from error
    colour = int(dataset.get("SamplesPerPixel", 1)) == 3
    if values.ndim != 2 + colour:
        raise ImageError(f"{path}: DICOM pixel data has shape {values.shape}; expected a single frame")
    if values.size == 0:
        raise ImageError(f"{path}: DICOM image has zero size")
    if colour:
        # pydicom returns colour DICOM as RGB (it converts YBR by default).
        values = cv2.cvtColor(values.astype(np.float32), cv2.COLOR_RGB2GRAY)
    if dataset.get("PhotometricInterpretation", "") == "MONOCHROME1":
        # MONOCHROME1 shows low values as white; negate so that bone is bright like everywhere else.
        values = -values.astype(np.float32)
    return _window_to_uint8(values, WINDOW_PERCENTILES)


def _to_gray_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    if image.size == 0:
        raise ImageError(f"{path}: image has zero size")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels > 1 and image.dtype not in (np.uint8, np.uint16, np.float32):
        image = image.astype(np.float32)  # cv2.cvtColor accepts only these depths (e.g. not int32 TIFF)
    if channels == 1:
        gray = image.reshape(image.shape[:2])
    elif channels == 3:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif channels == 4:
        gray = _composite_over_black(image)
    else:
        raise ImageError(f"{path}: has {channels} channels; expected 1 (gray), 3 (colour) or 4 (with alpha)")
    if gray.dtype == np.uint8:
        return gray
    # 16-bit, float or 32-bit integer images: window by the image's own percentiles.
    return _window_to_uint8(gray, WINDOW_PERCENTILES)


def _composite_over_black(image: np.ndarray) -> np.ndarray:
    """Gray of a BGRA image drawn over black: a transparent background holds no tissue."""
    gray = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY).astype(np.float32)
    opaque = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
    composited = gray * (image[..., 3].astype(np.float32) / opaque)
    if image.dtype == np.uint8:
        return np.rint(composited).astype(np.uint8)
    return composited


def _window_to_uint8(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map [low percentile, high percentile] linearly to 0..255, clipping outside.

    Falls back to min..max when the percentiles coincide (e.g. a small hand on a large flat
    background); a constant image becomes all zeros.
    """
    low, high = np.percentile(values, percentiles)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.rint(np.clip(scaled, 0.0, 255.0, out=scaled)).astype(np.uint8)


def crop_to_hand(image: np.ndarray, *, rotate: bool = False, margin: float = HAND_CROP_MARGIN) -> np.ndarray:
    """The part of a radiograph that holds the hand, uint8 (h, w), not resized.

    The hand is the largest connected component of an Otsu threshold of the lightly blurred image,
    opened to drop specks and text labels (with any component of at least HAND_CROP_PART_FRACTION
    of its area). The crop is its bounding box grown by `margin` (a fraction of the box's side) on
    each side, clipped to the image. With `rotate`, the image is first turned by the smallest angle
    (at most 45 degrees) that makes the sides of the hand's minimum-area rectangle (cv2.minAreaRect)
    vertical and horizontal: the long side ends up vertical for every hand
    tilted by less than 45 degrees. Not more: radiographs are taken upright give or take a tilt, and
    a hand wider than tall (spread thumb; 6% of the 100 px RSNA thumbnails) would be laid on its
    side. The part of the turned crop outside the image takes the background level. When no hand
    stands out (blank, constant or noisy image; see HAND_CROP_AREA_RANGE and
    HAND_CROP_MAX_SIDE_COVER), the image is returned unchanged.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        raise ValueError(
            f"crop_to_hand expects a non-empty 2-D uint8 image (see read_grayscale); "
            f"got dtype {image.dtype}, shape {image.shape}"
        )
    if not margin >= 0:  # also refuses NaN
        raise ValueError(f"margin must be a fraction >= 0; got {margin!r}")
    hand = _find_hand(image)
    if hand is None:
        return image
    box, outline = hand
    angle = _upright_angle(outline) if rotate else 0.0
    if abs(angle) < HAND_CROP_MIN_ROTATION:
        left, top, right, bottom = _grow_box(box, margin, image.shape)
        return image[top:bottom, left:right].copy()
    return _turn_and_crop(image, outline, angle, margin)


def _find_hand(image: np.ndarray):
    """(bounding box, outline) of the hand, or None; pixel-edge coordinates of `image`.

    The box is (left, top, right, bottom); the outline holds the corners of the hand's outer
    boundary pixels, (N, 2) x, y.
    """
    if image.min() == image.max():
        return None
    # Shrink by a whole factor: INTER_AREA then averages k x k blocks, 4x faster than a fractional
    # factor on a 1600x2080 radiograph (1.7 ms instead of 7.5).
    factor = -(-max(image.shape) // HAND_CROP_WORK_SIZE)
    work = image
    if factor > 1:
        work = cv2.resize(image, None, fx=1.0 / factor, fy=1.0 / factor, interpolation=cv2.INTER_AREA)
    work = cv2.GaussianBlur(work, (0, 0), HAND_CROP_BLUR_PIXELS)
    work = np.minimum(work, np.uint8(np.percentile(work, HAND_CROP_CLIP_PERCENTILE)))
    _, mask = cv2.threshold(work, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (HAND_CROP_OPENING_PIXELS, HAND_CROP_OPENING_PIXELS))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, disc)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = 1 + int(np.argmax(areas))
    low, high = HAND_CROP_AREA_RANGE
    if not low * mask.size <= areas[largest - 1] <= high * mask.size:
        return None
    component = labels == largest
    side_cover = max(component[0].mean(), component[-1].mean(), component[:, 0].mean(), component[:, -1].mean())
    if side_cover >= HAND_CROP_MAX_SIDE_COVER:
        return None
    parts = 1 + np.flatnonzero(areas >= HAND_CROP_PART_FRACTION * areas[largest - 1])
    left, top = stats[parts, cv2.CC_STAT_LEFT].min(), stats[parts, cv2.CC_STAT_TOP].min()
    right = (stats[parts, cv2.CC_STAT_LEFT] + stats[parts, cv2.CC_STAT_WIDTH]).max()
    bottom = (stats[parts, cv2.CC_STAT_TOP] + stats[parts, cv2.CC_STAT_HEIGHT]).max()
    # Working pixel (i, j) averaged image pixels [i*factor, (i+1)*factor) x [j*factor, (j+1)*factor).
    box = (int(left) * factor, int(top) * factor, int(right) * factor, int(bottom) * factor)
    hand = np.isin(labels, parts).astype(np.uint8)
    contours, _ = cv2.findContours(hand, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    centres = np.concatenate(contours).reshape(-1, 2).astype(np.float64)
    corners = np.concatenate([centres + offset for offset in ((0, 0), (1, 0), (0, 1), (1, 1))])
    return box, corners * factor


def _upright_angle(outline: np.ndarray) -> float:
    """Degrees in [-45, 45) to turn by (see `_turn_and_crop`) so that the outline's minimum-area
    rectangle has vertical and horizontal sides."""
    p0, p1, _, _ = cv2.boxPoints(cv2.minAreaRect(outline.astype(np.float32)))
    side = p1 - p0
    # Direction of one side, in degrees from the image's vertical towards +x. The other sides are
    # at 90 degrees to it, so which side cv2 lists first does not matter.
    angle = np.degrees(np.arctan2(side[0], side[1]))
    return float((angle + 45.0) % 90.0 - 45.0)


def _grow_box(box, margin: float, shape) -> tuple[int, int, int, int]:
    """Whole pixels of `box` grown by `margin` of its width and height on each side, within `shape`."""
    left, top, right, bottom = box
    grow_x, grow_y = margin * (right - left), margin * (bottom - top)
    height, width = shape
    return (
        max(0, int(np.floor(left - grow_x))),
        max(0, int(np.floor(top - grow_y))),
        min(width, int(np.ceil(right + grow_x))),
        min(height, int(np.ceil(bottom + grow_y))),
    )


def _turn_and_crop(image: np.ndarray, outline: np.ndarray, angle: float, margin: float) -> np.ndarray:
    """Turn `image` about its centre onto a canvas that holds all of it, then crop around the outline.

    One warpAffine straight into the crop, so the full turned canvas is never built. A direction
    `angle` degrees from the vertical towards +x becomes vertical.
    """
    height, width = image.shape
    cos, sin = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    turn = np.array([[cos, -sin], [sin, cos]])
    canvas_height = int(np.ceil(width * abs(sin) + height * abs(cos)))
    canvas_width = int(np.ceil(width * abs(cos) + height * abs(sin)))
    # Pixel-centre coordinates, as warpAffine uses: the image's centre goes to the canvas's centre.
    shift = (np.array([canvas_width, canvas_height]) - 1) / 2.0 - turn @ ((np.array([width, height]) - 1) / 2.0)
    turned = (outline - 0.5) @ turn.T + shift + 0.5
    box = (*turned.min(axis=0), *turned.max(axis=0))
    left, top, right, bottom = _grow_box(box, margin, (canvas_height, canvas_width))
    matrix = np.column_stack([turn, shift - (left, top)])
    return cv2.warpAffine(
        image,
        matrix,
        (right - left, bottom - top),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=_background_level(image),
    )


def preprocess_image(
    image: np.ndarray, image_size: int, *, pad_to_square=True, contrast="clahe", hand_crop: str = "none"
) -> np.ndarray:
    """Crop to the hand (optional, see HAND_CROPS), pad to square (optional, keeps the aspect ratio),
    resize to `image_size`, normalise contrast."""
    _check_parameters(image_size, contrast, hand_crop)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        raise ValueError(
            f"preprocess_image expects a non-empty 2-D uint8 image (see read_grayscale); "
            f"got dtype {image.dtype}, shape {image.shape}"
        )
    if hand_crop != "none":
        image = crop_to_hand(image, rotate=hand_crop == "rotated")
    if pad_to_square:
        image = _pad_to_square(image)
    # INTER_AREA averages the source pixels: no aliasing when shrinking full-resolution radiographs.
    image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return _normalise_contrast(image, contrast)


def _check_parameters(image_size, contrast, hand_crop="none") -> None:
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of: {', '.join(CONTRASTS)}")
    if hand_crop not in HAND_CROPS:
        raise ValueError(f"unknown hand_crop {hand_crop!r}; expected one of: {', '.join(HAND_CROPS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer; got {image_size!r}")


def _pad_to_square(image: np.ndarray) -> np.ndarray:
    """Centre the image on a square of its background level (the median of its border pixels)."""
    height, width = image.shape
    if height == width:
        return image
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(
        image, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT,
        value=_background_level(image),
    )


def _background_level(image: np.ndarray) -> int:
    """The median of the border pixels: what surrounds the hand."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return int(np.median(border))


def _normalise_contrast(image: np.ndarray, contrast: str) -> np.ndarray:
    if contrast == "clahe":
        tiles = int(np.clip(round(image.shape[0] / CLAHE_TILE_PIXELS), *CLAHE_TILES_RANGE))
        # A new CLAHE object per image: the objects are not documented as thread-safe.
        clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=(tiles, tiles))
        return clahe.apply(image)
    if contrast == "percentile":
        return _window_to_uint8(image, CONTRAST_PERCENTILES)
    return image


def _preprocess_file(
    path, image_size: int, pad_to_square: bool, contrast: str, hand_crop: str = "none"
) -> np.ndarray:
    image = read_grayscale(path)
    return preprocess_image(image, image_size, pad_to_square=pad_to_square, contrast=contrast, hand_crop=hand_crop)


def preprocess_paths(
    paths, image_size: int, *, pad_to_square, contrast, hand_crop: str = "none", progress=True
) -> np.ndarray:
    """Read and preprocess image files on all cores; uint8 (N, S, S) in the order of `paths`.

    Threads, not processes: OpenCV releases the GIL while decoding and resizing, threads write
    straight into the output array, and they cost no more CPU than a serial loop, while worker
    processes cost ~60% more (start-up, pickling); see benchmarks/preprocessing_throughput.py.
    Every file is tried: files that cannot be read raise one ImageErrors that lists them all.
    """
    _check_parameters(image_size, contrast, hand_crop)
    paths = [str(path) for path in paths]
    images = np.zeros((len(paths), image_size, image_size), dtype=np.uint8)
    failures = {}

    def preprocess_into(index: int) -> None:
        try:
            images[index] = _preprocess_file(paths[index], image_size, pad_to_square, contrast, hand_crop)
        except ImageError as error:
            failures[index] = str(error)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as executor:
        work = executor.map(preprocess_into, range(len(paths)))
        for _ in tqdm(work, total=len(paths), desc="preprocessing images", unit="image", disable=not progress):
            pass
    if failures:
        raise ImageErrors({paths[index]: failures[index] for index in sorted(failures)}, images)
    return images


def load_images(
    table,
    image_size: int,
    *,
    pad_to_square,
    contrast,
    hand_crop: str = "none",
    cache_dir=config.CACHE_DIR,
    progress=True,
    mmap: bool = False,
) -> np.ndarray:
    """Preprocessed images of `table["path"]`, uint8 (N, S, S) aligned with the rows, cached as .npy.

    `mmap`: the cache file memory-mapped read-only (np.memmap) rather than read into memory, so
    that a data set larger than the memory can be trained on (`CachedRows`, training.make_dataset).

    The cache key covers the parameters, PREPROCESSING_VERSION and every file's path, size and
    modification time, so that any change recomputes. A JSON beside the .npy describes the key.
    Files that cannot be read raise ImageErrors; the images of the others are cached under the key
    of their own table, and the failures beside, so that asking again (or for the table without
    the failed rows) decodes nothing.
    """
    _check_parameters(image_size, contrast, hand_crop)
    paths = [str(path) for path in table["path"]]
    options = {"pad_to_square": pad_to_square, "contrast": contrast, "hand_crop": hand_crop}
    cache_file, key, key_inputs = _cache_location(paths, image_size, cache_dir=cache_dir, **options)
    expected_shape = (len(paths), image_size, image_size)
    if cache_file.exists():
        images = np.load(cache_file, mmap_mode="r" if mmap else None)
        if images.shape == expected_shape and images.dtype == np.uint8:
            return images
    failures_file = cache_file.with_suffix(".failures.json")
    if failures_file.exists():
        raise ImageErrors(json.loads(failures_file.read_text(encoding="utf-8"))["failures"])
    try:
        images = preprocess_paths(paths, image_size, progress=progress, **options)
    except ImageErrors as error:
        good = [index for index, path in enumerate(paths) if path not in error.failures]
        if good and error.images is not None:
            _write_cache([paths[index] for index in good], error.images[good], image_size, cache_dir, **options)
        write_json_atomic(failures_file, {"failures": error.failures, "key_sha256": key})
        raise
    _write_cache(paths, images, image_size, cache_dir, **options)
    return np.load(cache_file, mmap_mode="r") if mmap else images


class CachedRows:
    """Some rows of a memory-mapped image cache, read only when asked for: what `study.split_arrays`
    gives for a memory-mapped cache, and `training.make_dataset` streams batch by batch.
    Indexing (an int, a slice or an index array) returns an ordinary array of those rows."""

    def __init__(self, source: np.ndarray, rows):
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)
        self.shape, self.dtype, self.ndim = (len(self.rows), *source.shape[1:]), source.dtype, source.ndim

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.source[self.rows[key]])

    def __array__(self, dtype=None, copy=None):
        """All the rows in memory (what the out-of-core path avoids; for code that needs an array)."""
        return self[:] if dtype is None else self[:].astype(dtype)

    def chunks(self, size: int = 1024):
        """The rows in order, `size` at a time (to hash or scan them in bounded memory)."""
        for start in range(0, len(self), size):
            yield self[start:start + size]


def _write_cache(paths: list[str], images: np.ndarray, image_size: int, cache_dir, **options) -> None:
    cache_file, key, key_inputs = _cache_location(paths, image_size, cache_dir=cache_dir, **options)
    with atomic_path(cache_file) as temporary:
        np.save(temporary, images)
    write_json_atomic(cache_file.with_suffix(".json"), _describe_cache(key, key_inputs, paths, images.shape))


def _cache_location(paths: list[str], image_size: int, *, pad_to_square, contrast, hand_crop, cache_dir):
    """(cache file, key, what the key covers) of preprocessed `paths`."""
    key_inputs = {
        "image_size": int(image_size),
        "pad_to_square": bool(pad_to_square),
        "contrast": contrast,
        "preprocessing_version": PREPROCESSING_VERSION,
        "files": [_file_signature(path) for path in paths],
    }
    crop = ""
    if hand_crop != "none":
        # Only then: the caches made before hand_crop existed (all "none") keep their key and name.
        key_inputs["hand_crop"] = hand_crop
        crop = f"{hand_crop}crop-"
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode("utf-8")).hexdigest()
    layout = "pad" if pad_to_square else "stretch"
    cache_file = Path(cache_dir) / f"images-{image_size}px-{layout}-{contrast}-{crop}{key[:16]}.npy"
    return cache_file, key, key_inputs


def _file_signature(path: str) -> list:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: does not exist") from None
    return [path, status.st_size, status.st_mtime_ns]


def _describe_cache(key: str, key_inputs: dict, paths: list[str], shape: tuple) -> dict:
    """What a cache file holds, for a human looking into the cache folder."""
    return {
        "key_sha256": key,
        "image_size": key_inputs["image_size"],
        "pad_to_square": key_inputs["pad_to_square"],
        "contrast": key_inputs["contrast"],
        "hand_crop": key_inputs.get("hand_crop", "none"),
        "preprocessing_version": PREPROCESSING_VERSION,
        "shape": list(shape),
        "n_images": len(paths),
        "folders": sorted({str(Path(path).parent) for path in paths}),
        "first_path": paths[0] if paths else None,
        "last_path": paths[-1] if paths else None,
        "key_covers": (
            "image_size, pad_to_square, contrast, hand_crop (when not 'none'), preprocessing_version, "
            "and each file's path, size, mtime_ns"
        ),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------
# Test-time augmentation: the views a model averages over, the same for every runtime
# ---------------------------------------------------------------------------------------------

# "none": the image alone; "shift": it and two copies shifted sideways by TTA_SHIFT_FRACTION of
# the width (black fill); "flip": it and its mirror image; "shift_flip": the three shift views
# and their mirror images (6 views).
TTA_SHIFT_FRACTION = 0.03


def tta_views(images: np.ndarray, mode) -> list[np.ndarray]:
    """The views of uint8 (N, S, S) images that `mode` (see parameters.TTA_MODES) averages over; the first
    is always the images themselves."""
    mode = normalise_tta(mode)
    images = np.asarray(images)
    views = [images]
    if mode in ("shift", "shift_flip"):
        shift = max(1, round(TTA_SHIFT_FRACTION * images.shape[-1]))
        right, left = np.zeros_like(images), np.zeros_like(images)
        right[..., shift:] = images[..., :-shift]
        left[..., :-shift] = images[..., shift:]
        views += [right, left]
    if mode in ("flip", "shift_flip"):
        views += [np.ascontiguousarray(view[..., ::-1]) for view in views]
    return views


def tta_average(predict_fn, images: np.ndarray, male, tta) -> np.ndarray:
    """Bone age in months, (N,): `predict_fn(view, male) -> (N,) months` averaged over the views
    of `tta_views(images, tta)` and clipped to the data's age range. Both runtimes (Keras in
    utils.model, ONNX in utils.onnx_runtime) predict through this function."""
    predictions = [np.asarray(predict_fn(view, male)).reshape(-1) for view in tta_views(images, tta)]
    return config.clip_to_age_range(np.mean(predictions, axis=0))
