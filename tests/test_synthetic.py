import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from utils import synthetic

SMALL = {"n_images": 6, "image_size": 48}


def generate(folder, seed=7, **overrides):
    arguments = {**SMALL, **overrides}
    return synthetic.generate_dataset(folder, arguments["n_images"], seed=seed, image_size=arguments["image_size"], progress=False)


def dataset_bytes(folder) -> dict:
    """Every file of a generated data set by relative name, manifest excluded."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != synthetic.MANIFEST
    }


def bone_fraction(age_months, male, image_size=96) -> float:
    """Share of the hand silhouette that is ossified, on a noise-free render: a maturity signal."""
    tissue, bone = synthetic.draw_layers(synthetic.maturity_years(age_months, male), image_size)
    return float((bone > 0.5).sum() / (tissue > 0.05).sum())


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    first = dataset_bytes(generate(tmp_path / "first"))
    second = dataset_bytes(generate(tmp_path / "second"))
    other = dataset_bytes(generate(tmp_path / "other", seed=8))
    assert first == second
    assert first[synthetic.LABELS_CSV] != other[synthetic.LABELS_CSV]
    assert all(first[name] != other[name] for name in first if name.endswith(".png"))


def test_kaggle_layout_columns_types_and_ranges(tmp_path):
    folder = generate(tmp_path / "set", n_images=24, image_size=40)
    table = pd.read_csv(folder / synthetic.LABELS_CSV)
    assert list(table.columns) == ["id", "boneage", "male"]
    assert pd.api.types.is_integer_dtype(table["id"]) and table["id"].is_unique
    assert pd.api.types.is_integer_dtype(table["boneage"])
    assert table["boneage"].between(0, synthetic.OLDEST_GENERATED_MONTHS).all()
    assert pd.api.types.is_bool_dtype(table["male"]) and table["male"].nunique() == 2
    for case_id in table["id"]:
        image = cv2.imread(str(folder / synthetic.IMAGE_FOLDER / f"{case_id}.png"), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (40, 40)
    assert len(list((folder / synthetic.IMAGE_FOLDER).iterdir())) == len(table)


def test_second_call_returns_at_once_without_rewriting(tmp_path):
    folder = generate(tmp_path / "set")
    times = {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}
    assert generate(tmp_path / "set") == folder
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()} == times


def test_interrupted_or_different_generation_is_redone(tmp_path):
    folder = generate(tmp_path / "set")
    labels = folder / synthetic.LABELS_CSV
    written = labels.stat().st_mtime_ns
    (folder / synthetic.MANIFEST).unlink()  # what an interruption before the manifest leaves
    generate(folder)
    assert labels.stat().st_mtime_ns != written
    generate(folder, n_images=4)
    assert len(pd.read_csv(labels)) == 4
    assert sorted(path.name for path in (folder / synthetic.IMAGE_FOLDER).iterdir()) == [f"{i}.png" for i in range(1, 5)]


def test_output_does_not_depend_on_worker_processes(tmp_path, monkeypatch):
    serial = dataset_bytes(generate(tmp_path / "serial", n_images=8, image_size=32))
    monkeypatch.setattr(synthetic, "SERIAL_BELOW", 1)
    parallel = dataset_bytes(generate(tmp_path / "parallel", n_images=8, image_size=32))
    assert parallel == serial


def test_render_hand_is_an_8_bit_radiograph():
    image = synthetic.render_hand(120, True, np.random.default_rng(0), image_size=64)
    assert image.dtype == np.uint8 and image.shape == (64, 64) and image.std() > 10


@pytest.mark.parametrize("seed", range(5))
def test_exposure_keeps_bone_brighter_than_soft_tissue_brighter_than_background(seed):
    tissue, bone = synthetic.draw_layers(synthetic.maturity_years(120, True), 64)
    image = synthetic.expose(tissue, bone, np.random.default_rng(seed))
    bone_only, tissue_only, background = bone > 0.8, (tissue > 0.5) & (bone < 0.05), tissue < 0.01
    assert np.median(image[bone_only]) > np.median(image[tissue_only]) > np.median(image[background])


def test_ossified_share_grows_with_age_and_girls_run_ahead():
    ages = np.arange(0, synthetic.OLDEST_GENERATED_MONTHS + 1, 12)
    boys = [bone_fraction(age, True) for age in ages]
    girls = [bone_fraction(age, False) for age in ages]
    assert spearmanr(ages, boys).statistic > 0.8
    assert spearmanr(ages, girls).statistic > 0.8
    growing = (ages >= 12) & (ages <= 144)
    assert all(girl > boy for girl, boy in zip(np.array(girls)[growing], np.array(boys)[growing]))


def test_carpal_centres_appear_in_order():
    appeared = lambda years: [carpal.name for carpal in synthetic.CARPALS if carpal.appear <= years]  # noqa: E731
    assert appeared(0.5) == ["capitate", "hamate"]
    assert appeared(4.0) == ["capitate", "hamate", "triquetrum", "lunate"]
    assert "pisiform" not in appeared(9.0) and "pisiform" in appeared(12.0)


def test_ages_resemble_rsna_and_labels_are_integer_months():
    rng = np.random.default_rng(0)
    ages = np.array([synthetic.sample_age_months(rng) for _ in range(3000)])
    assert ages.min() >= 0 and ages.max() <= synthetic.OLDEST_GENERATED_MONTHS
    assert 0.75 < np.mean((ages >= 60) & (ages <= 204)) < 0.97
    assert 0.005 < np.mean(ages < 24) < 0.05


@pytest.mark.parametrize("arguments", [{"n_images": 0}, {"image_size": 16}])
def test_invalid_sizes_are_refused(tmp_path, arguments):
    with pytest.raises(ValueError, match="n_images|image_size"):
        generate(tmp_path / "set", **arguments)
