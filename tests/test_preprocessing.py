"""Decoding of every image kind, preprocessing, and the .npy cache of utils.preprocessing."""

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from utils import config, preprocessing
from utils.preprocessing import (
    ImageError,
    crop_to_hand,
    load_images,
    preprocess_image,
    preprocess_paths,
    read_grayscale,
)
from utils.synthetic import Anatomy, Pose, draw_layers, expose, render_hand, sample_anatomy

SHARED_DATA = config.SHARED_DATA_DIR


def square_on_background(background, square, dtype=np.uint8, shape=(40, 60)):
    """A wide image of `background` with a `square` block in its top-left quarter: orientation shows."""
    image = np.full(shape, background, dtype=dtype)
    image[5:15, 5:15] = square
    return image


def assert_bright_square(gray, shape=(40, 60)):
    assert gray.dtype == np.uint8 and gray.shape == shape
    assert gray[5:15, 5:15].min() == 255
    assert gray[20:, 20:].max() == 0


def write_dicom(path, pixels, photometric="MONOCHROME2", rescale=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=12)
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
    dataset.save_as(path, enforce_file_format=True)
    return path


# --- read_grayscale: every image kind -------------------------------------------------------------


def test_8bit_png_is_read_unchanged(tmp_path):
    image = square_on_background(30, 200)
    cv2.imwrite(str(tmp_path / "gray.png"), image)
    np.testing.assert_array_equal(read_grayscale(tmp_path / "gray.png"), image)


def test_16bit_png_is_windowed_to_8bit(tmp_path):
    cv2.imwrite(str(tmp_path / "gray16.png"), square_on_background(1000, 60000, np.uint16))
    assert_bright_square(read_grayscale(tmp_path / "gray16.png"))


def test_16bit_window_ignores_a_few_hot_pixels(tmp_path):
    image = square_on_background(1000, 4000, np.uint16)
    image[-1, -3:] = 65535  # dead detector elements must not squeeze the hand into a few gray levels
    cv2.imwrite(str(tmp_path / "hot.png"), image)
    gray = read_grayscale(tmp_path / "hot.png")
    assert gray[5:15, 5:15].min() == 255 and gray[20:30, 20:30].max() == 0


def test_12bit_values_in_16bit_png_use_the_full_range(tmp_path):
    image = np.tile(np.linspace(0, 4095, 60).astype(np.uint16), (40, 1))
    cv2.imwrite(str(tmp_path / "gray12.png"), image)
    gray = read_grayscale(tmp_path / "gray12.png")
    assert gray[:, 0].max() == 0 and gray[:, -1].min() == 255
    assert np.all(np.diff(gray[0].astype(int)) >= 0)


def test_colour_png_becomes_gray(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    image[5:15, 5:15] = 255
    image[30:35, 40:45] = (0, 0, 255)  # pure red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "colour.png"), image)
    gray = read_grayscale(tmp_path / "colour.png")
    assert gray.shape == (40, 60) and gray[5:15, 5:15].min() == 255
    # ITU-R 601 luma of red is 0.299 * 255; blue would give 29: the channel order is right.
    assert gray[32, 42] == 76


def test_rgba_png_is_composited_over_black(tmp_path):
    image = np.full((40, 60, 4), 255, np.uint8)
    image[..., 3] = 0  # a white but fully transparent background
    image[5:15, 5:15] = (200, 200, 200, 255)
    image[20:30, 30:40] = (200, 200, 200, 128)
    cv2.imwrite(str(tmp_path / "rgba.png"), image)
    gray = read_grayscale(tmp_path / "rgba.png")
    assert gray.shape == (40, 60)
    assert gray[5:15, 5:15].min() == 200
    assert gray[0, -1] == 0
    assert gray[25, 35] == 100


def test_palette_png_is_expanded(tmp_path):
    image = square_on_background(30, 200)
    Image.fromarray(image).convert("P").save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    np.testing.assert_array_equal(read_grayscale(tmp_path / "palette.png"), image)


def test_jpeg_keeps_orientation(tmp_path):
    cv2.imwrite(str(tmp_path / "hand.jpg"), square_on_background(0, 255))
    gray = read_grayscale(tmp_path / "hand.jpg")
    assert gray.shape == (40, 60)
    assert gray[7:13, 7:13].min() > 230 and gray[20:, 20:].max() < 25


def test_real_palette_png_matches_pillow():
    path = SHARED_DATA / "rsna-fullres-sample" / "boneage-training-dataset" / "1578.png"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    expected = np.asarray(Image.open(path).convert("L"))
    np.testing.assert_array_equal(read_grayscale(path), expected)


def test_dicom_monochrome2(tmp_path):
    write_dicom(tmp_path / "image.dcm", square_on_background(500, 3000, np.uint16))
    assert_bright_square(read_grayscale(tmp_path / "image.dcm"))


def test_dicom_monochrome1_is_inverted(tmp_path):
    # MONOCHROME1 displays high stored values as dark: the square must come out dark.
    write_dicom(tmp_path / "image.dcm", square_on_background(3000, 500, np.uint16), photometric="MONOCHROME1")
    assert_bright_square(read_grayscale(tmp_path / "image.dcm"))


def test_dicom_rescale_slope_and_intercept_are_applied(tmp_path):
    # A negative slope turns the stored dark square into the dense (bright) one.
    write_dicom(tmp_path / "image.dcm", square_on_background(3000, 500, np.uint16), rescale=(-1, 4095))
    assert_bright_square(read_grayscale(tmp_path / "image.dcm"))


def test_dicom_is_recognised_by_its_magic_without_suffix(tmp_path):
    path = write_dicom(tmp_path / "IM0001", square_on_background(500, 3000, np.uint16))
    assert_bright_square(read_grayscale(path))


# --- read_grayscale: errors name the file ----------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("corrupt.png", b"\x89PNG\r\n\x1a\n this is not the rest of a png", "cannot be decoded"),
        ("notes.png", b"bone age notes, not pixels", "cannot be decoded"),
        ("empty.png", b"", "empty"),
        ("broken.dcm", b"\x00" * 128 + b"DICM" + b"\x01\x02\x03", "cannot be decoded as DICOM"),
    ],
)
def test_unreadable_file_is_named(tmp_path, name, content, problem):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=problem) as caught:
        read_grayscale(tmp_path / name)
    assert name in str(caught.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ImageError, match="missing.png: does not exist"):
        read_grayscale(tmp_path / "missing.png")


# --- preprocess_image --------------------------------------------------------------------------------


@pytest.mark.parametrize("contrast", ["clahe", "percentile", "none"])
@pytest.mark.parametrize("pad_to_square", [True, False])
def test_preprocess_shape_dtype_and_determinism(contrast, pad_to_square):
    image = np.random.default_rng(0).integers(0, 120, size=(90, 50), dtype=np.uint8)
    first = preprocess_image(image, 32, pad_to_square=pad_to_square, contrast=contrast)
    second = preprocess_image(image.copy(), 32, pad_to_square=pad_to_square, contrast=contrast)
    assert first.dtype == np.uint8 and first.shape == (32, 32)
    np.testing.assert_array_equal(first, second)


def wide_rectangle_aspect(output):
    rows, columns = np.nonzero(output > 127)
    return (columns.max() - columns.min() + 1) / (rows.max() - rows.min() + 1)


def test_pad_keeps_the_aspect_ratio_and_stretch_does_not():
    image = np.zeros((100, 200), np.uint8)
    image[30:70, 20:180] = 255  # 160 x 40: aspect 4
    padded = preprocess_image(image, 64, pad_to_square=True, contrast="none")
    stretched = preprocess_image(image, 64, pad_to_square=False, contrast="none")
    assert wide_rectangle_aspect(padded) == pytest.approx(4, rel=0.1)
    assert wide_rectangle_aspect(stretched) == pytest.approx(2, rel=0.1)


def test_pad_uses_the_background_level():
    image = np.full((50, 100), 90, np.uint8)
    image[20:30, 40:60] = 250
    padded = preprocess_image(image, 20, pad_to_square=True, contrast="none")
    assert np.all(padded[:4] == 90) and np.all(padded[-4:] == 90)
    assert padded[10, 10] == 250


def test_percentile_contrast_stretches_to_full_range():
    image = np.tile(np.linspace(100, 120, 64).astype(np.uint8), (64, 1))
    output = preprocess_image(image, 64, contrast="percentile")
    assert output.min() == 0 and output.max() == 255


def test_clahe_raises_local_contrast():
    image = np.random.default_rng(1).integers(100, 110, size=(64, 64), dtype=np.uint8)
    output = preprocess_image(image, 64, contrast="clahe")
    assert output.std() > 2 * image.std()


def test_unknown_contrast_lists_the_options():
    with pytest.raises(ValueError, match="clahe, percentile, none"):
        preprocess_image(np.zeros((8, 8), np.uint8), 8, contrast="histogram")


@pytest.mark.parametrize("image", [np.zeros((0, 5), np.uint8), np.zeros((8, 8), np.float32), np.zeros((8, 8, 3), np.uint8)])
def test_preprocess_refuses_what_read_grayscale_never_returns(image):
    with pytest.raises(ValueError, match="2-D uint8"):
        preprocess_image(image, 8)


# --- crop_to_hand and the hand_crop option ----------------------------------------------------------


def clean_hand(image_size=128, pose=Pose()):
    """A noise-free synthetic hand on black, uint8 (S, S), drawn by utils.synthetic; the hand
    covers about a quarter of the image."""
    tissue, bone = draw_layers(10.0, image_size, Anatomy(), pose)
    return np.rint(255.0 * (1.0 - np.exp(-(0.6 * tissue + 0.8 * bone)))).astype(np.uint8)


def hand_in_corner():
    """A 224 px hand near the bottom-right corner of a black 500 x 700 canvas (4% of it)."""
    canvas = np.zeros((500, 700), np.uint8)
    canvas[270:494, 470:694] = clean_hand(224)
    return canvas


def locate(image, crop):
    """(row, column) of the top-left corner of `crop` in `image`, of which it is an exact copy."""
    differences = cv2.matchTemplate(image, crop, cv2.TM_SQDIFF)
    _, _, _, (column, row) = cv2.minMaxLoc(-differences)
    np.testing.assert_array_equal(image[row : row + crop.shape[0], column : column + crop.shape[1]], crop)
    return row, column


def fraction_inside(points, crop_shape, corner):
    """Fraction of (rows, columns) `points` that lie inside a crop of `crop_shape` at `corner`."""
    rows, columns = points
    inside_rows = (rows >= corner[0]) & (rows < corner[0] + crop_shape[0])
    inside_columns = (columns >= corner[1]) & (columns < corner[1] + crop_shape[1])
    return float(np.mean(inside_rows & inside_columns))


def test_crop_finds_a_small_hand_in_a_corner():
    canvas = hand_in_corner()
    crop = crop_to_hand(canvas)
    assert crop.dtype == np.uint8 and crop.size < 0.15 * canvas.size
    assert fraction_inside(np.nonzero(canvas > 20), crop.shape, locate(canvas, crop)) == 1.0


def test_crop_finds_an_off_centre_hand():
    image = clean_hand(256, Pose(shift=(-0.2, -0.1), scale=0.8))  # left of the centre
    image[image == 0] = 12  # a fogged film rather than pure black
    crop = crop_to_hand(image)
    row, column = locate(image, crop)
    assert crop.shape[1] < 0.6 * image.shape[1] and column + crop.shape[1] / 2 < 128 - 30
    assert fraction_inside(np.nonzero(image > 30), crop.shape, (row, column)) == 1.0


def realistic_hand(seed, image_size=192):
    """A synthetic radiograph with the nuisances of real ones (exposure, noise, blur, side marker,
    sometimes collimation), its hand tilted and shifted at random; and the hand's soft-tissue mask."""
    rng = np.random.default_rng(seed)
    pose = Pose(rotation=rng.uniform(-20, 20), shift=(rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1)), scale=0.75)
    tissue, bone = draw_layers(rng.uniform(2, 16), image_size, sample_anatomy(rng), pose)
    return expose(tissue, bone, rng), tissue > 0.05 * tissue.max()


def test_crop_never_cuts_a_realistic_hand():
    cropped = 0
    for seed in range(12):
        image, hand = realistic_hand(seed)
        crop = crop_to_hand(image)
        assert fraction_inside(np.nonzero(hand), crop.shape, locate(image, crop)) > 0.98, f"seed {seed}"
        cropped += crop.size < 0.8 * image.size
    assert cropped >= 6  # a crop that is always the whole image would pass the above


@pytest.mark.parametrize("angle", [30, -30, 15])
def test_rotate_turns_a_tilted_bar_upright(angle):
    image = np.zeros((300, 300), np.uint8)
    corners = cv2.boxPoints(((150, 150), (40, 160), angle))
    cv2.fillPoly(image, [np.round(corners).astype(np.int32)], 255)
    assert crop_to_hand(image, margin=0).shape[1] > 75  # the tilted bar's box is wide
    upright = crop_to_hand(image, rotate=True, margin=0)
    rows, columns = np.nonzero(upright > 127)
    assert rows.max() - rows.min() + 1 == pytest.approx(160, abs=3)
    assert columns.max() - columns.min() + 1 == pytest.approx(40, abs=3)
    # The box is found at half resolution (the working long side is at most 256 px).
    assert upright.shape == pytest.approx((160, 40), abs=6)


@pytest.mark.parametrize("angle", [30, -30])
def test_rotate_turns_a_tilted_hand_upright(angle):
    tilted = clean_hand(256, Pose(rotation=angle, scale=0.8))
    upright = crop_to_hand(tilted, rotate=True)
    _, hand = cv2.threshold(upright, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, _, rectangle_angle = cv2.minAreaRect(cv2.findNonZero(hand))
    assert abs((rectangle_angle + 45) % 90 - 45) < 3  # the hand's rectangle now has upright sides
    assert upright.shape[0] > 1.6 * upright.shape[1]  # and its long side is vertical
    box = crop_to_hand(tilted)
    assert upright.shape[0] / upright.shape[1] > box.shape[0] / box.shape[1] + 0.4


def test_margin_grows_the_box_within_the_image():
    image = np.zeros((200, 240), np.uint8)
    image[50:150, 100:150] = 200  # 100 tall, 50 wide
    assert crop_to_hand(image, margin=0).shape == pytest.approx((100, 50), abs=1)
    assert crop_to_hand(image, margin=0.1).shape == pytest.approx((120, 60), abs=2)
    corner = np.zeros((200, 240), np.uint8)
    corner[:100, :50] = 200  # the margin is clipped at the top and left edges
    assert crop_to_hand(corner, margin=0.1).shape == pytest.approx((110, 55), abs=2)


def test_crop_keeps_large_parts_and_drops_small_ones():
    image = np.zeros((200, 240), np.uint8)
    image[40:160, 40:90] = 200  # the hand
    image[60:120, 120:160] = 200  # its thumb, cut off by the threshold: 40% of the hand's area
    image[180:192, 200:212] = 255  # a side marker
    crop = crop_to_hand(image, margin=0)
    assert crop.shape == pytest.approx((120, 120), abs=2)


def speck():
    image = np.zeros((200, 200), np.uint8)
    image[50:74, 60:84] = 255  # 1.4% of the image
    return image


NO_HAND = {
    "speck": speck(),
    "blank": np.zeros((90, 120), np.uint8),
    "constant": np.full((90, 120), 128, np.uint8),
    "white": np.full((50, 70), 255, np.uint8),
    "noise 100 px": np.random.default_rng(0).integers(0, 256, (100, 100), dtype=np.uint8),
    "noise 300x200": np.random.default_rng(1).integers(0, 256, (300, 200), dtype=np.uint8),
    "gaussian noise": np.clip(np.random.default_rng(2).normal(128, 40, (240, 180)), 0, 255).astype(np.uint8),
}


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("name", NO_HAND)
def test_image_without_a_hand_is_returned_unchanged(name, rotate):
    image = NO_HAND[name]
    output = crop_to_hand(image, rotate=rotate)
    assert output.dtype == np.uint8 and output.shape == image.shape
    np.testing.assert_array_equal(output, image)


def test_a_bright_band_along_a_side_is_not_taken_for_the_hand():
    image = np.rint(0.35 * clean_hand(200)).astype(np.uint8)  # a faint hand
    image[170:] = 230  # a collimator edge across the bottom, brighter than the hand
    np.testing.assert_array_equal(crop_to_hand(image), image)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 200), (200, 3)])
def test_tiny_images_give_a_non_empty_crop(shape):
    image = (np.arange(np.prod(shape)) * 37 % 256).astype(np.uint8).reshape(shape)
    for rotate in (False, True):
        output = crop_to_hand(image, rotate=rotate)
        assert output.dtype == np.uint8 and output.ndim == 2 and output.size > 0


@pytest.mark.parametrize(
    "image, margin, problem",
    [
        (np.zeros((8, 8), np.float32), 0.05, "2-D uint8"),
        (np.zeros((8, 8, 3), np.uint8), 0.05, "2-D uint8"),
        (np.zeros((0, 5), np.uint8), 0.05, "2-D uint8"),
        (np.zeros((8, 8), np.uint8), -0.1, "margin"),
        (np.zeros((8, 8), np.uint8), float("nan"), "margin"),
    ],
)
def test_crop_refuses_bad_arguments(image, margin, problem):
    with pytest.raises(ValueError, match=problem):
        crop_to_hand(image, margin=margin)


def test_crop_keeps_the_hand_of_a_real_radiograph():
    path = SHARED_DATA / "rsna-fullres-sample" / "boneage-training-dataset" / "1437.png"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    image = read_grayscale(path)  # 1600 x 2080, background already black in this sample
    for rotate in (False, True):
        crop = crop_to_hand(image, rotate=rotate)
        assert crop.size < 0.85 * image.size
        assert crop.sum(dtype=np.int64) > 0.99 * image.sum(dtype=np.int64)  # all of the hand


@pytest.mark.parametrize("hand_crop", ["box", "rotated"])
def test_preprocess_image_crops_to_the_hand_first(hand_crop):
    canvas = hand_in_corner()
    output = preprocess_image(canvas, 64, contrast="none", hand_crop=hand_crop)
    assert output.dtype == np.uint8 and output.shape == (64, 64)
    expected = preprocess_image(crop_to_hand(canvas, rotate=hand_crop == "rotated"), 64, contrast="none")
    np.testing.assert_array_equal(output, expected)
    uncropped = preprocess_image(canvas, 64, contrast="none")
    assert (output > 20).mean() > 4 * (uncropped > 20).mean()  # the hand fills the image, not a corner
    np.testing.assert_array_equal(uncropped, preprocess_image(canvas, 64, contrast="none", hand_crop="none"))
    radiograph = render_hand(120, True, np.random.default_rng(0), 128)
    assert preprocess_image(radiograph, 64, hand_crop=hand_crop).shape == (64, 64)  # with CLAHE


UNKNOWN_HAND_CROP = {
    "preprocess_image": lambda path: preprocess_image(np.zeros((8, 8), np.uint8), 8, hand_crop="bogus"),
    "preprocess_paths": lambda path: preprocess_paths(
        [path], 8, pad_to_square=True, contrast="none", hand_crop="bogus", progress=False
    ),
    "load_images": lambda path: load_images(
        pd.DataFrame({"path": [str(path)]}), 8, pad_to_square=True, contrast="none", hand_crop="bogus",
        cache_dir=path.parent / "cache", progress=False,
    ),
}


@pytest.mark.parametrize("function", UNKNOWN_HAND_CROP)
def test_unknown_hand_crop_lists_the_options(tmp_path, function):
    (path,) = write_images(tmp_path, 1)
    with pytest.raises(ValueError, match="'bogus'; expected one of: none, box, rotated"):
        UNKNOWN_HAND_CROP[function](path)
    assert not (tmp_path / "cache").exists()


def test_preprocess_paths_applies_the_hand_crop(tmp_path):
    paths = write_images(tmp_path, 3)
    images = preprocess_paths(paths, 16, pad_to_square=True, contrast="none", hand_crop="rotated", progress=False)
    for path, image in zip(paths, images):
        expected = preprocess_image(read_grayscale(path), 16, contrast="none", hand_crop="rotated")
        np.testing.assert_array_equal(image, expected)
    assert not np.array_equal(images, preprocess_paths(paths, 16, pad_to_square=True, contrast="none", progress=False))


def test_hand_crop_has_its_own_cache_file(tmp_path, decode_count):
    table = pd.DataFrame({"path": [str(path) for path in write_images(tmp_path, 3)]})
    cache_dir = tmp_path / "cache"
    parameters = {"image_size": 16, "pad_to_square": True, "contrast": "none", "cache_dir": cache_dir}
    parameters["progress"] = False
    plain = load_images(table, **parameters)
    cropped = load_images(table, hand_crop="box", **parameters)
    again = load_images(table, hand_crop="box", **parameters)
    assert len(decode_count) == 6  # the second "box" load is a cache hit
    assert not np.array_equal(plain, cropped)
    np.testing.assert_array_equal(cropped, again)
    box_files = list(cache_dir.glob("*-boxcrop-*.npy"))
    plain_files = [path for path in cache_dir.glob("*.npy") if path not in box_files]
    assert len(box_files) == 1 and len(plain_files) == 1
    assert json.loads(box_files[0].with_suffix(".json").read_text())["hand_crop"] == "box"
    assert json.loads(plain_files[0].with_suffix(".json").read_text())["hand_crop"] == "none"


def test_cache_key_without_hand_crop_is_that_of_earlier_caches(tmp_path):
    # Caches written before hand_crop existed must stay valid: "none" adds nothing to the key.
    paths = write_images(tmp_path, 2)
    table = pd.DataFrame({"path": [str(path) for path in paths]})
    load_images(table, 16, pad_to_square=True, contrast="clahe", cache_dir=tmp_path / "cache", progress=False)
    key_inputs = {
        "image_size": 16,
        "pad_to_square": True,
        "contrast": "clahe",
        "preprocessing_version": preprocessing.PREPROCESSING_VERSION,
        "files": [[str(path), path.stat().st_size, path.stat().st_mtime_ns] for path in paths],
    }
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode("utf-8")).hexdigest()
    assert [path.name for path in (tmp_path / "cache").glob("*.npy")] == [f"images-16px-pad-clahe-{key[:16]}.npy"]


# --- preprocess_paths ------------------------------------------------------------------------------


def write_images(folder, count):
    paths = []
    for index in range(count):
        image = square_on_background(10 * index, 250, shape=(30 + index, 40))
        paths.append(folder / f"{index}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def test_preprocess_paths_keeps_order(tmp_path):
    paths = write_images(tmp_path, 6)
    images = preprocess_paths(paths, 16, pad_to_square=True, contrast="clahe", progress=False)
    assert images.dtype == np.uint8 and images.shape == (6, 16, 16)
    for path, image in zip(paths, images):
        np.testing.assert_array_equal(image, preprocess_image(read_grayscale(path), 16, contrast="clahe"))


def test_preprocess_paths_names_the_bad_file(tmp_path):
    paths = write_images(tmp_path, 4)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png"):
        preprocess_paths([*paths, tmp_path / "bad.png"], 16, pad_to_square=True, contrast="none", progress=False)


def test_every_bad_file_is_reported_at_once(tmp_path):
    # (It used to stop at the first: fixing one file, rerunning, finding the next, took a run each.)
    paths = write_images(tmp_path, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(preprocessing.ImageErrors) as caught:
        preprocess_paths([tmp_path / "bad.png", *paths, tmp_path / "empty.png"], 8, pad_to_square=True,
                         contrast="none", progress=False)
    assert list(caught.value.failures) == [str(tmp_path / "bad.png"), str(tmp_path / "empty.png")]
    assert str(caught.value).startswith("2 image(s) cannot be decoded:")
    assert "bad.png: cannot be decoded" in str(caught.value) and "empty.png: is empty" in str(caught.value)
    # The good files were preprocessed all the same.
    np.testing.assert_array_equal(caught.value.images[1:4], preprocess_paths(paths, 8, pad_to_square=True,
                                                                            contrast="none", progress=False))


def test_progress_bar_can_be_switched_off(tmp_path, capsys):
    paths = write_images(tmp_path, 2)
    preprocess_paths(paths, 8, pad_to_square=True, contrast="none", progress=False)
    assert capsys.readouterr().err == ""
    preprocess_paths(paths, 8, pad_to_square=True, contrast="none", progress=True)
    assert "preprocessing images" in capsys.readouterr().err


# --- load_images: the cache ------------------------------------------------------------------------


@pytest.fixture
def decode_count(monkeypatch):
    """Counts calls of the decoder, which load_images must skip on a cache hit."""
    calls = []
    original = preprocessing.read_grayscale

    def counting_read_grayscale(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(preprocessing, "read_grayscale", counting_read_grayscale)
    return calls


def test_cache_hit_does_not_decode(tmp_path, decode_count, monkeypatch):
    table = pd.DataFrame({"path": [str(path) for path in write_images(tmp_path, 5)]})
    cache_dir = tmp_path / "cache"
    first = load_images(table, 16, pad_to_square=True, contrast="clahe", cache_dir=cache_dir, progress=False)
    assert len(decode_count) == 5

    def refuse(path):
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(preprocessing, "read_grayscale", refuse)
    second = load_images(table, 16, pad_to_square=True, contrast="clahe", cache_dir=cache_dir, progress=False)
    np.testing.assert_array_equal(first, second)


def test_cache_rows_follow_the_table(tmp_path):
    paths = write_images(tmp_path, 4)
    table = pd.DataFrame({"path": [str(path) for path in reversed(paths)]}, index=[7, 3, 9, 1])
    images = load_images(table, 16, pad_to_square=False, contrast="none", cache_dir=tmp_path / "cache", progress=False)
    for path, image in zip(table["path"], images):
        np.testing.assert_array_equal(image, preprocess_image(read_grayscale(path), 16, pad_to_square=False, contrast="none"))


@pytest.mark.parametrize(
    "change",
    [{"image_size": 20}, {"pad_to_square": False}, {"contrast": "percentile"}, {"hand_crop": "box"}],
)
def test_parameter_change_recomputes(tmp_path, decode_count, change):
    table = pd.DataFrame({"path": [str(path) for path in write_images(tmp_path, 3)]})
    parameters = {"image_size": 16, "pad_to_square": True, "contrast": "clahe"}
    load_images(table, cache_dir=tmp_path / "cache", progress=False, **parameters)
    changed = load_images(table, cache_dir=tmp_path / "cache", progress=False, **{**parameters, **change})
    assert len(decode_count) == 6
    assert changed.shape[1] == change.get("image_size", 16)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_changed_file_recomputes(tmp_path, decode_count):
    paths = write_images(tmp_path, 3)
    table = pd.DataFrame({"path": [str(path) for path in paths]})
    parameters = {"image_size": 16, "pad_to_square": False, "contrast": "none", "progress": False}
    before = load_images(table, cache_dir=tmp_path / "cache", **parameters)
    cv2.imwrite(str(paths[1]), np.full((30, 40), 255, np.uint8))
    after = load_images(table, cache_dir=tmp_path / "cache", **parameters)
    assert len(decode_count) == 6
    assert np.all(after[1] == 255) and not np.array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])


def test_cache_files_are_complete_and_described(tmp_path):
    table = pd.DataFrame({"path": [str(path) for path in write_images(tmp_path, 3)]})
    cache_dir = tmp_path / "cache"
    load_images(table, 16, pad_to_square=True, contrast="clahe", cache_dir=cache_dir, progress=False)
    (npy,) = cache_dir.glob("*.npy")
    description = json.loads(npy.with_suffix(".json").read_text())
    assert description["image_size"] == 16 and description["contrast"] == "clahe"
    assert description["n_images"] == 3 and description["key_sha256"].startswith(npy.stem.split("-")[-1])
    assert sorted(path.name for path in cache_dir.iterdir()) == sorted([npy.name, npy.with_suffix(".json").name])


def test_failed_run_caches_the_good_images_and_the_failures_and_no_temporary_files(tmp_path, monkeypatch):
    paths = write_images(tmp_path, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    table = pd.DataFrame({"path": [str(path) for path in [*paths, tmp_path / "bad.png"]]})
    options = {"pad_to_square": True, "contrast": "clahe", "cache_dir": tmp_path / "cache", "progress": False}
    with pytest.raises(ImageError, match="bad.png"):
        load_images(table, 16, **options)
    names = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert len(names) == 3 and not any(name.startswith(".") for name in names)
    assert sum(name.endswith(".failures.json") for name in names) == 1
    # Asking again fails from the record, and the table without the bad row comes from the cache.
    monkeypatch.setattr(preprocessing, "preprocess_paths", lambda *arguments, **keywords: pytest.fail("decoded"))
    with pytest.raises(preprocessing.ImageErrors, match="bad.png"):
        load_images(table, 16, **options)
    assert load_images(table.iloc[:3], 16, **options).shape == (3, 16, 16)


def test_interrupted_cache_write_leaves_nothing(tmp_path, monkeypatch):
    table = pd.DataFrame({"path": [str(path) for path in write_images(tmp_path, 3)]})
    cache_dir = tmp_path / "cache"

    def save_half_then_fail(path, array):
        Path(path).write_bytes(b"\x93NUMPY half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(preprocessing.np, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        load_images(table, 16, pad_to_square=True, contrast="clahe", cache_dir=cache_dir, progress=False)
    assert list(cache_dir.iterdir()) == []


def test_missing_file_in_table_is_named(tmp_path):
    table = pd.DataFrame({"path": [str(tmp_path / "gone.png")]})
    with pytest.raises(ImageError, match="gone.png: does not exist"):
        load_images(table, 16, pad_to_square=True, contrast="clahe", cache_dir=tmp_path / "cache", progress=False)
