"""Decode radiographs of any common format to 8-bit grayscale, normalise them, and cache the result.

Every image goes through the same three steps, so that training, evaluation and inference agree:
`read_grayscale` (any file -> uint8 (H, W)), `preprocess_image` (pad, resize, contrast -> uint8
(S, S)), and `load_images` (a whole table, cached as .npy so that a rerun does not decode again).
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
from utils.files import atomic_path, write_json_atomic

# Bump when a change below alters the output pixels: it is part of the cache key.
PREPROCESSING_VERSION = 1
CONTRASTS = ("clahe", "percentile", "none")
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


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file and the problem."""


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


def preprocess_image(image: np.ndarray, image_size: int, *, pad_to_square=True, contrast="clahe") -> np.ndarray:
    """Pad to square (optional, keeps the aspect ratio), resize to `image_size`, normalise contrast."""
    _check_parameters(image_size, contrast)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        raise ValueError(
            f"preprocess_image expects a non-empty 2-D uint8 image (see read_grayscale); "
            f"got dtype {image.dtype}, shape {image.shape}"
        )
    if pad_to_square:
        image = _pad_to_square(image)
    # INTER_AREA averages the source pixels: no aliasing when shrinking full-resolution radiographs.
    image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return _normalise_contrast(image, contrast)


def _check_parameters(image_size, contrast) -> None:
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of: {', '.join(CONTRASTS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer; got {image_size!r}")


def _pad_to_square(image: np.ndarray) -> np.ndarray:
    """Centre the image on a square of its background level (the median of its border pixels)."""
    height, width = image.shape
    if height == width:
        return image
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = int(np.median(border))
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(
        image, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT, value=background
    )


def _normalise_contrast(image: np.ndarray, contrast: str) -> np.ndarray:
    if contrast == "clahe":
        tiles = int(np.clip(round(image.shape[0] / CLAHE_TILE_PIXELS), *CLAHE_TILES_RANGE))
        # A new CLAHE object per image: the objects are not documented as thread-safe.
        clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=(tiles, tiles))
        return clahe.apply(image)
    if contrast == "percentile":
        return _window_to_uint8(image, CONTRAST_PERCENTILES)
    return image


def _preprocess_file(path, image_size: int, pad_to_square: bool, contrast: str) -> np.ndarray:
    return preprocess_image(read_grayscale(path), image_size, pad_to_square=pad_to_square, contrast=contrast)


def preprocess_paths(paths, image_size: int, *, pad_to_square, contrast, progress=True) -> np.ndarray:
    """Read and preprocess image files on all cores; uint8 (N, S, S) in the order of `paths`.

    Threads, not processes: OpenCV releases the GIL while decoding and resizing, threads write
    straight into the output array, and they cost no more CPU than a serial loop, while worker
    processes cost ~60% more (start-up, pickling); see benchmarks/preprocessing_throughput.py.
    """
    _check_parameters(image_size, contrast)
    paths = [str(path) for path in paths]
    images = np.empty((len(paths), image_size, image_size), dtype=np.uint8)

    def preprocess_into(index: int) -> None:
        images[index] = _preprocess_file(paths[index], image_size, pad_to_square, contrast)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as executor:
        # map() cancels the queued files at the first error, so a bad file fails fast.
        work = executor.map(preprocess_into, range(len(paths)))
        for _ in tqdm(work, total=len(paths), desc="preprocessing images", unit="image", disable=not progress):
            pass
    return images


def load_images(
    table, image_size: int, *, pad_to_square, contrast, cache_dir=config.CACHE_DIR, progress=True
) -> np.ndarray:
    """Preprocessed images of `table["path"]`, uint8 (N, S, S) aligned with the rows, cached as .npy.

    The cache key covers the parameters, PREPROCESSING_VERSION and every file's path, size and
    modification time, so that any change recomputes. A JSON beside the .npy describes the key.
    """
    _check_parameters(image_size, contrast)
    paths = [str(path) for path in table["path"]]
    key_inputs = {
        "image_size": int(image_size),
        "pad_to_square": bool(pad_to_square),
        "contrast": contrast,
        "preprocessing_version": PREPROCESSING_VERSION,
        "files": [_file_signature(path) for path in paths],
    }
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode("utf-8")).hexdigest()
    layout = "pad" if pad_to_square else "stretch"
    cache_file = Path(cache_dir) / f"images-{image_size}px-{layout}-{contrast}-{key[:16]}.npy"
    expected_shape = (len(paths), image_size, image_size)
    if cache_file.exists():
        images = np.load(cache_file)
        if images.shape == expected_shape and images.dtype == np.uint8:
            return images
    images = preprocess_paths(paths, image_size, pad_to_square=pad_to_square, contrast=contrast, progress=progress)
    with atomic_path(cache_file) as temporary:
        np.save(temporary, images)
    write_json_atomic(cache_file.with_suffix(".json"), _describe_cache(key, key_inputs, paths, images.shape))
    return images


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
        "preprocessing_version": PREPROCESSING_VERSION,
        "shape": list(shape),
        "n_images": len(paths),
        "folders": sorted({str(Path(path).parent) for path in paths}),
        "first_path": paths[0] if paths else None,
        "last_path": paths[-1] if paths else None,
        "key_covers": "image_size, pad_to_square, contrast, preprocessing_version, and each file's path, size, mtime_ns",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
