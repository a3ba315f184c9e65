"""The out-of-core image cache (`image_cache: mmap`): the same arrays and the same training as in memory."""

import cv2
import numpy as np
import pandas as pd
import pytest

from utils import preprocessing, study

SIZE = 32


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(12):
        image = np.zeros((80, 60), np.uint8)
        cv2.circle(image, (30, 40), 10 + index, int(rng.integers(80, 255)), -1)
        path = tmp_path / "images" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    return pd.DataFrame({"path": paths, "male": rng.integers(0, 2, 12).astype(bool),
                         "boneage": rng.uniform(0, 228, 12), "split": ["train"] * 8 + ["validation"] * 4})


def load(table, tmp_path, mmap):
    return preprocessing.load_images(table, SIZE, pad_to_square=True, contrast="clahe", cache_dir=tmp_path / "cache",
                                     progress=False, mmap=mmap)


def test_memory_mapped_cache_holds_the_same_images(table, tmp_path):
    first = load(table, tmp_path, mmap=True)  # computed now, then mapped
    assert isinstance(first, np.memmap) and not first.flags.writeable
    in_memory = load(table, tmp_path, mmap=False)
    assert not isinstance(in_memory, np.memmap)
    np.testing.assert_array_equal(first, in_memory)
    np.testing.assert_array_equal(load(table, tmp_path, mmap=True), in_memory)  # read from the cache


def test_split_of_a_mapped_cache_reads_rows_only_when_asked(table, tmp_path):
    mapped, in_memory = load(table, tmp_path, mmap=True), load(table, tmp_path, mmap=False)
    rows, male, age = study.split_arrays(table, mapped, "train")
    expected = study.split_arrays(table, in_memory, "train")
    assert isinstance(rows, preprocessing.CachedRows) and rows.shape == expected[0].shape and len(rows) == 8
    np.testing.assert_array_equal(rows[np.array([5, 0, 3])], expected[0][[5, 0, 3]])
    np.testing.assert_array_equal(np.asarray(rows), expected[0])
    np.testing.assert_array_equal(np.concatenate(list(rows.chunks(3))), expected[0])
    np.testing.assert_array_equal(male, expected[1])
    np.testing.assert_array_equal(age, expected[2])


@pytest.mark.slow
def test_batches_fingerprint_and_training_history_are_those_of_memory(table, tmp_path):
    import keras

    from utils import model, training
    from utils.parameters import load_parameters

    mapped, in_memory = load(table, tmp_path, mmap=True), load(table, tmp_path, mmap=False)
    lazy = {split: study.split_arrays(table, mapped, split) for split in ("train", "validation")}
    eager = {split: study.split_arrays(table, in_memory, split) for split in ("train", "validation")}
    assert training._data_fingerprint(lazy["train"]) == training._data_fingerprint(eager["train"])
    for (x_lazy, y_lazy), (x_eager, y_eager) in zip(
            training.make_dataset(*lazy["train"], batch_size=3, shuffle=True, seed=7),
            training.make_dataset(*eager["train"], batch_size=3, shuffle=True, seed=7)):
        np.testing.assert_array_equal(x_lazy["image"].numpy(), x_eager["image"].numpy())
        np.testing.assert_array_equal(x_lazy["male"].numpy(), x_eager["male"].numpy())
        np.testing.assert_array_equal(y_lazy.numpy(), y_eager.numpy())

    ci = load_parameters("ci")
    histories = []
    for name, splits in (("memory", eager), ("mmap", lazy)):
        keras.utils.set_random_seed(0)
        network = model.build_model(SIZE, target_mean=114.0, target_std=65.0,
                                    **{**ci.network_options(), "widths": (4, 8), "dense_units": 8})
        histories.append(training.train_model(
            network, splits["train"], splits["validation"], checkpoint_dir=tmp_path / name / "checkpoints",
            history_path=tmp_path / name / "history.json", epochs=2, batch_size=4, learning_rate=1e-3, patience=5,
            seed=0, progress=False, training_options=ci.training_options()))
    for key in ("loss", "mae", "val_loss", "val_mae"):
        assert histories[0][key] == histories[1][key], key
