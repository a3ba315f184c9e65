"""What a bone age means for one child: its difference from the chronological age, in months and in SDs.

A bone age is read against the spread of skeletal ages of healthy children of the same
chronological age and sex. The reference spread is the table of standard deviations of skeletal
age from the Brush Foundation study that underlies the Greulich & Pyle atlas:

    Greulich WW, Pyle SI. Radiographic Atlas of Skeletal Development of the Hand and Wrist.
    2nd ed. Stanford (CA): Stanford University Press; 1959. Table of means and standard
    deviations of skeletal age by chronological age (Brush Foundation data, Cleveland, Ohio).

A bone age more than 2 SD below the chronological age is "delayed", more than 2 SD above
"advanced", otherwise "normal" (exactly ±2 SD is still normal), the convention of clinical
bone-age reports. The reference children were white, middle-class Americans born around 1930;
the SDs are a convention, not a statement about today's population.

Field names follow the RCPCH Digital Growth Charts API where it has one: `bone_age_sds` (the
standard deviation score, (BA - CA) / SD), `bone_age_centile` (its normal centile, 0-100) and
`bone_age_type` ("greulich-pyle", one of that API's bone-age methods). Ages stay in months.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from utils.config import MAX_AGE_MONTHS
NORMAL_RANGE_SD = 2.0
BONE_AGE_TYPE = "greulich-pyle"  # the RCPCH API's name of the method the reference SDs belong to

# Standard deviations of skeletal age (months) at each tabulated chronological age (months).
#
# Where these numbers come from, and how far they are checked: no scan or transcription of the
# atlas page itself could be found with the search tools available to this project. The table
# below is the one embedded in two independent public code bases, in different languages, and
# both agree on every one of the 47 values (and on the ages they belong to):
#   - a JavaScript bone-age report tool for radiologists (arrays `BFages` / `BFstdevs`, its report
#     says "using the Brush Foundation data ... two standard deviations at this age"), three
#     stored versions of the file;
#   - a Python growth-chart module of a bone-age deep-learning app (`STD_DEV`, plotted as
#     "Brush Foundation Study" bounds at ±2 SD), which also lists the Brush Foundation mean
#     skeletal ages (boys 3.01 months at 3 months ... 206.21 at 17 years).
# So every value is verified against those two copies; none is verified against the printed
# atlas. The table ends at 17 years for boys and 16 years for girls, as in both copies.
# A later version of the same JavaScript tool replaced this table (keeping it as a comment) by a
# different one starting at 12 months (boys 2.1 ... 15.4 months at 17 years) without naming its
# source; it is not used here.
GREULICH_PYLE_SD_MONTHS = {
    True: {  # boys
        "age_months": [3, 6, 9, 12, 18, 24, 30, 36, 42, 48, 54, 60,
                       72, 84, 96, 108, 120, 132, 144, 156, 168, 180, 192, 204],
        "sd_months": [0.69, 1.13, 1.43, 1.97, 3.52, 3.92, 4.52, 5.08, 5.40, 6.66, 8.36, 8.79,
                      9.17, 8.91, 9.10, 9.00, 9.79, 10.09, 10.38, 10.44, 10.72, 11.32, 12.86, 13.05],
    },
    False: {  # girls
        "age_months": [3, 6, 9, 12, 18, 24, 30, 36, 42, 48, 54, 60,
                       72, 84, 96, 108, 120, 132, 144, 156, 168, 180, 192],
        "sd_months": [0.72, 1.16, 1.36, 1.77, 3.49, 4.64, 5.37, 5.97, 7.48, 8.98, 10.73, 11.65,
                      10.23, 9.64, 10.23, 10.74, 11.73, 11.94, 10.24, 10.67, 11.30, 9.23, 7.31],
    },
}
# A z-score that misses ±2 only by floating-point rounding (BA = CA + 2·SD typed in) is on the boundary.
_BOUNDARY_TOLERANCE = 1e-9


def _ages(values, name: str) -> np.ndarray:
    """Ages in months as a float array, or a ValueError naming the first bad one."""
    values = np.atleast_1d(np.asarray(values, dtype=float))
    bad = ~np.isfinite(values) | (values < 0) | (values > MAX_AGE_MONTHS)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{index}] = {values[index]}: ages must be numbers of months in 0..{MAX_AGE_MONTHS}")
    return values


def _sexes(male, size: int) -> np.ndarray:
    """`male` as a boolean array of `size` (one value is broadcast); only booleans are accepted."""
    male = np.atleast_1d(np.asarray(male))
    if male.dtype != bool:
        raise ValueError(f"male must be True/False (decide unknown sex before calling), got {male.dtype} values")
    if male.size == 1:
        return np.full(size, bool(male[0]))
    if male.size != size:
        raise ValueError(f"male has {male.size} values but there are {size} ages")
    return male


def reference_sd_months(chronological_age_months, male) -> np.ndarray:
    """The G&P (Brush Foundation) SD of skeletal age at each chronological age, in months.

    Linear interpolation between the tabulated ages. Outside the table the nearest end is used:
    below 3 months the 3-month SD, above 17 years (boys) / 16 years (girls) the last SD.
    """
    ages = _ages(chronological_age_months, "chronological_age_months")
    male = _sexes(male, ages.size)
    sd = np.empty(ages.size)
    for sex, table in GREULICH_PYLE_SD_MONTHS.items():
        members = male == sex
        # np.interp holds the end values beyond the table: the clamping described above.
        sd[members] = np.interp(ages[members], table["age_months"], table["sd_months"])
    return sd


def category(z_score) -> np.ndarray:
    """'delayed' below -2 SD, 'advanced' above +2 SD, else 'normal'."""
    z_score = np.atleast_1d(np.asarray(z_score, dtype=float))
    result = np.full(z_score.shape, "normal", dtype=object)
    result[z_score < -NORMAL_RANGE_SD - _BOUNDARY_TOLERANCE] = "delayed"
    result[z_score > NORMAL_RANGE_SD + _BOUNDARY_TOLERANCE] = "advanced"
    return result


def centile(sds) -> np.ndarray:
    """The normal centile (0-100) of standard deviation scores: 50 at 0, 97.7 at +2, 2.3 at -2."""
    sds = np.atleast_1d(np.asarray(sds, dtype=float))
    return np.array([50.0 * (1.0 + math.erf(value / math.sqrt(2.0))) for value in sds.ravel()]).reshape(sds.shape)


def clinical_table(bone_age_months, male, chronological_age_months) -> pd.DataFrame:
    """The clinical reading of many children at once, one row each.

    Columns: bone_age_months, chronological_age_months, difference_months (BA - CA),
    reference_sd_months, bone_age_sds ((BA - CA) / SD), bone_age_centile, category.
    """
    bone_age = _ages(bone_age_months, "bone_age_months")
    chronological_age = _ages(chronological_age_months, "chronological_age_months")
    if bone_age.size != chronological_age.size:
        raise ValueError(f"{bone_age.size} bone ages but {chronological_age.size} chronological ages")
    difference = bone_age - chronological_age
    sd = reference_sd_months(chronological_age, male)
    sds = difference / sd
    return pd.DataFrame(
        {
            "bone_age_months": bone_age,
            "chronological_age_months": chronological_age,
            "difference_months": difference,
            "reference_sd_months": sd,
            "bone_age_sds": sds,
            "bone_age_centile": centile(sds),
            "category": category(sds),
        }
    )


def clinical_readout(bone_age_months: float, male: bool, chronological_age_months: float | None = None) -> dict:
    """The reading of one child: bone age in months and years, bone_age_type and, given the
    chronological age, difference_months (BA - CA), reference_sd_months, bone_age_sds,
    bone_age_centile and category."""
    if np.ndim(bone_age_months) != 0 or np.ndim(male) != 0:
        raise ValueError("clinical_readout reads one child; use clinical_table for many")
    bone_age = float(_ages(bone_age_months, "bone_age_months")[0])
    _sexes(male, 1)
    readout = {"bone_age_months": bone_age, "bone_age_years": bone_age / 12.0, "bone_age_type": BONE_AGE_TYPE}
    if chronological_age_months is None:
        return readout
    if np.ndim(chronological_age_months) != 0:
        raise ValueError("clinical_readout reads one child; use clinical_table for many")
    row = clinical_table(bone_age, male, chronological_age_months).iloc[0]
    readout.update(
        chronological_age_months=float(row["chronological_age_months"]),
        difference_months=float(row["difference_months"]),
        reference_sd_months=float(row["reference_sd_months"]),
        bone_age_sds=float(row["bone_age_sds"]),
        bone_age_centile=float(row["bone_age_centile"]),
        category=str(row["category"]),
    )
    return readout
