"""Image-quality flags: normal hands pass, blank/noise/inverted/turned/non-hand images are flagged."""

import json

import cv2
import numpy as np
import pytest

from utils import config
from utils.quality import QualityReference, image_features

IMAGE_SIZE = 64
RSNA_100 = config.RSNA100_DIR


def draw_hand(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A hand-like radiograph: palm, four fingers and a thumb at the top, forearm at the bottom."""
    side = size * 4  # drawn at 4x and shrunk, for smooth edges
    canvas = np.full((side, side), rng.uniform(0, 30), np.float32)
    tissue = rng.uniform(110, 170)
    bone = min(tissue + rng.uniform(40, 80), 255.0)

    def pixels(fraction: float) -> int:
        return int(round(fraction * side))

    centre_x, centre_y = 0.5, 0.62
    cv2.rectangle(canvas, (pixels(centre_x - 0.15), pixels(centre_y)), (pixels(centre_x + 0.15), side), tissue, -1)
    for offset in (-0.07, 0.06):  # radius and ulna
        cv2.rectangle(canvas, (pixels(centre_x + offset - 0.035), pixels(centre_y + 0.12)),
                      (pixels(centre_x + offset + 0.035), side), bone, -1)
    cv2.ellipse(canvas, (pixels(centre_x), pixels(centre_y)), (pixels(0.21), pixels(0.17)), 0, 0, 360, tissue, -1)
    for index, finger_x in enumerate(np.linspace(centre_x - 0.15, centre_x + 0.14, 4)):
        length = rng.uniform(0.24, 0.32) * (1.0 if index in (1, 2) else 0.85)
        top = centre_y - 0.12 - length
        cv2.rectangle(canvas, (pixels(finger_x - 0.035), pixels(top)),
                      (pixels(finger_x + 0.035), pixels(centre_y - 0.05)), tissue, -1)
        for phalanx in range(3):
            start = top + 0.01 + phalanx * length / 3
            cv2.rectangle(canvas, (pixels(finger_x - 0.015), pixels(start)),
                          (pixels(finger_x + 0.015), pixels(start + length / 3 - 0.02)), bone, -1)
    thumb = np.array([[0.1, 0.02], [0.2, 0.06], [0.36, -0.16], [0.29, -0.22]]) + [centre_x, centre_y]
    cv2.fillConvexPoly(canvas, cv2.convexHull((thumb * side).astype(np.int32)), tissue)
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), rng.uniform(-10, 10), rng.uniform(0.9, 1.1))
    matrix[:, 2] += rng.uniform(-0.05, 0.05, 2) * side
    canvas = cv2.warpAffine(canvas, matrix, (side, side), borderMode=cv2.BORDER_REPLICATE)
    canvas = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    canvas = cv2.GaussianBlur(canvas, (3, 3), 0.7) + rng.normal(0, 4, canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def text_page(rng: np.random.Generator, size: int) -> np.ndarray:
    page = np.full((size, size), rng.integers(200, 250), np.uint8)
    for row in range(size // 8, size - 4, max(size // 10, 4)):
        words = "".join(rng.choice(list("abcdefghij klmnop"), 12))
        cv2.putText(page, words, (2, row), cv2.FONT_HERSHEY_SIMPLEX, size / 300, 20, 1)
    return np.clip(page + rng.normal(0, 3, page.shape), 0, 255).astype(np.uint8)


def random_rectangles(rng: np.random.Generator, size: int) -> np.ndarray:
    canvas = np.full((size, size), rng.uniform(0, 40), np.float32)
    for _ in range(6):
        x, y = rng.integers(0, size, 2)
        width, height = rng.integers(size // 8, size // 2, 2)
        cv2.rectangle(canvas, (int(x), int(y)), (int(x + width), int(y + height)), float(rng.uniform(60, 255)), -1)
    return np.clip(canvas + rng.normal(0, 3, canvas.shape), 0, 255).astype(np.uint8)


def chest_film(rng: np.random.Generator, size: int) -> np.ndarray:
    """A bright trunk with two dark lungs and a spine."""
    canvas = np.full((size, size), rng.uniform(0, 30), np.float32)
    centre = size // 2
    cv2.ellipse(canvas, (centre, int(centre * 1.05)), (int(size * 0.45), int(size * 0.48)), 0, 0, 360,
                float(rng.uniform(150, 200)), -1)
    for side in (-1, 1):
        cv2.ellipse(canvas, (int(centre + side * size * 0.2), centre), (int(size * 0.15), int(size * 0.3)), 0, 0, 360,
                    float(rng.uniform(40, 80)), -1)
    spine = float(rng.uniform(200, 240))
    cv2.rectangle(canvas, (int(centre - size * 0.04), 0), (int(centre + size * 0.04), size), spine, -1)
    canvas = cv2.GaussianBlur(canvas, (0, 0), size / 40)
    return np.clip(canvas + rng.normal(0, 4, canvas.shape), 0, 255).astype(np.uint8)


def anomalies(rng: np.random.Generator, hands: np.ndarray) -> dict[str, np.ndarray]:
    """Images unlike the training data, as many as `hands`, several made from those hands."""
    count, size = len(hands), hands.shape[1]
    return {
        "blank": np.stack([np.full((size, size), rng.integers(0, 256), np.uint8) for _ in range(count)]),
        "noise": rng.integers(0, 256, (count, size, size)).astype(np.uint8),
        "inverted": 255 - hands,
        "rotated": np.stack([np.rot90(hand, rng.choice([1, 3])) for hand in hands]),
        "text": np.stack([text_page(rng, size) for _ in range(count)]),
        "rectangles": np.stack([random_rectangles(rng, size) for _ in range(count)]),
        "chest": np.stack([chest_film(rng, size) for _ in range(count)]),
    }


@pytest.fixture(scope="module")
def hands():
    rng = np.random.default_rng(7)
    return {"train": np.stack([draw_hand(rng) for _ in range(300)]),
            "held_out": np.stack([draw_hand(rng) for _ in range(200)])}


@pytest.fixture(scope="module")
def reference(hands):
    return QualityReference.fit(hands["train"], percentile=99.0)


@pytest.fixture(scope="module")
def unusual_images(hands):
    return anomalies(np.random.default_rng(8), hands["held_out"][:60])


def test_held_out_normal_images_are_mostly_ok(reference, hands):
    flags = reference.flag(hands["held_out"])
    false_flag_rate = np.mean(flags != "ok")
    assert false_flag_rate <= 0.05, f"{false_flag_rate:.1%} of normal hands flagged: {np.unique(flags)}"


@pytest.mark.parametrize("kind", ["blank", "noise", "inverted", "rotated", "text", "rectangles", "chest"])
def test_unusual_images_are_flagged(reference, unusual_images, kind):
    flags = reference.flag(unusual_images[kind])
    detection_rate = np.mean(flags != "ok")
    assert detection_rate >= 0.9, f"{kind}: only {detection_rate:.0%} flagged"


@pytest.mark.parametrize("kind", ["blank", "inverted", "rotated"])
def test_flag_names_the_cause(reference, unusual_images, kind):
    flags = reference.flag(unusual_images[kind])
    assert np.mean(flags == kind) >= 0.9, dict(zip(*np.unique(flags, return_counts=True)))


def test_non_hands_are_not_called_inverted_or_rotated(reference, unusual_images):
    flags = np.concatenate([reference.flag(unusual_images[kind]) for kind in ("noise", "text", "chest")])
    assert set(flags) == {"unusual"}


def test_scores_are_higher_for_unusual_images(reference, hands, unusual_images):
    normal = reference.score(hands["held_out"])
    assert normal.shape == (200,) and np.all(np.isfinite(normal))
    assert np.median(normal) < 1.0
    for kind, images in unusual_images.items():
        assert np.median(reference.score(images)) > 2.0 * np.percentile(normal, 95), kind


def test_round_trip_through_json_gives_the_same_scores(reference, hands, unusual_images):
    restored = QualityReference.from_dict(json.loads(json.dumps(reference.to_dict())))
    images = np.concatenate([hands["held_out"][:50], unusual_images["rotated"][:10]])
    np.testing.assert_array_equal(restored.score(images), reference.score(images))
    np.testing.assert_array_equal(restored.flag(images), reference.flag(images))


def test_lower_percentile_flags_more_normal_images(hands):
    strict = QualityReference.fit(hands["train"], percentile=80.0)
    false_flag_rate = np.mean(strict.flag(hands["held_out"]) != "ok")
    assert 0.08 <= false_flag_rate <= 0.35


def test_fit_is_deterministic(hands):
    first = QualityReference.fit(hands["train"][:100]).to_dict()
    second = QualityReference.fit(hands["train"][:100]).to_dict()
    assert first == second


def test_images_of_another_size_are_refused(reference, hands):
    larger = np.stack([cv2.resize(image, (160, 160)) for image in hands["held_out"][:4]])
    with pytest.raises(ValueError, match="64x64 images, got 160x160"):
        reference.flag(larger)


def test_empty_batches_and_feature_shapes(reference, hands):
    assert reference.score(np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)).shape == (0,)
    assert reference.flag(np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)).shape == (0,)
    assert {name: values.shape for name, values in image_features(hands["train"][:3]).items()} == {
        "layout": (3, 64), "statistics": (3, 20)}


def test_bad_inputs_are_refused_with_a_clear_message(reference, hands):
    with pytest.raises(ValueError, match="shape"):
        reference.score(hands["train"][0])
    with pytest.raises(ValueError, match="at least"):
        QualityReference.fit(hands["train"][:5])
    with pytest.raises(ValueError, match="percentile"):
        QualityReference.fit(hands["train"], percentile=100.0)
    with pytest.raises(ValueError, match="refit"):
        QualityReference.from_dict({**reference.to_dict(), "method": "something-else"})


@pytest.mark.slow
def test_real_radiographs_when_available():
    """RSNA thumbnails vary far more than drawn hands (exposure, frames, labels, tilted hands)."""
    folder = RSNA_100 / "boneage-training-dataset"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    paths = sorted(folder.glob("*.png"))[:1300]
    images = np.stack([cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in paths])
    reference = QualityReference.fit(images[:1000])
    held_out = images[1000:]
    assert np.mean(reference.flag(held_out) != "ok") <= 0.05
    unusual = anomalies(np.random.default_rng(9), held_out[:100])
    minimum_rates = {"blank": 0.95, "noise": 0.95, "inverted": 0.8, "rotated": 0.75, "text": 0.9,
                     "rectangles": 0.75, "chest": 0.9}
    rates = {kind: float(np.mean(reference.flag(unusual[kind]) != "ok")) for kind in minimum_rates}
    assert all(rates[kind] >= minimum_rates[kind] for kind in rates), rates


def test_assess_gives_the_same_scores_and_flags_as_the_separate_calls():
    rng = np.random.default_rng(5)
    reference = QualityReference.fit(np.stack([draw_hand(rng) for _ in range(120)]))
    hands = np.stack([draw_hand(rng) for _ in range(15)])
    mixed = np.concatenate([hands[:10], 255 - hands[10:], np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)])
    scores, flags = reference.assess(mixed)
    np.testing.assert_array_equal(scores, reference.score(mixed))
    np.testing.assert_array_equal(flags, reference.flag(mixed))
    assert {"ok", "blank"} <= set(flags)
