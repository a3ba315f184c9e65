"""Loading a bone-age data set, in the layouts users download, into one checked table; the study split.

Layouts, detected from the file names (case, spaces, `_`, `-` and `+` ignored):
- Kaggle: `boneage-training-dataset.csv` (+ `boneage-test-dataset.csv`), each next to a folder
  of `<id>.png` named like it.
- The official RSNA download: `train.csv`, `Validation Dataset.csv`, `Bone age ground truth.xlsx`
  (or `.csv`), in the folder or its subfolders, images `<id>.png` anywhere below the folder.
- Generic: any single CSV (or XLSX) in the folder, with a path or id column, a bone-age column and
  a sex column (an optional `split` column says train/validation/test).

Every row is checked and every problem is reported at once, naming the file, the line and the
problem. Images are checked cheaply (signature, header, end marker); damage that only a full
decode finds is reported by `utils.preprocessing`, which names the file as well.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from utils import config, evaluation
from utils.files import atomic_path

SOURCE_SPLITS = ("train", "validation", "test")
# Field separators a CSV may use (spreadsheets in many locales write semicolons), by name.
SEPARATORS = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "'|'"}
AGE_RANGE_MONTHS = (0.0, float(config.MAX_AGE_MONTHS))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
TABLE_SUFFIXES = (".csv", ".xlsx")
MAX_LISTED_PROBLEMS = 20

# The tables of the Kaggle and official RSNA layouts, by normalised file stem, and their split.
KNOWN_TABLES = {
    "boneagetrainingdataset": "train",
    "train": "train",
    "boneagevalidationdataset": "validation",
    "validationdataset": "validation",
    "boneagetestdataset": "test",
    "boneagegroundtruth": "test",
}

# Accepted column names per role, compared after `_normalise_name`; shown as written in messages.
COLUMN_NAMES = {
    "id": ("id", "Image ID", "Case ID"),
    "path": ("path", "image_path", "file", "filename", "file_path"),
    "boneage": ("boneage", "bone_age", "Bone Age (months)", "Ground truth bone age (months)"),
    "male": ("male", "sex", "gender"),
    "split": ("split",),
}

SEX_VALUES = {
    "true": True, "1": True, "1.0": True, "m": True, "male": True,
    "false": False, "0": False, "0.0": False, "f": False, "female": False,
}
SPLIT_VALUES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation",
    "test": "test", "testing": "test",
}


class DatasetError(ValueError):
    """A data set that cannot be used as it is; the message names each file, line and problem."""

    def __init__(self, message: str, problems=()):
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class Problem:
    """One thing wrong: with a line, one row of a table; without, the whole file."""

    file: Path
    line: int | None
    id: str
    reason: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.reason}"
        subject = f" (id {self.id})" if self.id else ""
        return f"{_location(self.file, self.line)}{subject}: {self.reason}"


def _location(file: Path, line: int) -> str:
    # Spreadsheets number rows, text files lines; both count the header as 1.
    unit = "row" if file.suffix.lower() == ".xlsx" else "line"
    return f"{file}, {unit} {line}"


def parse_sex(value) -> bool:
    """True for male: True/False, 1/0, M/F, male/female in any case."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Number) and value in (0, 1):
        return bool(value)
    text = "" if value is None else str(value).strip().lower()
    if text in SEX_VALUES:
        return SEX_VALUES[text]
    if text in ("", "nan", "none"):
        raise ValueError("sex missing")
    raise ValueError(f"unknown sex {value!r}: expected True/False, 1/0, M/F or male/female")


def load_dataset(folder, *, drop_invalid=False, dropped_rows_csv=None, check_images=None) -> pd.DataFrame:
    """The data set in `folder` as one table: id, path (absolute), boneage (months), male, split.

    `boneage` is NaN only in a test table that has no age column (Kaggle's test CSV). Bad rows raise
    one DatasetError listing every problem; with `drop_invalid=True` they are left out instead and
    each is written with its reason to `dropped_rows_csv` (file, line, id, reason; unused without
    drop_invalid). Problems of a whole file (missing columns, no table) always raise.

    `check_images`, if given, decodes what the cheap checks cannot: called with the table of the
    rows without problems, it returns {path: problem} of the images that cannot be decoded, and
    those rows count as bad rows too (reported with the others, or dropped).
    """
    if drop_invalid and dropped_rows_csv is None:
        raise ValueError("drop_invalid=True needs dropped_rows_csv: the file that lists each dropped row")
    folder = Path(os.path.abspath(folder))
    rows, problems = [], []
    first_seen, finder = {}, _ImageFinder(folder)
    for table_file, split in _find_tables(folder):
        raw, columns, file_problems = _read_table(table_file, split)
        problems += file_problems
        if not file_problems:
            table_rows, row_problems = _parse_rows(raw, columns, table_file, split, finder, first_seen)
            rows += table_rows
            problems += row_problems
    whole_file = any(problem.line is None for problem in problems)
    if check_images is not None and not whole_file:
        problems += _undecodable(rows, problems, check_images)
    whole_file = any(problem.line is None for problem in problems)
    if whole_file or (problems and not drop_invalid):
        _raise_problems(folder, problems, can_drop=not whole_file)
    if drop_invalid:
        _write_dropped_rows(dropped_rows_csv, problems)
        bad = {(problem.file, problem.line) for problem in problems}
        rows = [row for row in rows if (row["file"], row["line"]) not in bad]
        if not rows:
            raise DatasetError(f"{folder}: no valid row left; all are listed in {dropped_rows_csv}", problems)
        if problems:
            warnings.warn(
                f"{len(problems)} bad row(s) of {folder} left out; each is listed in {dropped_rows_csv}"
            )
    return _as_table(rows)


def _undecodable(rows: list[dict], problems: list[Problem], check_images) -> list[Problem]:
    """A Problem for each row, among those without one, whose image `check_images` cannot decode."""
    bad = {(problem.file, problem.line) for problem in problems}
    candidates = [row for row in rows if (row["file"], row["line"]) not in bad]
    failures = check_images(_as_table(candidates)) if candidates else {}
    return [Problem(row["file"], row["line"], row["id"], f"image unreadable: {failures[row['path']]}")
            for row in candidates if row["path"] in failures]


def _find_tables(folder: Path) -> list[tuple[Path, str]]:
    """The label tables of `folder` with their source split: the known layouts, else its single CSV."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    known, top_level = [], []
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders if not _is_hidden(name))
        for name in sorted(files):
            path = Path(directory, name)
            if _is_hidden(name) or path.suffix.lower() not in TABLE_SUFFIXES:
                continue
            split = KNOWN_TABLES.get(_normalise_name(path.stem))
            if split:
                known.append((path, split))
            elif path.parent == folder:
                top_level.append(path)
    if known:
        return sorted(known, key=lambda table: (SOURCE_SPLITS.index(table[1]), str(table[0])))
    if len(top_level) == 1:
        return [(top_level[0], "train")]
    if top_level:
        names = ", ".join(path.name for path in top_level)
        raise DatasetError(f"{folder}: several tables ({names}) and none with a known name; keep one")
    if not any(folder.iterdir()):
        raise DatasetError(f"{folder}: the folder is empty")
    raise DatasetError(
        f"{folder}: no label table found; expected boneage-training-dataset.csv (Kaggle), train.csv /"
        " Validation Dataset.csv / Bone age ground truth.xlsx (RSNA), or one CSV with path (or id),"
        " bone age and sex columns"
    )


def _read_table(file: Path, split: str):
    """(raw string cells with a `line` column, {role: column}, whole-file problems) of one table."""
    separator = ","
    try:
        if file.suffix.lower() == ".xlsx":
            raw = pd.read_excel(file, dtype=str, engine="openpyxl").fillna("")
        else:
            separator = _separator(file)
            # Blank lines are kept (and skipped below) so that row i is on line i + 2.
            raw = pd.read_csv(
                file, sep=separator, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig"
            )
    except pd.errors.EmptyDataError:
        return None, {}, [Problem(file, None, "", "the file is empty")]
    except (pd.errors.ParserError, UnicodeDecodeError, zipfile.BadZipFile, ValueError, OSError) as error:
        return None, {}, [Problem(file, None, "", f"cannot be read as a table: {error}")]
    raw.columns = [str(column).strip() for column in raw.columns]
    raw["line"] = np.arange(len(raw)) + 2
    raw = raw[(raw.drop(columns="line") != "").any(axis=1)]
    columns, problems = _match_columns(file, list(raw.columns.drop("line")), split, separator)
    if not problems and raw.empty:
        problems.append(Problem(file, None, "", "the table has a header but no rows"))
    return raw, columns, problems


def _separator(file: Path) -> str:
    """The field separator of a CSV: the one of SEPARATORS its header line holds most of (commas on a tie)."""
    try:
        with open(file, encoding="utf-8-sig", errors="replace") as handle:
            header = handle.readline()
    except OSError:
        return ","  # read_csv reports it
    counts = {separator: header.count(separator) for separator in SEPARATORS}
    return max(counts, key=lambda separator: (counts[separator], separator == ","))


def _match_columns(file: Path, found: list[str], split: str, separator: str = ","):
    """{role: column name} by the accepted names of COLUMN_NAMES, and the problems of missing ones."""
    columns, problems = {}, []
    for role, names in COLUMN_NAMES.items():
        accepted = {_normalise_name(name) for name in names}
        matches = [column for column in found if _normalise_name(column) in accepted]
        if len(matches) > 1:
            reason = f"columns {matches} all look like the {role} column; keep one"
            problems.append(Problem(file, None, "", reason))
        elif matches:
            columns[role] = matches[0]
    required = [("male",), ("id", "path")]
    # Only a test table may come without ages (Kaggle's test CSV has none).
    if split != "test":
        required.append(("boneage",))
    for roles in required:
        if not any(role in columns for role in roles):
            expected = " or ".join(", ".join(COLUMN_NAMES[role]) for role in roles)
            reason = f"required column missing: one of {expected}; the file has: {', '.join(found)}"
            if file.suffix.lower() != ".xlsx":
                reason += f" (read as separated by {SEPARATORS[separator]})"
                if len(found) == 1:
                    reason += ("; one column only: are its fields separated by something other than "
                               f"{', '.join(SEPARATORS.values())}?")
            problems.append(Problem(file, None, "", reason))
    return columns, problems


def _parse_rows(raw: pd.DataFrame, columns: dict, file: Path, split: str, finder, first_seen: dict):
    """The rows of one table as dicts, and one Problem per bad row (all its reasons)."""
    rows, problems = [], []
    for record in raw.to_dict("records"):
        row = {"file": file, "line": record["line"], "boneage": math.nan, "split": split}
        reasons = []
        row["path"], row["id"] = _locate_image(record, columns, file, finder, reasons)
        if row["path"]:
            image_problem = _image_problem(row["path"])
            if image_problem:
                reasons.append(f"image unreadable: {row['path']}: {image_problem}")
        if "boneage" in columns:
            row["boneage"] = _parse_age(record[columns["boneage"]], reasons)
        try:
            row["male"] = parse_sex(record[columns["male"]])
        except ValueError as error:
            reasons.append(str(error))
        if "split" in columns:
            value = record[columns["split"]]
            row["split"] = SPLIT_VALUES.get(value.strip().lower())
            if row["split"] is None:
                reasons.append(f"unknown split {value!r}: expected train, validation or test")
        if row["id"] in first_seen:
            reasons.append(f"duplicate id {row['id']} (first at {first_seen[row['id']]})")
        elif row["id"]:
            first_seen[row["id"]] = _location(file, row["line"])
        if reasons:
            problems.append(Problem(file, row["line"], row["id"], "; ".join(reasons)))
        rows.append(row)
    return rows, problems


def _locate_image(record: dict, columns: dict, file: Path, finder, reasons: list):
    """(absolute image path or "", id) of a row: from its path column, else found by `<id>.<suffix>`."""
    if "path" in columns:
        value = record[columns["path"]].strip()
        if not value:
            reasons.append("image path missing")
            return "", _clean_id(record[columns["id"]]) if "id" in columns else ""
        path = os.path.abspath(os.path.join(file.parent, value))
        image_id = _clean_id(record[columns["id"]]) if "id" in columns else Path(path).stem
        if not image_id:
            reasons.append("id missing")
        if not os.path.isfile(path):
            reasons.append(f"image missing: {path}")
            return "", image_id
        return path, image_id
    image_id = _clean_id(record[columns["id"]])
    if not image_id:
        reasons.append("id missing")
        return "", ""
    candidates = finder.find(file, image_id)
    if len(candidates) == 1:
        return candidates[0], image_id
    if candidates:
        reasons.append(f"{len(candidates)} images named {image_id}: {', '.join(candidates)}")
    else:
        others = ", ".join(IMAGE_SUFFIXES[1:])
        root = finder.root(file)
        reasons.append(f"image missing: no {image_id}{IMAGE_SUFFIXES[0]} (nor {others}) under {root}")
    return "", image_id


def table_beside(image_folder: Path) -> Path | None:
    """The label table named like `image_folder` next to it (the Kaggle layout: the folder
    `boneage-training-dataset/` beside `boneage-training-dataset.csv`), or None."""
    for suffix in TABLE_SUFFIXES:
        table = image_folder.parent / f"{image_folder.name}{suffix}"
        if table.is_file():
            return table
    return None


class _ImageFinder:
    """Finds the images `<id>.<suffix>` of a table's rows; each folder is listed once per load."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.indexes = {}

    def root(self, table_file: Path) -> Path:
        """The folder named like the table (Kaggle), else the whole data set: the official RSNA
        download keeps labels and images in different folders (and its ids are unique)."""
        named_like_table = table_file.with_suffix("")
        return named_like_table if named_like_table.is_dir() else self.folder

    def find(self, table_file: Path, image_id: str) -> list[str]:
        root = self.root(table_file)
        if root not in self.indexes:
            self.indexes[root] = _image_index(root)
        return self.indexes[root].get(image_id, [])


def _image_index(root: Path) -> dict[str, list[str]]:
    """{file stem: [absolute paths]} of the images below `root`, hidden folders skipped."""
    index = {}
    for directory, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not _is_hidden(name)]
        for name in files:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in IMAGE_SUFFIXES and not _is_hidden(name):
                index.setdefault(stem, []).append(os.path.join(directory, name))
    return index


def image_problem(path) -> str | None:
    """Why an image file cannot be used by the loader's cheap checks (signature, header, end
    marker), or None; the prediction command checks single files with it too."""
    return _image_problem(str(path))


def _image_problem(path: str) -> str | None:
    """Why the image cannot be used, or None.

    Cheap on purpose (a data set is checked in seconds): the signature, a header the decoder can
    parse, and for PNG/JPEG the end marker among the last bytes, which catches truncated downloads.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
            if head[128:132] == b"DICM":
                return _dicom_problem(path)
            if not (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff")):
                return "not a PNG, JPEG or DICOM file" if head else "the file is empty"
            handle.seek(0)
            with Image.open(handle) as image:
                width, height = image.size
                end_marker = b"IEND" if image.format == "PNG" else b"\xff\xd9"
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 1024))
            if end_marker not in handle.read():
                return f"{image.format} end marker missing (truncated file?)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"cannot read the header: {error}"
    if width < 1 or height < 1:
        return f"image size {width}x{height}"
    return None


def _dicom_problem(path: str) -> str | None:
    # pydicom takes a fifth of a second to import and only DICOM needs it.
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as error:
        return f"cannot read the DICOM header: {error}"
    if not header.get("Rows") or not header.get("Columns"):
        return "DICOM without image size (Rows, Columns)"
    return None


def _parse_age(value: str, reasons: list) -> float:
    text = value.strip()
    if text.lower() in ("", "nan", "none"):
        reasons.append("bone age missing")
        return math.nan
    try:
        months = float(text)
    except ValueError:
        reasons.append(f"bone age {value!r} is not a number")
        return math.nan
    low, high = AGE_RANGE_MONTHS
    if not low <= months <= high:
        reasons.append(f"bone age {text} months is outside {low:g}-{high:g}")
    return months


def _clean_id(value: str) -> str:
    """An id as text; `1377.0` (a number stored as float by a spreadsheet) becomes `1377`."""
    text = str(value).strip()
    return re.sub(r"^(\d+)\.0+$", r"\1", text)


def _normalise_name(name: str) -> str:
    """Lower case letters and digits only: `Bone Age (months)` and `boneage_months` compare equal."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _is_hidden(name: str) -> bool:
    # Dot files, macOS archive debris and spreadsheet lock files are not data.
    return name.startswith((".", "~$")) or name == "__MACOSX"


def _as_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series([row["id"] for row in rows], dtype=str),
            "path": pd.Series([row["path"] for row in rows], dtype=str),
            "boneage": pd.Series([row["boneage"] for row in rows], dtype="float64"),
            "male": pd.Series([row["male"] for row in rows], dtype=bool),
            "split": pd.Series([row["split"] for row in rows], dtype=str),
        }
    )


def _raise_problems(where, problems: list[Problem], can_drop: bool):
    listed = [f"  - {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        listed.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    hint = (" (fix them, or load with drop_invalid=True, in a run -p drop_invalid true, to leave the bad rows out)"
            if can_drop else "")
    raise DatasetError(f"{len(problems)} problem(s) in {where}{hint}:\n" + "\n".join(listed), problems)


def _write_dropped_rows(destination, problems: list[Problem]) -> None:
    dropped = pd.DataFrame(
        [(str(problem.file), problem.line, problem.id, problem.reason) for problem in problems],
        columns=["file", "line", "id", "reason"],
    )
    with atomic_path(destination) as temporary:
        dropped.to_csv(temporary, index=False)


def split_dataset(table: pd.DataFrame, fractions: dict, seed: int, *, folds: int = 1, fold: int = 1) -> pd.Series:
    """The study split of each row (train/validation/calibration/test), indexed like `table`.

    Rows of the source test split stay in test; `fractions` share out the other rows, stratified by
    age band x sex. Deterministic for a seed, whatever the row order of `table`.

    With `folds` K > 1 (K-fold cross-validation) every row, whatever its source split, falls in
    one of K folds, stratified the same way; fold `fold` is the test split, and train, validation
    and calibration share out the rest in the proportions of `fractions` (its test fraction is
    not used). The K runs of one seed have test splits that partition the data, and each run's
    calibration images stay inside its own training part.
    """
    weights = _check_fractions(fractions)
    missing = [column for column in ("id", "boneage", "male", "split") if column not in table.columns]
    if missing:
        raise ValueError(f"split_dataset needs the columns {missing} (a load_dataset table)")
    if table["boneage"].isna().any():
        raise ValueError(
            f"{int(table['boneage'].isna().sum())} row(s) have no bone age; split only labelled rows"
        )
    if not 1 <= fold <= folds:
        raise ValueError(f"fold must be from 1 to folds ({folds}), got {fold}")
    split = pd.Series("test", index=table.index, dtype=str, name="split")
    if folds == 1:
        order = _stratified_order(table[table["split"] != "test"], seed)
        split.loc[order] = _apportion(weights, len(order))
        return split
    order = _stratified_order(table, seed)
    # Dealt out in turn along the stratified order, so that every fold holds 1/K of each stratum.
    rest = order[np.arange(len(order)) % folds != fold - 1]
    development = np.where(np.array(config.SPLITS) == "test", 0.0, weights)
    split.loc[rest] = _apportion(development / development.sum(), len(rest))
    return split


def _stratified_order(rows: pd.DataFrame, seed: int) -> pd.Index:
    """The rows' index sorted by age band, sex and a seeded shuffle: each stratum a contiguous stretch."""
    # Sorted by id first so that the order does not depend on the row order of `table`.
    rows = rows.sort_values("id", kind="stable")
    strata = pd.DataFrame(
        {
            "band": evaluation.age_band(rows["boneage"]),
            "male": rows["male"].to_numpy(dtype=bool),
            "shuffle": np.random.default_rng(seed).random(len(rows)),
        },
        index=rows.index,
    )
    return strata.sort_values(["band", "male", "shuffle"]).index


def _check_fractions(fractions: dict) -> np.ndarray:
    unknown = sorted(set(fractions) - set(config.SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown} in fractions; known: {', '.join(config.SPLITS)}")
    weights = np.array([float(fractions.get(name, 0.0)) for name in config.SPLITS])
    valid = np.all(np.isfinite(weights)) and np.all(weights >= 0)
    if not valid or not math.isclose(weights.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    return weights


def _apportion(weights: np.ndarray, count: int) -> np.ndarray:
    """`count` split names interleaved so that every stretch of the sequence follows `weights`.

    Each position goes to the split furthest behind its share, so totals are within one row of
    the fractions and each stratum (a contiguous stretch once sorted) within two.
    """
    assigned = np.zeros(len(weights))
    names = np.empty(count, dtype=object)
    for position in range(count):
        chosen = int(np.argmax(weights * (position + 1) - assigned))
        assigned[chosen] += 1
        names[position] = config.SPLITS[chosen]
    return names


def write_split(path, table: pd.DataFrame, split: pd.Series) -> Path:
    """Write the split of `table` as CSV `id,split`, atomically."""
    if not split.index.equals(table.index):
        raise ValueError("split must be indexed like table (the Series split_dataset returns)")
    unknown = sorted(set(split) - set(config.SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; known: {', '.join(config.SPLITS)}")
    with atomic_path(path) as temporary:
        pd.DataFrame({"id": table["id"].to_numpy(), "split": split.to_numpy()}).to_csv(temporary, index=False)
    return Path(path)


def read_split(path, table: pd.DataFrame) -> pd.Series:
    """The split written by `write_split`, indexed like `table`; every id must match the table's."""
    path = Path(path)
    try:
        written = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: the file is empty") from None
    missing = [column for column in ("id", "split") if column not in written.columns]
    if missing:
        raise DatasetError(f"{path}: columns {missing} missing; the file has: {', '.join(written.columns)}")
    known_ids = set(table["id"])
    problems, seen = [], set()
    for line, (image_id, name) in enumerate(zip(written["id"], written["split"]), start=2):
        reasons = []
        if image_id not in known_ids:
            reasons.append("id not in the data set")
        if image_id in seen:
            reasons.append("duplicate id")
        if name not in config.SPLITS:
            reasons.append(f"unknown split {name!r}")
        seen.add(image_id)
        if reasons:
            problems.append(Problem(path, line, image_id, "; ".join(reasons)))
    absent = sorted(known_ids - seen)
    if absent:
        shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
        reason = f"{len(absent)} id(s) of the data set have no split: {shown}"
        problems.append(Problem(path, None, "", reason))
    if problems:
        _raise_problems(path, problems, can_drop=False)
    split_of = dict(zip(written["id"], written["split"]))
    return pd.Series(table["id"].map(split_of).to_numpy(), index=table.index, dtype=str, name="split")
