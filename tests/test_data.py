"""utils.data: every layout loads, every bad input is reported with its file, line and problem."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pandas as pd
import pytest

from utils import config, data

SHARED_DATA = config.SHARED_DATA_DIR
FRACTIONS = {"train": 0.7, "validation": 0.1, "calibration": 0.05, "test": 0.15}


def write_image(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 6), value, dtype=np.uint8))
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_xlsx(path: Path, rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook = openpyxl.Workbook()
    for row in rows:
        workbook.active.append(row)
    workbook.save(path)
    return path


def kaggle_folder(folder: Path, lines: list[str], images=None) -> Path:
    """A Kaggle training table (lines after the header) and a PNG for each id in `images`."""
    write_lines(folder / "boneage-training-dataset.csv", ["id,boneage,male", *lines])
    if images is None:
        images = [line.split(",")[0] for line in lines]
    for image_id in images:
        write_image(folder / "boneage-training-dataset" / f"{image_id}.png")
    return folder


GOOD_LINES = ["1,10,True", "2,30,False", "3,100,True", "4,200,False"]


@pytest.fixture
def good_folder(tmp_path):
    return kaggle_folder(tmp_path / "kaggle", GOOD_LINES)


def load_error(folder, **options) -> data.DatasetError:
    with pytest.raises(data.DatasetError) as caught:
        data.load_dataset(folder, **options)
    return caught.value


# --- the shared real data -------------------------------------------------------------------


def shared_folder(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


def assert_table_types(table: pd.DataFrame) -> None:
    assert list(table.columns) == ["id", "path", "boneage", "male", "split"]
    assert pd.api.types.is_string_dtype(table["id"])
    assert pd.api.types.is_string_dtype(table["path"])
    assert pd.api.types.is_string_dtype(table["split"])
    assert table["boneage"].dtype == np.float64
    assert table["male"].dtype == bool
    assert table["id"].is_unique
    assert all(Path(path).is_absolute() for path in table["path"])


@pytest.mark.slow
def test_loads_rsna_bone_age_100():
    table = data.load_dataset(shared_folder("rsna-bone-age-100"))
    assert len(table) == 10_617
    assert_table_types(table)
    assert set(table["split"]) == {"train"}
    assert table["boneage"].between(1, 228).all()
    assert Path(table["path"].iloc[0]).is_file()
    assert Path(table["path"].iloc[0]).name == f"{table['id'].iloc[0]}.png"


def test_loads_rsna_fullres_sample():
    table = data.load_dataset(shared_folder("rsna-fullres-sample"))
    assert len(table) == 60
    assert_table_types(table)
    assert table["split"].value_counts().to_dict() == {"train": 40, "test": 20}
    assert table["boneage"].notna().all()
    # The test ground truth is a mean of six readers: fractional months.
    assert (table.loc[table["split"] == "test", "boneage"] % 1 != 0).any()


# --- the Kaggle layout ----------------------------------------------------------------------


def test_kaggle_layout(good_folder):
    table = data.load_dataset(good_folder)
    assert_table_types(table)
    assert table["id"].tolist() == ["1", "2", "3", "4"]
    assert table["boneage"].tolist() == [10.0, 30.0, 100.0, 200.0]
    assert table["male"].tolist() == [True, False, True, False]
    assert table["path"].iloc[2] == str(good_folder / "boneage-training-dataset" / "3.png")


def test_kaggle_test_table_without_ages(good_folder):
    write_lines(good_folder / "boneage-test-dataset.csv", ["Case ID,Sex", "50,M", "51,f"])
    for image_id in ("50", "51"):
        write_image(good_folder / "boneage-test-dataset" / f"{image_id}.png")
    table = data.load_dataset(good_folder)
    test = table[table["split"] == "test"]
    assert test["id"].tolist() == ["50", "51"]
    assert test["boneage"].isna().all()
    assert test["male"].tolist() == [True, False]
    assert table.loc[table["split"] == "train", "boneage"].notna().all()


def test_kaggle_images_in_a_nested_folder(tmp_path):
    # Kaggle's zip unpacks to boneage-training-dataset/boneage-training-dataset/<id>.png
    folder = tmp_path / "kaggle"
    write_lines(folder / "boneage-training-dataset.csv", ["id,boneage,male", "7,12,false"])
    write_image(folder / "boneage-training-dataset" / "boneage-training-dataset" / "7.png")
    assert data.load_dataset(folder)["path"].iloc[0].endswith("boneage-training-dataset/7.png")


# --- bad input ------------------------------------------------------------------------------


def corrupt(path: Path) -> None:
    path.write_bytes(b"this is not an image")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-12])  # a PNG without its end chunk


def damage_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:8] + b"\x00" * 40)  # PNG signature, then no valid header


@pytest.mark.parametrize(
    "line, damage, problem",
    [
        ("5,50,True", lambda folder: (folder / "boneage-training-dataset" / "5.png").unlink(), "image missing"),
        ("5,50,True", lambda folder: corrupt(folder / "boneage-training-dataset" / "5.png"), "not a PNG, JPEG"),
        ("5,50,True", lambda folder: truncate(folder / "boneage-training-dataset" / "5.png"), "end marker missing"),
        ("5,50,True", lambda folder: damage_header(folder / "boneage-training-dataset" / "5.png"), "cannot read the header"),
        ("5,,True", None, "bone age missing"),
        ("5,nan,True", None, "bone age missing"),
        ("5,ten,True", None, "bone age 'ten' is not a number"),
        ("5,250,True", None, "outside 0-240"),
        ("5,-1,True", None, "outside 0-240"),
        ("5,50,yes", None, "unknown sex 'yes'"),
        ("5,50,", None, "sex missing"),
        ("1,50,True", None, "duplicate id 1"),
    ],
)
def test_bad_row_is_named_by_file_line_and_problem(tmp_path, line, damage, problem):
    folder = kaggle_folder(tmp_path / "kaggle", [*GOOD_LINES, line], images=["1", "2", "3", "4", "5"])
    if damage:
        damage(folder)
    error = load_error(folder)
    message = str(error)
    assert str(folder / "boneage-training-dataset.csv") in message
    assert "line 6" in message  # header + 4 good lines + this one
    assert problem in message
    assert len(error.problems) == 1


def test_all_problems_are_reported_at_once(tmp_path):
    lines = [*GOOD_LINES, "5,50,x", "6,999,True", "7,20,False"]
    folder = kaggle_folder(tmp_path / "kaggle", lines, images=["1", "2", "3", "4", "5", "6"])
    error = load_error(folder)
    assert [problem.line for problem in error.problems] == [6, 7, 8]
    for expected in ("line 6 (id 5): unknown sex", "line 7 (id 6): bone age 999", "line 8 (id 7): image missing"):
        assert expected in str(error)


def test_truncated_jpeg_is_reported(tmp_path):
    folder = tmp_path / "mine"
    image = write_image(folder / "a.jpg")
    image.write_bytes(image.read_bytes()[:-2])
    write_lines(folder / "labels.csv", ["path,boneage,male", "a.jpg,10,M"])
    assert f"{folder / 'labels.csv'}, line 2 (id a): image unreadable: {image}: JPEG end marker missing" in str(
        load_error(folder)
    )


def test_many_problems_are_summarised(tmp_path):
    folder = kaggle_folder(tmp_path / "kaggle", [f"{index},50,True" for index in range(30)], images=[])
    message = str(load_error(folder))
    assert "30 problem(s)" in message
    assert "and 10 more" in message


def test_one_row_lists_all_its_reasons(tmp_path):
    folder = kaggle_folder(tmp_path / "kaggle", ["9,300,maybe"], images=[])
    reason = load_error(folder).problems[0].reason
    assert "image missing" in reason and "outside 0-240" in reason and "unknown sex" in reason


def test_missing_columns_are_listed_and_always_raise(tmp_path):
    folder = tmp_path / "kaggle"
    write_lines(folder / "boneage-training-dataset.csv", ["id,age_in_years,male", "1,3,True"])
    write_image(folder / "boneage-training-dataset" / "1.png")
    message = str(load_error(folder, drop_invalid=True, dropped_rows_csv=tmp_path / "dropped.csv"))
    assert str(folder / "boneage-training-dataset.csv") in message
    assert "required column missing" in message
    assert "Bone Age (months)" in message  # what was expected
    assert "the file has: id, age_in_years, male" in message  # what was found


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda folder: folder.mkdir(), "the folder is empty"),
        (lambda folder: write_image(folder / "1.png"), "no label table found"),
        (lambda folder: write_lines(folder / "a.csv", ["x"]) and write_lines(folder / "b.csv", ["x"]), "several tables"),
        (lambda folder: (folder.mkdir(), (folder / "boneage-training-dataset.csv").write_text("")), "the file is empty"),
        (lambda folder: write_lines(folder / "boneage-training-dataset.csv", ["id,boneage,male"]), "header but no rows"),
        (lambda folder: None, "no such folder"),
    ],
)
def test_unusable_folder(tmp_path, make, problem):
    folder = tmp_path / "data"
    make(folder)
    message = str(load_error(folder))
    assert str(folder) in message
    assert problem in message


def test_blank_lines_keep_line_numbers(tmp_path):
    folder = tmp_path / "kaggle"
    write_lines(folder / "boneage-training-dataset.csv", ["id,boneage,male", "1,10,True", "", "2,10,bad"])
    for image_id in ("1", "2"):
        write_image(folder / "boneage-training-dataset" / f"{image_id}.png")
    assert load_error(folder).problems[0].line == 4


# --- dropping bad rows ----------------------------------------------------------------------


def test_drop_invalid_lists_every_dropped_row(tmp_path):
    folder = kaggle_folder(tmp_path / "kaggle", [*GOOD_LINES, "5,50,x", "6,999,True"])
    dropped_csv = tmp_path / "results" / "dropped_rows.csv"
    with pytest.warns(UserWarning, match="2 bad row"):
        table = data.load_dataset(folder, drop_invalid=True, dropped_rows_csv=dropped_csv)
    assert table["id"].tolist() == ["1", "2", "3", "4"]
    dropped = pd.read_csv(dropped_csv, dtype=str)
    assert list(dropped.columns) == ["file", "line", "id", "reason"]
    assert dropped["id"].tolist() == ["5", "6"]
    assert dropped["line"].tolist() == ["6", "7"]
    assert set(dropped["file"]) == {str(folder / "boneage-training-dataset.csv")}
    assert "unknown sex" in dropped["reason"].iloc[0]


def test_drop_invalid_without_problems_writes_an_empty_list(good_folder, tmp_path):
    dropped_csv = tmp_path / "dropped_rows.csv"
    assert len(data.load_dataset(good_folder, drop_invalid=True, dropped_rows_csv=dropped_csv)) == 4
    assert pd.read_csv(dropped_csv).empty


def test_drop_invalid_needs_a_dropped_rows_file(good_folder):
    with pytest.raises(ValueError, match="dropped_rows_csv"):
        data.load_dataset(good_folder, drop_invalid=True)


def test_drop_invalid_with_nothing_left_raises(tmp_path):
    folder = kaggle_folder(tmp_path / "kaggle", ["1,10,x"])
    error = load_error(folder, drop_invalid=True, dropped_rows_csv=tmp_path / "dropped.csv")
    assert "no valid row left" in str(error)
    assert len(pd.read_csv(tmp_path / "dropped.csv")) == 1


# --- sex ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, male",
    [
        (True, True), (False, False), (np.bool_(True), True), (1, True), (0, False), (1.0, True),
        ("True", True), ("false", False), ("TRUE", True), ("1", True), ("0", False),
        ("M", True), ("f", False), ("Male", True), ("FEMALE", False), (" m ", True),
    ],
)
def test_parse_sex(value, male):
    assert data.parse_sex(value) is male


@pytest.mark.parametrize("value", ["x", "2", 2, "", None, float("nan"), "yes"])
def test_parse_sex_refuses_unknown_values(value):
    with pytest.raises(ValueError, match="sex"):
        data.parse_sex(value)


def test_sex_variants_in_a_table(tmp_path):
    lines = ["1,10,M", "2,10,f", "3,10,male", "4,10,Female", "5,10,1", "6,10,0", "7,10,TRUE", "8,10,false"]
    table = data.load_dataset(kaggle_folder(tmp_path / "kaggle", lines))
    assert table["male"].tolist() == [True, False, True, False, True, False, True, False]


# --- the official RSNA download -------------------------------------------------------------


def official_folder(root: Path, test_truth: str) -> Path:
    # The training labels come in their own archive, apart from the images.
    write_lines(root / "Bone Age Training Set Annotations" / "train.csv", ["id,boneage,male", "1,10,True", "2,40,False"])
    for image_id in ("1", "2"):
        write_image(root / "Bone Age Training Set" / "boneage-training-dataset" / f"{image_id}.png")
    validation = root / "Bone Age Validation Set"
    write_lines(
        validation / "Validation Dataset.csv",
        ["Image ID,male, Bone Age (months) ", "10,TRUE,100", "11,FALSE,150"],
    )
    write_image(validation / "boneage-validation-dataset-1" / "10.png")
    write_image(validation / "boneage-validation-dataset-2" / "11.png")
    test = root / "Bone Age Test Set"
    rows = [["Case ID", "Sex", "Ground truth bone age (months)"], [20, "M", 168.5], [21, "F", 30.25]]
    if test_truth == "xlsx":
        write_xlsx(test / "Bone age ground truth.xlsx", rows)
    else:
        write_lines(test / "Bone age ground truth.csv", [",".join(map(str, row)) for row in rows])
    for image_id in ("20", "21"):
        write_image(test / "Test Set Images" / f"{image_id}.png")
    return root


@pytest.mark.parametrize("test_truth", ["csv", "xlsx"])
def test_official_rsna_layout(tmp_path, test_truth):
    table = data.load_dataset(official_folder(tmp_path / "rsna", test_truth))
    assert_table_types(table)
    assert table["id"].tolist() == ["1", "2", "10", "11", "20", "21"]
    assert table["split"].tolist() == ["train", "train", "validation", "validation", "test", "test"]
    assert table["boneage"].tolist() == [10.0, 40.0, 100.0, 150.0, 168.5, 30.25]
    assert table["male"].tolist() == [True, False, True, False, True, False]
    assert "boneage-validation-dataset-2" in table["path"].iloc[3]
    assert "Test Set Images" in table["path"].iloc[5]


def test_the_same_image_name_twice_is_ambiguous(tmp_path):
    folder = official_folder(tmp_path / "rsna", "csv")
    copy = write_image(folder / "resized" / "10.png")
    message = str(load_error(folder))
    assert f"{folder / 'Bone Age Validation Set' / 'Validation Dataset.csv'}, line 2 (id 10): 2 images named 10" in message
    assert str(copy) in message


def test_official_test_truth_problems_name_the_spreadsheet_row(tmp_path):
    folder = official_folder(tmp_path / "rsna", "xlsx")
    truth = folder / "Bone Age Test Set" / "Bone age ground truth.xlsx"
    write_xlsx(truth, [["Case ID", "Sex", "Ground truth bone age (months)"], [20, "M", 168.5], [21, "X", 30.25]])
    message = str(load_error(folder))
    assert f"{truth}, row 3 (id 21): unknown sex 'X'" in message


# --- the generic layout ---------------------------------------------------------------------


def test_generic_layout_with_relative_and_absolute_paths(tmp_path):
    folder = tmp_path / "mine"
    write_image(folder / "images" / "a.png")
    write_image(folder / "elsewhere.jpg")
    outside = write_image(tmp_path / "outside" / "c.png")
    write_lines(
        folder / "labels.csv",
        ["image_path,Bone_Age,Sex", "images/a.png,12.5,F", "elsewhere.jpg,100,M", f"{outside},60,male"],
    )
    table = data.load_dataset(folder)
    assert_table_types(table)
    assert table["id"].tolist() == ["a", "elsewhere", "c"]  # the file stems
    assert table["path"].tolist() == [str(folder / "images" / "a.png"), str(folder / "elsewhere.jpg"), str(outside)]
    assert table["boneage"].tolist() == [12.5, 100.0, 60.0]
    assert table["male"].tolist() == [False, True, True]
    assert set(table["split"]) == {"train"}


def test_generic_layout_with_ids_and_a_split_column(tmp_path):
    folder = tmp_path / "mine"
    for name in ("x1", "x2"):
        write_image(folder / "img" / f"{name}.png")
    write_lines(folder / "table.csv", ["id,file,boneage,male,split", "p1,img/x1.png,10,1,train", "p2,img/x2.png,20,0,Test"])
    table = data.load_dataset(folder)
    assert table["id"].tolist() == ["p1", "p2"]
    assert table["split"].tolist() == ["train", "test"]


def test_generic_layout_bad_rows(tmp_path):
    folder = tmp_path / "mine"
    write_image(folder / "a.png")
    write_lines(folder / "labels.csv", ["filename,boneage,male,split", "a.png,10,M,later", "gone.png,10,M,train"])
    message = str(load_error(folder))
    assert f"{folder / 'labels.csv'}, line 2 (id a): unknown split 'later'" in message
    assert f"{folder / 'labels.csv'}, line 3 (id gone): image missing: {folder / 'gone.png'}" in message


# --- the study split ------------------------------------------------------------------------


def synthetic_table(count: int, seed: int = 0, test_rows: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"id{index}" for index in range(count)],
            "path": [f"/images/id{index}.png" for index in range(count)],
            "boneage": rng.uniform(0, 228, count).round(),
            "male": rng.random(count) < 0.5,
            "split": ["test"] * test_rows + ["train"] * (count - test_rows),
        }
    )


def test_split_follows_the_fractions_in_every_stratum():
    table = synthetic_table(2000)
    split = data.split_dataset(table, FRACTIONS, seed=1)
    assert split.index.equals(table.index)
    counts = split.value_counts()
    for name, fraction in FRACTIONS.items():
        assert abs(counts[name] - fraction * len(table)) <= 1
    band = pd.cut(table["boneage"], [0, 24, 60, 120, 180, 240], right=False)
    for _, stratum in split.groupby([band, table["male"]], observed=True):
        for name, fraction in FRACTIONS.items():
            assert abs((stratum == name).sum() - fraction * len(stratum)) <= 2


def test_folds_partition_the_data_stratified_with_calibration_inside_each_training_part():
    table = synthetic_table(1000, test_rows=50)
    folds = 5
    splits = [data.split_dataset(table, FRACTIONS, seed=3, folds=folds, fold=fold) for fold in range(1, folds + 1)]
    in_test = pd.concat([split == "test" for split in splits], axis=1)
    assert (in_test.sum(axis=1) == 1).all(), "every row (source test rows too) is in exactly one test fold"
    band = pd.cut(table["boneage"], [0, 24, 60, 120, 180, 240], right=False)
    for split in splits:
        assert abs((split == "test").sum() - len(table) / folds) <= 1
        for _, stratum in split.groupby([band, table["male"]], observed=True):
            assert abs((stratum == "test").sum() - len(stratum) / folds) <= 1
        rest = split[split != "test"]
        for name in ("train", "validation", "calibration"):  # the rest in the proportions of the fractions
            assert abs((rest == name).sum() - FRACTIONS[name] / (1 - FRACTIONS["test"]) * len(rest)) <= 1
    assert splits[0].equals(data.split_dataset(table.sample(frac=1, random_state=0), FRACTIONS, seed=3,
                                               folds=folds, fold=1).loc[table.index])
    with pytest.raises(ValueError, match=r"fold must be from 1 to folds \(3\), got 4"):
        data.split_dataset(table, FRACTIONS, seed=3, folds=3, fold=4)


def test_split_is_deterministic_and_ignores_row_order():
    table = synthetic_table(300)
    first = data.split_dataset(table, FRACTIONS, seed=7)
    assert first.equals(data.split_dataset(table, FRACTIONS, seed=7))
    assert not first.equals(data.split_dataset(table, FRACTIONS, seed=8))
    shuffled = table.sample(frac=1.0, random_state=3)
    assert data.split_dataset(shuffled, FRACTIONS, seed=7).loc[table.index].equals(first)


def test_split_keeps_the_source_test_rows_in_test():
    table = synthetic_table(100, test_rows=20)
    split = data.split_dataset(table, {"train": 0.8, "validation": 0.2}, seed=0)
    assert (split.iloc[:20] == "test").all()
    assert set(split.iloc[20:]) == {"train", "validation"}


def test_split_of_tiny_strata():
    table = synthetic_table(3)
    split = data.split_dataset(table, FRACTIONS, seed=0)
    assert len(split) == 3 and set(split) <= set(config.SPLITS)
    assert data.split_dataset(table.iloc[:0], FRACTIONS, seed=0).empty


@pytest.mark.parametrize(
    "fractions",
    [
        {"train": 0.7, "validation": 0.1, "calibration": 0.1, "test": 0.2},
        {"train": 0.5, "validation": 0.1},
        {"train": 1.2, "test": -0.2},
        {"train": 0.9, "holdout": 0.1},
    ],
)
def test_split_refuses_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        data.split_dataset(synthetic_table(10), fractions, seed=0)


def test_split_refuses_unlabelled_rows():
    table = synthetic_table(10)
    table.loc[3, "boneage"] = np.nan
    with pytest.raises(ValueError, match="no bone age"):
        data.split_dataset(table, FRACTIONS, seed=0)


def test_split_file_round_trip(tmp_path):
    table = synthetic_table(50)
    table["id"] = [f"{index:05d}" for index in range(50)]  # leading zeros must survive
    split = data.split_dataset(table, FRACTIONS, seed=0)
    path = data.write_split(tmp_path / "run" / "split.csv", table, split)
    assert data.read_split(path, table).equals(split)
    assert data.read_split(path, table.iloc[::-1]).equals(split.iloc[::-1])


def test_read_split_names_unknown_ids(tmp_path):
    table = synthetic_table(5)
    path = data.write_split(tmp_path / "split.csv", table, data.split_dataset(table, FRACTIONS, seed=0))
    with open(path, "a", newline="") as handle:
        csv.writer(handle).writerow(["stranger", "train"])
    with pytest.raises(data.DatasetError, match=r"split\.csv, line 7 \(id stranger\): id not in the data set"):
        data.read_split(path, table)


def test_read_split_names_ids_without_a_split(tmp_path):
    table = synthetic_table(5)
    path = data.write_split(tmp_path / "split.csv", table.iloc[:4], data.split_dataset(table.iloc[:4], FRACTIONS, seed=0))
    with pytest.raises(data.DatasetError, match="1 id.* have no split: id4"):
        data.read_split(path, table)


# --- separators, and images that only a full decode finds damaged ----------------------------


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_semicolon_tab_and_bar_separated_tables_are_read(tmp_path, separator):
    folder = kaggle_folder(tmp_path / "kaggle", GOOD_LINES)
    write_lines(folder / "boneage-training-dataset.csv",
                [line.replace(",", separator) for line in ["id,boneage,male", *GOOD_LINES]])
    table = data.load_dataset(folder)
    assert table["id"].tolist() == ["1", "2", "3", "4"] and table["boneage"].tolist() == [10, 30, 100, 200]


def test_a_table_of_another_separator_is_named_in_the_error(tmp_path):
    folder = kaggle_folder(tmp_path / "kaggle", GOOD_LINES)
    write_lines(folder / "boneage-training-dataset.csv", [line.replace(",", ":") for line in ["id,boneage,male", *GOOD_LINES]])
    message = str(load_error(folder))
    assert "required column missing" in message and "the file has: id:boneage:male" in message
    assert "read as separated by commas" in message and "one column only" in message and "semicolons" in message


def corrupt_png(path: Path) -> Path:
    """A PNG whose signature, header and end marker are intact around garbage: only decoding finds it."""
    write_image(path)
    good = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))[1].tobytes()
    path.write_bytes(good[:60] + b"\x00" * 300 + good[-20:])
    return path


def test_undecodable_images_are_reported_with_the_bad_rows_at_once(tmp_path):
    folder = kaggle_folder(tmp_path / "kaggle", [*GOOD_LINES, "5,50,x"])
    failures = {str(folder / "boneage-training-dataset" / "2.png"): "2.png: cannot be decoded"}
    error = load_error(folder, check_images=lambda rows: failures)
    lines = str(error).splitlines()
    assert "2 problem(s)" in lines[0] and "-p drop_invalid true" in lines[0]
    assert any("line 3 (id 2): image unreadable: 2.png: cannot be decoded" in line for line in lines)
    assert any("line 6 (id 5): unknown sex" in line for line in lines)


def test_drop_invalid_drops_undecodable_images_of_a_run_and_lists_them(tmp_path, monkeypatch):
    from utils import preprocessing, study
    from utils.parameters import load_parameters

    folder = kaggle_folder(tmp_path / "kaggle", [*GOOD_LINES, "5,50,True", "6,60,False"])
    for image_id in ("3", "5"):
        corrupt_png(folder / "boneage-training-dataset" / f"{image_id}.png")
    monkeypatch.setitem(preprocessing.load_images.__kwdefaults__, "cache_dir", tmp_path / "cache")
    strict = load_parameters("ci", {"dataset": str(folder), "image_size": 16, "run_name": "undecodable_strict"})
    with pytest.raises(data.DatasetError) as caught:
        study.load_table(strict, config.RunPaths(strict.run_name))
    assert str(caught.value).startswith("2 problem(s)") and "3.png: cannot be decoded" in str(caught.value)
    assert "5.png: cannot be decoded" in str(caught.value)
    dropping = load_parameters("ci", {"dataset": str(folder), "image_size": 16, "drop_invalid": True,
                                      "run_name": "undecodable_dropped"})
    paths = config.RunPaths(dropping.run_name)
    with pytest.warns(UserWarning, match="2 bad row"):
        table = study.load_table(dropping, paths)
    assert table["id"].tolist() == ["1", "2", "4", "6"]
    dropped = pd.read_csv(paths.dropped_rows, dtype=str)
    assert dropped["id"].tolist() == ["3", "5"] and dropped["reason"].str.contains("cannot be decoded").all()
    # The images of the rows kept were cached by that check: the stages read them without decoding.
    monkeypatch.setattr(preprocessing, "preprocess_paths", lambda *arguments, **options: pytest.fail("decoded again"))
    assert study.load_images(table, dropping, progress=False).shape == (4, 16, 16)
    with pytest.warns(UserWarning, match="2 bad row"):
        assert study.load_table(dropping, paths)["id"].tolist() == ["1", "2", "4", "6"]


def test_table_beside_finds_the_label_table_named_like_an_image_folder(tmp_path):
    images = tmp_path / "scans.2024"
    images.mkdir()
    assert data.table_beside(images) is None
    (tmp_path / "scans.csv").write_text("id,boneage,male\n")  # a dot in the folder's name is not a suffix
    assert data.table_beside(images) is None
    (tmp_path / "scans.2024.xlsx").write_bytes(b"")
    assert data.table_beside(images) == tmp_path / "scans.2024.xlsx"
