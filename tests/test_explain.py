"""Grad-CAM: shapes, range, determinism, and that the map points where the model looks."""

import keras
import matplotlib.pyplot as plt
import numpy as np
import pytest
from keras import layers

from utils import explain
from utils.model import build_model
from utils.parameters import load_parameters

SIZE = 32
HALF = SIZE // 2


def tiny_model(conv_kernel: int = 3, filters: int = 4, augment: bool = False) -> keras.Model:
    """The project's model contract in miniature: raw pixels and sex in, months out."""
    image = keras.Input((SIZE, SIZE, 1), name="image")
    male = keras.Input((1,), name="male")
    x = image
    if augment:
        x = layers.RandomFlip("horizontal", name="augment_flip")(x)
        x = layers.RandomTranslation(0.1, 0.1, name="augment_shift")(x)
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    x = layers.Conv2D(filters, conv_kernel, padding="same", activation="relu", name="last_conv")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(1, name="image_score")(x)
    x = layers.Concatenate(name="with_sex")([x, male])
    months = layers.Dense(1, name="months")(x)
    return keras.Model({"image": image, "male": male}, months)


def quadrant_mass(heatmap: np.ndarray) -> dict[str, float]:
    total = max(float(heatmap.sum()), 1e-12)
    return {
        "top_left": float(heatmap[:HALF, :HALF].sum()) / total,
        "top_right": float(heatmap[:HALF, HALF:].sum()) / total,
        "bottom_left": float(heatmap[HALF:, :HALF].sum()) / total,
        "bottom_right": float(heatmap[HALF:, HALF:].sum()) / total,
    }


def two_squares(bright: int = 255, dim: int = 120) -> np.ndarray:
    """A bright square in the top-right quadrant and a dimmer one in the bottom-left."""
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[4:12, 20:28] = bright
    image[20:28, 4:12] = dim
    return image


def bright_square_model(sign: float = 1.0) -> keras.Model:
    """Weights set by hand: channel 0 fires on the bright square only, channel 1 on both squares,
    and the predicted age depends on channel 0 alone (times `sign`)."""
    model = tiny_model(conv_kernel=1, filters=2)
    model.get_layer("last_conv").set_weights([np.array([[[[1.0, 1.0]]]]), np.array([-0.6, -0.2])])
    model.get_layer("image_score").set_weights([np.array([[sign], [0.0]]), np.array([0.0])])
    model.get_layer("months").set_weights([np.array([[100.0], [5.0]]), np.array([60.0])])
    return model


@pytest.fixture(scope="module")
def random_model():
    keras.utils.set_random_seed(1)
    return tiny_model(augment=True)


@pytest.fixture(scope="module")
def noisy_images():
    return np.random.default_rng(2).integers(0, 256, (5, SIZE, SIZE)).astype(np.uint8)


def test_heatmaps_have_the_image_shape_and_range(random_model, noisy_images):
    heatmaps = explain.grad_cam(random_model, noisy_images, np.array([0, 1, 0, 1, 1]))
    assert heatmaps.shape == (5, SIZE, SIZE) and heatmaps.dtype == np.float32
    assert np.all(np.isfinite(heatmaps))
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    assert np.allclose(heatmaps.max(axis=(1, 2)), 1.0)  # each non-empty map is scaled to peak at 1


def test_heatmaps_are_deterministic_despite_augmentation_layers(random_model, noisy_images):
    male = np.array([1, 0, 1, 0, 0])
    first = explain.grad_cam(random_model, noisy_images, male)
    second = explain.grad_cam(random_model, noisy_images, male, batch_size=2)
    np.testing.assert_allclose(first, second, atol=1e-5)


def test_the_conv_layer_is_found_by_name_or_position(random_model):
    assert explain.find_conv_layer(random_model) == "last_conv"
    image = keras.Input((SIZE, SIZE, 1), name="image")
    male = keras.Input((1,), name="male")
    x = layers.Conv2D(4, 3, name="early")(image)
    x = layers.Conv2D(4, 3, name="late")(x)
    x = layers.Concatenate()([layers.GlobalMaxPooling2D()(x), male])
    unnamed = keras.Model({"image": image, "male": male}, layers.Dense(1)(x))
    assert explain.find_conv_layer(unnamed) == "late"
    flat = keras.Input((3,), name="image")
    with pytest.raises(ValueError, match="4-D"):
        explain.find_conv_layer(keras.Model(flat, layers.Dense(1)(flat)))


def test_the_map_follows_the_gradient_not_the_activation():
    heatmap = explain.grad_cam(bright_square_model(), two_squares()[np.newaxis], np.array([1]))[0]
    mass = quadrant_mass(heatmap)
    # Channel 1 is active on the dim square too, but the age does not depend on it.
    assert mass["top_right"] > 0.9, mass
    assert mass["bottom_left"] < 0.02, mass
    assert heatmap[8, 24] == pytest.approx(1.0, abs=0.05)


def test_an_all_negative_map_is_zeros_not_nan():
    # The bright square lowers the predicted age: nothing raises it, so the map is empty.
    heatmap = explain.grad_cam(bright_square_model(sign=-1.0), two_squares()[np.newaxis], np.array([0]))
    assert np.all(heatmap == 0.0)


def square_in_quadrant(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark noisy images with one 8x8 square of random brightness in a random quadrant."""
    images = rng.integers(0, 20, (count, SIZE, SIZE)).astype(np.uint8)
    brightness = rng.uniform(60, 255, count)
    quadrants = rng.integers(0, 4, count)
    for image, value, quadrant in zip(images, brightness, quadrants):
        top = (quadrant // 2) * HALF + rng.integers(2, HALF - 10)
        left = (quadrant % 2) * HALF + rng.integers(2, HALF - 10)
        image[top : top + 8, left : left + 8] = int(value)
    return images, brightness, quadrants


@pytest.mark.slow
def test_a_trained_model_looks_at_the_square_that_sets_the_target():
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    images, brightness, _ = square_in_quadrant(rng, 256)
    model = tiny_model(filters=8)  # with 4, an unlucky start can leave every filter dead
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    inputs = {"image": images[..., np.newaxis].astype(np.float32), "male": np.zeros((256, 1), np.float32)}
    model.fit(inputs, brightness / 100.0, epochs=40, batch_size=32, verbose=0)

    test_images, _, test_quadrants = square_in_quadrant(rng, 40)
    heatmaps = explain.grad_cam(model, test_images, np.zeros(40))
    names = ["top_left", "top_right", "bottom_left", "bottom_right"]
    masses = [quadrant_mass(heatmap) for heatmap in heatmaps]
    found = [max(mass, key=mass.get) == names[quadrant] for mass, quadrant in zip(masses, test_quadrants)]
    assert np.mean(found) >= 0.9
    assert np.mean([mass[names[quadrant]] for mass, quadrant in zip(masses, test_quadrants)]) > 0.5


@pytest.mark.parametrize("architecture", ["ours", "seed_baseline"])
def test_the_project_models_work(architecture, noisy_images):
    keras.utils.set_random_seed(4)
    options = load_parameters("ci").network_options() if architecture == "ours" else {}
    model = build_model(SIZE, architecture=architecture, target_mean=120.0, target_std=40.0, **options)
    heatmaps = explain.grad_cam(model, noisy_images, np.array([0, 1, 0, 1, 0]))
    assert heatmaps.shape == (5, SIZE, SIZE) and np.all(np.isfinite(heatmaps))


def test_bad_inputs_are_refused(random_model, noisy_images):
    with pytest.raises(ValueError):
        explain.grad_cam(random_model, noisy_images, np.zeros(3))
    with pytest.raises(ValueError):
        explain.grad_cam(random_model, noisy_images[0], np.zeros(1))


def test_overlay_blends_the_jet_colours_over_the_radiograph():
    image = np.full((SIZE, SIZE), 100, np.uint8)
    heatmap = np.zeros((SIZE, SIZE), np.float32)
    heatmap[:HALF] = 1.0
    blended = explain.overlay(image, heatmap)
    assert blended.shape == (SIZE, SIZE, 3) and blended.dtype == np.uint8
    hot, cold = blended[0, 0].astype(int), blended[-1, -1].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # RGB: red where the map is high, blue where low
    np.testing.assert_array_equal(explain.overlay(image, heatmap, alpha=0.0), np.stack([image] * 3, axis=-1))
    with pytest.raises(ValueError, match="same"):
        explain.overlay(image, heatmap[:HALF])
    with pytest.raises(ValueError, match="alpha"):
        explain.overlay(image, heatmap, alpha=1.5)


def test_gradcam_figure_shows_each_radiograph_beside_its_overlay(noisy_images):
    heatmaps = np.random.default_rng(5).uniform(0, 1, noisy_images.shape).astype(np.float32)
    titles = [f"true 120 mo · pred {130 + index} mo" for index in range(5)]
    figure = explain.gradcam_figure(noisy_images, heatmaps, titles, ncols=3)
    try:
        images_drawn = [axes for axes in figure.get_axes() if axes.get_images()]
        assert len(images_drawn) == 10
        shown_titles = [subfigure._suptitle.get_text() for subfigure in figure.subfigs if subfigure._suptitle]
        assert shown_titles == titles
        with pytest.raises(ValueError, match="titles"):
            explain.gradcam_figure(noisy_images, heatmaps, titles[:2])
    finally:
        plt.close(figure)


# --- maps that show where the model looks, whichever way it pushes the age ---------------------


def test_a_map_of_a_prediction_the_region_lowers_is_not_blank_when_signed():
    # The classic map of this prediction is empty (test above); the signed one is not.
    image = two_squares()[np.newaxis]
    signed = explain.grad_cam(bright_square_model(sign=-1.0), image, np.array([0]), mode="signed")[0]
    assert signed.min() == pytest.approx(-1.0, abs=0.05) and signed.max() <= 0.0 + 1e-6
    assert quadrant_mass(np.abs(signed))["top_right"] > 0.9
    absolute = explain.grad_cam(bright_square_model(sign=-1.0), image, np.array([0]), mode="absolute")[0]
    np.testing.assert_allclose(absolute, np.abs(signed), atol=1e-6)
    # Where the region raises the age, the signed map is the classic one.
    raising = explain.grad_cam(bright_square_model(), image, np.array([1]), mode="signed")[0]
    classic = explain.grad_cam(bright_square_model(), image, np.array([1]))[0]
    np.testing.assert_allclose(np.maximum(raising, 0), classic, atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        explain.grad_cam(bright_square_model(), image, np.array([1]), mode="both")


def test_signed_maps_of_the_projects_model_on_hand_radiographs_are_not_blank():
    from utils import synthetic
    from utils.preprocessing import preprocess_image

    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    ages = [8, 30, 90, 150, 200]  # one hand per age band, the young ones included
    images = np.stack([preprocess_image(synthetic.render_hand(age, age % 2 == 0, rng, image_size=96), SIZE)
                       for age in ages])
    model = build_model(SIZE, target_mean=120.0, target_std=40.0, **load_parameters("ci").network_options())
    heatmaps = explain.grad_cam(model, images, np.array([0, 1, 0, 1, 0]), mode="signed")
    assert heatmaps.shape == (5, SIZE, SIZE) and np.all(np.isfinite(heatmaps))
    peaks = np.abs(heatmaps).max(axis=(1, 2))
    np.testing.assert_allclose(peaks, 1.0, atol=1e-5)  # every map has something to show
    assert np.all(np.mean(np.abs(heatmaps) > 0.1, axis=(1, 2)) > 0.02)


def test_signed_overlay_is_red_where_the_age_rises_and_blue_where_it_falls():
    image = np.full((SIZE, SIZE), 100, np.uint8)
    heatmap = np.zeros((SIZE, SIZE), np.float32)
    heatmap[:HALF] = 1.0
    heatmap[HALF:, :HALF] = -1.0
    blended = explain.overlay_signed(image, heatmap).astype(int)
    raised, lowered, neutral = blended[0, 0], blended[-1, 0], blended[-1, -1]
    assert raised[0] > raised[2] and lowered[2] > lowered[0]
    np.testing.assert_array_equal(neutral, [100, 100, 100])  # zero: the radiograph unchanged


def test_signed_gradcam_figure_has_a_legend_for_both_directions(noisy_images):
    heatmaps = np.random.default_rng(5).uniform(-1, 1, noisy_images.shape).astype(np.float32)
    figure = explain.gradcam_figure(noisy_images, heatmaps, [f"band {i}\ntrue 1 · pred 2" for i in range(5)], ncols=3)
    try:
        labels = [text.get_text() for text in figure.legends[0].get_texts()]
        assert labels == ["raises the predicted age", "lowers the predicted age"]
    finally:
        plt.close(figure)
