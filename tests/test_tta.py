"""Test-time augmentation (utils.preprocessing): the views of each mode, the old booleans, the averaging."""

import numpy as np
import pytest

from utils.parameters import TTA_MODES, normalise_tta
from utils.preprocessing import tta_average, tta_views


def images_of(n=2, side=40) -> np.ndarray:
    # | 1: no pixel is 0, so the black fill of a shift is told apart from the image.
    return np.arange(n * side * side, dtype=np.uint8).reshape(n, side, side) | 1


def test_none_is_the_images_alone():
    images = images_of()
    views = tta_views(images, "none")
    assert len(views) == 1 and views[0] is images


def test_shift_moves_sideways_by_3_percent_with_black_fill():
    images = images_of(side=100)  # 3 px
    original, right, left = tta_views(images, "shift")
    assert original is images
    assert (right[:, :, 3:] == images[:, :, :-3]).all() and (right[:, :, :3] == 0).all()
    assert (left[:, :, :-3] == images[:, :, 3:]).all() and (left[:, :, -3:] == 0).all()


def test_flip_is_the_mirror_image():
    images = images_of()
    original, mirrored = tta_views(images, "flip")
    assert original is images
    np.testing.assert_array_equal(mirrored, images[:, :, ::-1])
    np.testing.assert_array_equal(mirrored[:, :, 0], images[:, :, -1])
    assert not np.array_equal(mirrored, images)


def test_shift_flip_is_the_three_shift_views_and_their_mirrors():
    images = images_of()
    views = tta_views(images, "shift_flip")
    assert len(views) == 6
    shifted = tta_views(images, "shift")
    for view, expected in zip(views, [*shifted, *(view[:, :, ::-1] for view in shifted)]):
        np.testing.assert_array_equal(view, expected)
    assert all(view.shape == images.shape and view.dtype == np.uint8 for view in views)


def test_every_mode_has_its_number_of_views():
    assert {mode: len(tta_views(images_of(), mode)) for mode in TTA_MODES} == {
        "none": 1, "shift": 3, "flip": 2, "shift_flip": 6,
    }


@pytest.mark.parametrize("mode", ["mirror", "", None, 1, "Shift"])
def test_unknown_mode_is_refused_naming_the_choices(mode):
    with pytest.raises(ValueError, match="expected one of none, shift, flip, shift_flip"):
        tta_views(images_of(), mode)


def test_the_old_booleans_mean_shift_and_none():
    assert normalise_tta(True) == "shift" and normalise_tta(False) == "none"
    assert normalise_tta(np.bool_(True)) == "shift"
    assert [normalise_tta(mode) for mode in TTA_MODES] == list(TTA_MODES)
    assert len(tta_views(images_of(), True)) == 3 and len(tta_views(images_of(), False)) == 1


def test_tta_average_means_the_views_and_clips_to_the_age_range():
    images = images_of(n=3)
    male = np.array([0, 1, 0])
    seen = []

    def predict(view, male_flags):
        seen.append(view)
        assert male_flags is male
        return view.reshape(len(view), -1)[:, 0].astype(np.float32)  # the first pixel of each image

    averaged = tta_average(predict, images, male, "flip")
    assert len(seen) == 2
    np.testing.assert_allclose(averaged, (images[:, 0, 0].astype(float) + images[:, 0, -1]) / 2)
    too_old = tta_average(lambda view, _: np.full(len(view), 500.0), images, male, "shift")
    np.testing.assert_array_equal(too_old, 240.0)
