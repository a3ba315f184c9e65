"""Bone age over time: the reference band of a growth chart, follow-up visits and bone-age velocity.

A bone-age chart plots bone age (BA) against chronological age (CA). The readout of
`utils.clinical` reads BA - CA against the Greulich & Pyle (Brush Foundation) SD of skeletal age
at that CA, so the chart's reference mean is the line BA = CA and its normal range the band
CA ± 2 SD: a point outside the band is exactly a "delayed" or "advanced" reading. (The Brush
Foundation's own mean skeletal ages lie within a few months of CA; the readout, like clinical
reports, uses CA.) The SD table ends at 17 years for boys and 16 for girls; beyond, the last SD
is held, and the chart draws that part of the band lighter.

Visits: a CSV with one row per radiograph,

    patient,id,path,sex,chronological_age_months
    p01,p01_v1,images/a.png,F,110
    p01,p01_v2,images/b.png,F,126

(`id` is optional: the file name; paths are relative to the CSV's folder) gives, per visit, the
bone age with its interval, the readout (`bone_age_sds`, `bone_age_centile`, category) and the
bone-age velocity since the child's previous visit: months of bone age gained per month of age
(1.0 is a child keeping pace with the reference). Its uncertainty comes from the two visits'
prediction intervals: each interval of half-width h (its larger side, where clipping at 0 or 240
months cut the other) at coverage c is read as ±z·σ of a normal
error (z the two-sided c quantile), so that the difference of two independent errors has
SD sqrt(σ1² + σ2²) and the velocity interval at the same coverage is

    velocity ± sqrt(h1² + h2²) / (CA2 - CA1).

Errors of the same child at two visits are likely positively correlated (the same hand, the same
kind of image), which makes the difference less uncertain: the interval is on the wide side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utils import clinical, plots, rejection
from utils.config import MAX_AGE_MONTHS
from utils.data import parse_sex

VISIT_COLUMNS = ("patient", "path", "sex", "chronological_age_months")
VELOCITY_COLUMNS = ["months_since_previous", "bone_age_velocity", "bone_age_velocity_low", "bone_age_velocity_high"]
BAND_STEP_MONTHS = 1.0
CATEGORY_TEXT = {
    "delayed": f"delayed: more than {clinical.NORMAL_RANGE_SD:g} SD below age",
    "normal": f"normal: within ±{clinical.NORMAL_RANGE_SD:g} SD of age",
    "advanced": f"advanced: more than {clinical.NORMAL_RANGE_SD:g} SD above age",
}


class VisitsError(ValueError):
    """A visits CSV that cannot be used; the message names the file, the line and the problem."""


def reference_band(male: bool, step_months: float = BAND_STEP_MONTHS) -> pd.DataFrame:
    """The chart's reference for one sex, every `step_months` from 0 to 240 months:
    age_months, mean_months (= age), low_months and high_months (age ∓ 2 SD), tabulated
    (False where the SD is the held last value of the table)."""
    ages = np.arange(0.0, MAX_AGE_MONTHS + step_months / 2, step_months)
    sd = clinical.reference_sd_months(ages, bool(male))
    last_tabulated = clinical.GREULICH_PYLE_SD_MONTHS[bool(male)]["age_months"][-1]
    spread = clinical.NORMAL_RANGE_SD * sd
    return pd.DataFrame({
        "age_months": ages, "mean_months": ages, "low_months": ages - spread, "high_months": ages + spread,
        "tabulated": ages <= last_tabulated,
    })


def velocity(chronological_age_months, bone_age_months, low=None, high=None) -> pd.DataFrame:
    """Bone-age velocity of one child's visits, each from the visit before it (in the order given;
    visits without a bone age, NaN, are skipped): months_since_previous, bone_age_velocity
    and, with the intervals, bone_age_velocity_low / _high (see the module docstring). The first
    visit, and a visit without a bone age, have NaN."""
    age = np.asarray(chronological_age_months, dtype=float).ravel()
    bone_age = np.asarray(bone_age_months, dtype=float).ravel()
    if age.shape != bone_age.shape:
        raise ValueError(f"{age.size} chronological ages but {bone_age.size} bone ages")
    half_width = None
    if low is not None and high is not None:
        low, high = np.asarray(low, dtype=float).ravel(), np.asarray(high, dtype=float).ravel()
        if low.shape != age.shape or high.shape != age.shape:
            raise ValueError(f"{age.size} visits but {low.size} and {high.size} interval limits")
        # The larger side: an interval clipped at 0 or 240 months has lost part of the other.
        half_width = np.maximum(bone_age - low, high - bone_age)
    result = pd.DataFrame(np.nan, index=range(age.size), columns=VELOCITY_COLUMNS)
    previous = None
    for index in range(age.size):
        if np.isnan(bone_age[index]):
            continue
        if previous is not None:
            elapsed = age[index] - age[previous]
            if not elapsed > 0:
                raise ValueError(f"visits at {age[previous]:g} and {age[index]:g} months: a velocity needs "
                                 "later visits at greater ages (sort them by age, one visit per age)")
            rate = (bone_age[index] - bone_age[previous]) / elapsed
            result.loc[index, ["months_since_previous", "bone_age_velocity"]] = [elapsed, rate]
            if half_width is not None:
                spread = np.hypot(half_width[index], half_width[previous]) / elapsed
                result.loc[index, ["bone_age_velocity_low", "bone_age_velocity_high"]] = [rate - spread, rate + spread]
        previous = index
    return result


def read_visits(csv_path) -> pd.DataFrame:
    """The visits of a CSV: patient, id, path (absolute), male, chronological_age_months, line,
    sorted by patient (in order of first appearance) and age. VisitsError names every bad row."""
    csv_path = Path(csv_path)
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError) as error:
        raise VisitsError(f"{csv_path}: cannot be read as a CSV ({error})") from error
    raw.columns = [str(column).strip().lower() for column in raw.columns]
    missing = [column for column in VISIT_COLUMNS if column not in raw.columns]
    if missing:
        raise VisitsError(f"{csv_path}: a visits CSV needs the columns {', '.join(VISIT_COLUMNS)} (and optionally id); "
                          f"missing {', '.join(missing)}; it has {', '.join(raw.columns)}")
    rows, problems = [], []
    for position, record in enumerate(raw.to_dict("records")):
        line = position + 2  # the header is line 1
        row, reasons = _visit_row(record, csv_path.parent, line)
        if reasons:
            problems.append(f"{csv_path}, line {line}: {'; '.join(reasons)}")
        else:
            rows.append(row)
    if not rows and not problems:
        raise VisitsError(f"{csv_path}: no visits (the CSV has a header only)")
    table = pd.DataFrame(rows, columns=["patient", "id", "path", "male", "chronological_age_months", "line"])
    problems += _patient_problems(table, csv_path)
    if problems:
        raise VisitsError("\n".join(problems))
    order = {patient: rank for rank, patient in enumerate(dict.fromkeys(table["patient"]))}
    table = table.assign(_order=table["patient"].map(order))
    return table.sort_values(["_order", "chronological_age_months"], kind="stable").drop(columns="_order").reset_index(drop=True)


def _visit_row(record: dict, folder: Path, line: int) -> tuple[dict, list[str]]:
    reasons = []
    patient = record["patient"].strip()
    if not patient:
        reasons.append("patient missing")
    path = record["path"].strip()
    if not path:
        reasons.append("path missing")
    try:
        male = parse_sex(record["sex"])
    except ValueError as error:
        male = None
        reasons.append(str(error))
    text = record["chronological_age_months"].strip()
    try:
        age = float(text)
    except ValueError:
        age = np.nan
    if not 0 <= age <= MAX_AGE_MONTHS:  # NaN fails too
        reasons.append(f"chronological_age_months {text!r}: expected months in 0..{MAX_AGE_MONTHS}")
    resolved = Path(path) if Path(path).is_absolute() else folder / path
    image_id = record.get("id", "").strip() or Path(path).stem
    return {"patient": patient, "id": image_id, "path": str(resolved.resolve()), "male": male,
            "chronological_age_months": age, "line": line}, reasons


def _patient_problems(table: pd.DataFrame, csv_path: Path) -> list[str]:
    problems = []
    for patient, visits in table.groupby("patient", sort=False):
        if visits["male"].nunique() > 1:
            problems.append(f"{csv_path}: patient {patient}: both sexes given (lines {', '.join(map(str, visits['line']))})")
        repeated = visits[visits["chronological_age_months"].duplicated(keep=False)]
        if len(repeated):
            problems.append(f"{csv_path}: patient {patient}: two visits at the same age "
                            f"(lines {', '.join(map(str, repeated['line']))}); one visit per age")
    duplicated = table[table["id"].duplicated(keep=False)]
    if len(duplicated):
        problems.append(f"{csv_path}: duplicate id {duplicated['id'].iloc[0]!r} "
                        f"(lines {', '.join(map(str, duplicated['line']))}); give each visit its own id")
    return problems


def visit_readings(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per-visit readings of predicted visits (read_visits' columns plus boneage_pred,
    boneage_low, boneage_high, quality_flag; a NaN bone age is a visit without an age): adds
    difference_months, bone_age_sds, bone_age_centile, category and the velocity columns.

    A visit whose quality flag is not "ok" keeps its bone age but gets no clinical reading and
    counts for no velocity, as the prediction command withholds the reading of a flagged image:
    its estimate is not a reading of the child's skeleton."""
    result = predictions.reset_index(drop=True).copy()
    flags = result["quality_flag"].to_numpy() if "quality_flag" in result else np.full(len(result), rejection.ACCEPTED_FLAG)
    flagged = rejection.is_rejected(flags)
    known = result["boneage_pred"].notna().to_numpy() & ~flagged
    readout = pd.DataFrame(index=result.index, columns=["difference_months", "bone_age_sds", "bone_age_centile",
                                                        "category"], dtype=object)
    if known.any():
        table = clinical.clinical_table(result.loc[known, "boneage_pred"], result.loc[known, "male"].to_numpy(dtype=bool),
                                        result.loc[known, "chronological_age_months"])
        readout.loc[known] = table[readout.columns].to_numpy()
    for column in ("difference_months", "bone_age_sds", "bone_age_centile"):
        result[column] = pd.to_numeric(readout[column])
    result["category"] = readout["category"]
    velocities = []
    for _, visits in result.groupby("patient", sort=False):
        usable = visits["boneage_pred"].where(~flagged[visits.index])
        rates = velocity(visits["chronological_age_months"], usable, visits["boneage_low"], visits["boneage_high"])
        rates.index = visits.index
        velocities.append(rates)
    return result.join(pd.concat(velocities))


def _centile_text(centile: float) -> str:
    """Whole centiles, one decimal beyond 1 and 99 (99.5 is not "100"), and >99.9 / <0.1 at the ends."""
    if centile > 99.9 or centile < 0.1:
        return ">99.9" if centile > 99.9 else "<0.1"
    return f"{centile:.1f}" if centile < 1 or centile > 99 else f"{centile:.0f}"


def _years_and_months(months: float) -> str:
    whole = int(round(months))
    return f"{whole // 12} y {whole % 12} m"


def chart_child(visits: pd.DataFrame, title: str, coverage_pct: float) -> dict:
    """What `plots.growth_charts` draws for one child: its visits (chronological_age_months,
    boneage_pred, boneage_low, boneage_high, male; quality_flag and the velocity columns where
    known), the reference band of its sex and the text of its latest reading."""
    visits = visits[visits["boneage_pred"].notna()].sort_values("chronological_age_months")
    if visits.empty:
        raise ValueError(f"{title}: no visit with a bone age to chart")
    male = bool(visits["male"].iloc[0])
    latest = visits.iloc[-1]
    reading = clinical.clinical_readout(float(latest["boneage_pred"]), male, float(latest["chronological_age_months"]))
    lines = [
        f"bone age {reading['bone_age_months']:.1f} mo ({_years_and_months(reading['bone_age_months'])}), "
        f"{coverage_pct:.0f}% interval {latest['boneage_low']:.0f}–{latest['boneage_high']:.0f}",
        f"chronological age {reading['chronological_age_months']:.1f} mo "
        f"({_years_and_months(reading['chronological_age_months'])})",
    ]
    flag = str(latest.get("quality_flag", rejection.ACCEPTED_FLAG))
    if rejection.is_rejected(flag)[0]:
        lines.append(f"quality flag '{flag}': no clinical reading (SDS, delayed / normal / advanced)")
    else:
        lines += [
            f"BA − CA {reading['difference_months']:+.1f} mo, SDS {reading['bone_age_sds']:+.2f}, "
            f"centile {_centile_text(reading['bone_age_centile'])}",
            CATEGORY_TEXT[reading["category"]],
        ]
    rate = latest.get("bone_age_velocity", np.nan)
    if pd.notna(rate):
        lines.append(f"bone-age velocity {rate:.2f} mo/mo over the last {latest['months_since_previous']:.0f} mo "
                     f"({coverage_pct:.0f}% interval {latest['bone_age_velocity_low']:.2f} to "
                     f"{latest['bone_age_velocity_high']:.2f})")
    band = reference_band(male)
    return {
        "title": title,
        "male": male,
        "coverage_pct": float(coverage_pct),
        "reference": {column: band[column].to_numpy() for column in band.columns},
        "chronological_age_months": visits["chronological_age_months"].to_numpy(dtype=float),
        "bone_age_months": visits["boneage_pred"].to_numpy(dtype=float),
        "low_months": visits["boneage_low"].to_numpy(dtype=float),
        "high_months": visits["boneage_high"].to_numpy(dtype=float),
        "lines": lines,
    }


def growth_chart(children: list[dict], title: str | None = None):
    """The figure of `chart_child` dicts, one panel each (plots.growth_charts)."""
    return plots.growth_charts(children, title=title)
