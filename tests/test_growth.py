"""utils.growth: the chart's reference band, visits read from a CSV, bone-age velocity on hand-computed visits."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from utils import clinical, growth, plots


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_velocity_of_hand_computed_visits():
    # A girl seen at 10 y, 11 y and 12 y 6 m. Bone ages 118, 130, 148 months: 12 months of bone age
    # in 12 months of age, then 18 in 18: velocity 1.0 both times.
    # Intervals: ±16.45, ±16.45, ±10 months (90%, i.e. ±1.645 σ with σ = 10, 10, 6.08).
    # Velocity intervals: ± sqrt(16.45² + 16.45²) / 12 = ± 1.938651 and ± sqrt(16.45² + 10²) / 18 = ± 1.069502.
    rates = growth.velocity([120, 132, 150], [118, 130, 148], low=[101.55, 113.55, 138], high=[134.45, 146.45, 158])
    assert np.isnan(rates.loc[0]).all()
    assert rates["months_since_previous"].tolist()[1:] == [12.0, 18.0]
    np.testing.assert_allclose(rates["bone_age_velocity"][1:], [1.0, 1.0])
    np.testing.assert_allclose(rates["bone_age_velocity_low"][1:], [1 - 1.938651, 1 - 1.069502], atol=1e-5)
    np.testing.assert_allclose(rates["bone_age_velocity_high"][1:], [1 + 1.938651, 1 + 1.069502], atol=1e-5)


def test_velocity_slower_than_age_and_a_clipped_interval():
    # 60 -> 66 months of bone age over 12 months of age: 0.5. An uneven interval counts with its larger
    # side (66: 58..72, so 8): ± sqrt(6² + 8²) / 12 = ± 10/12. Clipped at 240 (236: 222..240), the
    # lower side (14) is the one left whole: ± sqrt(10² + 14²) / 12.
    rates = growth.velocity([48, 60], [60, 66], low=[54, 58], high=[66, 72])
    assert rates.loc[1, "bone_age_velocity"] == pytest.approx(0.5)
    assert rates.loc[1, "bone_age_velocity_high"] - 0.5 == pytest.approx(math.hypot(6, 8) / 12)
    clipped = growth.velocity([200, 212], [230, 236], low=[220, 222], high=[240, 240])
    assert clipped.loc[1, "bone_age_velocity_high"] - 0.5 == pytest.approx(math.hypot(10, 14) / 12)


def test_velocity_skips_visits_without_an_age_and_needs_increasing_ages():
    rates = growth.velocity([100, 110, 124], [100, np.nan, 121])
    assert np.isnan(rates.loc[1, "bone_age_velocity"])
    assert rates.loc[2, "bone_age_velocity"] == pytest.approx(21 / 24)
    assert rates.loc[2, "months_since_previous"] == 24
    assert rates["bone_age_velocity_low"].isna().all()  # no intervals given
    with pytest.raises(ValueError, match="greater ages"):
        growth.velocity([120, 120], [118, 125])


def test_reference_band_is_age_plus_minus_two_sd():
    band = growth.reference_band(True).set_index("age_months")
    assert band.loc[72.0, "low_months"] == pytest.approx(72 - 2 * 9.17)
    assert band.loc[72.0, "high_months"] == pytest.approx(72 + 2 * 9.17)
    assert (band["mean_months"] == band.index).all()
    assert band["tabulated"].sum() == 205 and band.index.max() == 240  # boys' table ends at 204 months
    assert growth.reference_band(False)["tabulated"].sum() == 193  # girls': 192


def write_visits(folder, rows, header="patient,id,path,sex,chronological_age_months"):
    path = folder / "visits.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_read_visits_resolves_paths_and_sorts_by_patient_then_age(tmp_path):
    csv = write_visits(tmp_path, ["b,b2,img/b2.png,F,130", "a,,img/a1.png,male,90", "b,b1,img/b1.png,F,118"])
    visits = growth.read_visits(csv)
    assert visits["id"].tolist() == ["b1", "b2", "a1"]  # patients in order of appearance, each by age
    assert visits["path"].iloc[0] == str((tmp_path / "img" / "b1.png").resolve())
    assert visits["male"].tolist() == [False, False, True]
    assert visits["line"].tolist() == [4, 2, 3]


@pytest.mark.parametrize(
    "rows, message",
    [
        (["a,a1,x.png,X,100"], "line 2: unknown sex 'X'"),
        (["a,a1,x.png,F,300"], "line 2: chronological_age_months '300'"),
        (["a,a1,x.png,F,100", "a,a2,y.png,M,112"], "patient a: both sexes"),
        (["a,a1,x.png,F,100", "a,a2,y.png,F,100"], "patient a: two visits at the same age"),
        (["a,a1,x.png,F,100", "b,a1,y.png,F,100"], "duplicate id 'a1'"),
        ([",a1,x.png,F,100"], "line 2: patient missing"),
    ],
)
def test_read_visits_names_the_bad_rows(tmp_path, rows, message):
    with pytest.raises(growth.VisitsError, match=message):
        growth.read_visits(write_visits(tmp_path, rows))


def test_read_visits_needs_its_columns(tmp_path):
    with pytest.raises(growth.VisitsError, match="missing chronological_age_months"):
        growth.read_visits(write_visits(tmp_path, ["a,a1,x.png,F"], header="patient,id,path,sex"))


def predicted_visits() -> pd.DataFrame:
    return pd.DataFrame({
        "patient": ["a", "a", "b"], "id": ["a1", "a2", "b1"], "male": [False, False, True],
        "chronological_age_months": [120.0, 132.0, 72.0], "boneage_pred": [118.0, 130.0, 96.0],
        "boneage_low": [101.55, 113.55, 80.0], "boneage_high": [134.45, 146.45, 112.0],
        "quality_flag": ["ok", "ok", "ok"],
    })


def test_visit_readings_give_the_clinical_reading_and_velocity_per_child():
    readings = growth.visit_readings(predicted_visits())
    expected = clinical.clinical_table([118, 130, 96], [False, False, True], [120, 132, 72])
    np.testing.assert_allclose(readings["bone_age_sds"], expected["bone_age_sds"])
    assert readings["category"].tolist() == ["normal", "normal", "advanced"]
    assert readings["bone_age_velocity"].iloc[1] == pytest.approx(1.0)
    assert np.isnan(readings["bone_age_velocity"].iloc[2])  # child b's first visit


def test_visit_readings_leave_a_visit_without_an_age_empty():
    visits = predicted_visits()
    visits.loc[0, ["boneage_pred", "boneage_low", "boneage_high"]] = np.nan
    readings = growth.visit_readings(visits)
    assert readings.loc[0, ["bone_age_sds", "category"]].isna().all()
    assert np.isnan(readings.loc[1, "bone_age_velocity"])  # no earlier visit with an age


def test_growth_chart_draws_each_child_with_its_band_visits_and_reading(tmp_path):
    readings = growth.visit_readings(predicted_visits())
    children = [growth.chart_child(readings[readings["patient"] == patient], f"patient {patient}", 90.0)
                for patient in ("a", "b")]
    text = "\n".join(children[0]["lines"])
    assert "SDS -0.17" in text and "normal: within ±2 SD" in text and "bone-age velocity 1.00 mo/mo" in text
    figure = growth.growth_chart(children)
    panels = [axes for axes in figure.axes if axes.has_data()]
    assert len(panels) == 2
    for axes in panels:
        assert axes.get_xlabel() == "chronological age (years)" and axes.get_ylabel() == "bone age (years)"
        labels = axes.get_legend_handles_labels()[1]
        assert any("±2 SD" in label for label in labels) and any("latest visit" in label for label in labels)
    assert "earlier visits (1)" in panels[0].get_legend_handles_labels()[1]
    assert plots.save_figure(figure, tmp_path / "chart.png").stat().st_size > 20_000


def test_chart_child_needs_a_visit_with_an_age():
    visits = predicted_visits().iloc[:1].assign(boneage_pred=np.nan)
    with pytest.raises(ValueError, match="no visit with a bone age"):
        growth.chart_child(visits, "a", 90.0)


def test_a_flagged_visit_keeps_its_age_but_gets_no_reading_and_no_velocity():
    visits = predicted_visits()
    visits.loc[0, "quality_flag"] = "rotated"
    readings = growth.visit_readings(visits)
    assert readings.loc[0, "boneage_pred"] == 118.0 and readings.loc[0, ["bone_age_sds", "category"]].isna().all()
    assert np.isnan(readings.loc[1, "bone_age_velocity"])  # the only earlier visit is flagged
    child = growth.chart_child(readings[readings["patient"] == "a"].iloc[::-1].iloc[:1].assign(quality_flag="inverted"),
                               "a", 90.0)
    assert any("quality flag 'inverted': no clinical reading" in line for line in child["lines"])
    assert not any("SDS" in line and "centile" in line for line in child["lines"])
