"""utils.rejection: the --reject-flagged policy and what it costs and buys, on hand-computed cases."""

import numpy as np
import pandas as pd
import pytest

from utils import rejection


def test_only_ok_is_accepted():
    assert rejection.is_rejected(["ok", "rotated", "blank", "inverted", "unusual"]).tolist() == [False, True, True, True, True]
    assert rejection.rejection_reason("ok") is None
    assert rejection.rejection_reason("rotated").startswith("quality flag 'rotated': the hand looks turned")


def test_rejected_reading_keeps_what_was_known_before_the_estimate():
    reading = {"file": "a.png", "bone_age_months": 120.0, "interval": {"low": 100, "high": 140}, "category": "normal",
               "bone_age_sds": 0.5, "quality_flag": "blank", "quality_score": 3.1, "sex": "female", "model": "m",
               "chronological_age_months": 118.0}
    rejected = rejection.rejected_reading(reading)
    assert rejected["bone_age_months"] is None and rejected["rejected"] is True
    assert {"interval", "category", "bone_age_sds"}.isdisjoint(rejected)
    assert (rejected["quality_flag"], rejected["chronological_age_months"], rejected["file"]) == ("blank", 118.0, "a.png")


def test_reject_rows_empties_the_values_of_flagged_rows_only():
    table = pd.DataFrame({"id": ["a", "b"], "boneage_pred": [100.0, 120.0], "category": ["normal", "delayed"],
                          "quality_flag": ["ok", "inverted"]})
    result = rejection.reject_rows(table, ["boneage_pred", "category"])
    assert result.loc[0, "boneage_pred"] == 100.0 and result.loc[0, "category"] == "normal"
    assert pd.isna(result.loc[1, "boneage_pred"]) and pd.isna(result.loc[1, "category"])
    assert pd.isna(result.loc[0, "rejection_reason"]) and "inverted" in result.loc[1, "rejection_reason"]
    assert table.loc[1, "boneage_pred"] == 120.0  # the input is not changed


def test_summary_of_hand_computed_errors():
    # Errors 0, 2, -4, 10 (the last flagged): MAE 4.0 for all, 2.0 for the three kept, 10 for the rejected one.
    summary = rejection.rejection_summary([100, 100, 100, 100], [100, 102, 96, 110], ["ok", "ok", "ok", "rotated"],
                                          low=[95, 95, 95, 95], high=[105, 105, 105, 105])
    assert (summary["n"], summary["n_rejected"], summary["rejected_pct"]) == (4, 1, 25.0)
    assert (summary["mae_all"], summary["mae_kept"], summary["mae_rejected"]) == (4.0, 2.0, 10.0)
    assert summary["mae_gain"] == 2.0 and summary["coverage_pct_all"] == 100.0
    low, high = summary["mae_gain_ci95"]
    assert low <= 2.0 <= high
    assert summary["by_flag"] == {"ok": {"n": 3, "mae": 2.0}, "rotated": {"n": 1, "mae": 10.0}}


def test_summary_without_flagged_images():
    summary = rejection.rejection_summary(np.arange(5.0), np.arange(5.0) + 1, ["ok"] * 5)
    assert summary["n_rejected"] == 0 and summary["mae_rejected"] is None
    assert summary["mae_gain"] == 0.0 and summary["mae_gain_ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="equally long"):
        rejection.rejection_summary([1, 2], [1], ["ok", "ok"])
