"""utils.clinical: readouts against hand-computed cases from the Greulich & Pyle SD table."""

import numpy as np
import pytest

from utils import clinical


@pytest.mark.parametrize(
    "male, age_months, sd",
    [
        (True, 3, 0.69), (True, 72, 9.17), (True, 204, 13.05),
        (False, 3, 0.72), (False, 120, 11.73), (False, 192, 7.31),
    ],
)
def test_reference_sd_at_tabulated_ages(male, age_months, sd):
    assert clinical.reference_sd_months(age_months, male)[0] == pytest.approx(sd)


def test_reference_sd_interpolates_linearly_and_clamps_at_the_ends():
    # boys 60 months 8.79, 72 months 9.17: halfway 8.98; girls 144: 10.24, 156: 10.67 -> 10.455
    assert clinical.reference_sd_months(66, True)[0] == pytest.approx(8.98)
    assert clinical.reference_sd_months(150, False)[0] == pytest.approx(10.455)
    # below 3 months and beyond 17 y (boys) / 16 y (girls): the end values
    assert clinical.reference_sd_months(0, True)[0] == pytest.approx(0.69)
    assert clinical.reference_sd_months(230, True)[0] == pytest.approx(13.05)
    assert clinical.reference_sd_months(200, False)[0] == pytest.approx(7.31)


def test_reference_sd_vectorised_with_mixed_sexes():
    sd = clinical.reference_sd_months([72, 72, 150], [True, False, False])
    np.testing.assert_allclose(sd, [9.17, 10.23, 10.455])


def test_readout_advanced_boy_at_a_tabulated_age():
    readout = clinical.clinical_readout(96, True, 72)
    assert readout["bone_age_months"] == 96.0 and readout["bone_age_years"] == pytest.approx(8.0)
    assert readout["chronological_age_months"] == 72.0
    assert readout["difference_months"] == pytest.approx(24.0)
    assert readout["reference_sd_months"] == pytest.approx(9.17)
    assert readout["bone_age_sds"] == pytest.approx(24 / 9.17)  # 2.617
    assert readout["bone_age_centile"] == pytest.approx(99.556, abs=0.001)  # Φ(2.617)
    assert readout["category"] == "advanced"
    assert readout["bone_age_type"] == "greulich-pyle"


def test_readout_girl_at_a_tabulated_age():
    readout = clinical.clinical_readout(100, False, 120)
    assert readout["difference_months"] == pytest.approx(-20.0)
    assert readout["bone_age_sds"] == pytest.approx(-20 / 11.73)  # -1.705
    assert readout["bone_age_centile"] == pytest.approx(4.41, abs=0.01)  # Φ(-1.705)
    assert readout["category"] == "normal"


def test_readout_at_an_interpolated_age():
    readout = clinical.clinical_readout(40, True, 66)  # SD 8.98
    assert readout["bone_age_sds"] == pytest.approx(-26 / 8.98)  # -2.895
    assert readout["category"] == "delayed"


def test_readout_without_chronological_age_gives_bone_age_only():
    assert clinical.clinical_readout(150, False) == {
        "bone_age_months": 150.0, "bone_age_years": 12.5, "bone_age_type": "greulich-pyle"}


@pytest.mark.parametrize("male, age_months", [(True, 72), (False, 150), (True, 66)])
def test_category_boundary_exactly_two_sd_is_normal(male, age_months):
    sd = clinical.reference_sd_months(age_months, male)[0]
    assert clinical.clinical_readout(age_months + 2 * sd, male, age_months)["category"] == "normal"
    assert clinical.clinical_readout(age_months - 2 * sd, male, age_months)["category"] == "normal"
    assert clinical.clinical_readout(age_months + 2 * sd + 0.01, male, age_months)["category"] == "advanced"
    assert clinical.clinical_readout(age_months - 2 * sd - 0.01, male, age_months)["category"] == "delayed"


def test_centile_of_standard_deviation_scores():
    np.testing.assert_allclose(clinical.centile([-2.0, 0.0, 1.0, 2.0]), [2.275, 50.0, 84.134, 97.725], atol=0.001)


def test_category_of_z_scores():
    assert clinical.category([-2.5, -2.0, 0.0, 2.0, 2.0001]).tolist() == ["delayed", "normal", "normal", "normal", "advanced"]


def test_clinical_table_matches_single_readouts():
    table = clinical.clinical_table([96, 100, 40], [True, False, True], [72, 120, 66])
    assert table["category"].tolist() == ["advanced", "normal", "delayed"]
    for row, (bone_age, male, age) in zip(table.itertuples(), [(96, True, 72), (100, False, 120), (40, True, 66)]):
        assert row.bone_age_sds == pytest.approx(clinical.clinical_readout(bone_age, male, age)["bone_age_sds"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((-1, True, 60), "bone_age_months"),
        ((241, True, 60), "bone_age_months"),
        ((float("nan"), True, 60), "bone_age_months"),
        ((60, True, -0.5), "chronological_age_months"),
        ((60, True, 300), "chronological_age_months"),
        ((60, "M", 60), "male must be True/False"),
        ((60, 1, 60), "male must be True/False"),
        (([60, 70], True, 60), "one child"),
    ],
)
def test_readout_rejects_invalid_input(arguments, message):
    with pytest.raises(ValueError, match=message):
        clinical.clinical_readout(*arguments)


def test_clinical_table_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 bone ages but 1 chronological"):
        clinical.clinical_table([60, 70], True, [60])
