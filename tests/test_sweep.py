"""Many runs at once (utils/sweep.py, `python -m utils.pipeline --sweep/--folds`): expansion and names
(fast), a two-seed `ci` sweep on a local Dask cluster, a failing member, an ensemble of the two (slow)."""

import json
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from utils import config, ensemble, evaluation, pipeline, sweep


# ---- expansion, names, commands ----------------------------------------------------------------

def test_axes_are_read_as_yaml_and_bad_ones_named():
    assert sweep.parse_axis("seed=1,2,3") == ("seed", [1, 2, 3])
    assert sweep.parse_axis("widths=[32,64],[48,96]") == ("widths", [[32, 64], [48, 96]])
    assert sweep.parse_axis("loss=l1,huber") == ("loss", ["l1", "huber"])
    for text, message in [("seed", "expected NAME=VALUE"), ("seed=", "expected NAME=VALUE"),
                          ("epoch=1,2", "unknown parameter 'epoch'"), ("run_name=a,b", "run_name cannot be swept"),
                          ("seed=1,1", "a value is given twice")]:
        with pytest.raises(ValueError, match=message):
            sweep.parse_axis(text)


def test_a_seed_sweep_is_ordinary_runs_on_the_base_runs_data():
    plan = sweep.plan("ci", {"epochs": 2}, [("seed", [1, 2])])
    assert plan.name == "ci-sweep-seed" and [member.run_name for member in plan.members] == ["ci-seed1", "ci-seed2"]
    first = plan.members[0]
    # The seed changes the training only: the data and split stay the base run's (data_seed 42).
    assert first.overrides == {"epochs": 2, "data_seed": 42, "seed": 1, "run_name": "ci-seed1"}
    words = shlex.split(first.command("ci", ["--stages", "01,02"]))
    assert words[:5] == ["python", "-m", "utils.pipeline", "--preset", "ci"] and words[-2:] == ["--stages", "01,02"]
    pairs = [(words[index + 1], words[index + 2]) for index in range(5, len(words) - 2, 3)]
    assert pipeline.parse_overrides(pairs) == first.overrides
    # An explicit data_seed is the user's; a preset that copies its report to the root does not, in a sweep.
    assert "data_seed" not in sweep.plan("ci", {}, [("image_size", [48, 64])]).members[0].overrides
    assert sweep.plan("rsna100", {}, [("seed", [1])]).members[0].overrides["report_at_root"] is False


def test_every_combination_gets_a_readable_name():
    plan = sweep.plan("ci", {"run_name": "mine"}, [("seed", [1, 2]), ("loss", ["l1", "huber"]),
                                                   ("widths", [[8, 16]])])
    assert plan.name == "mine-sweep-seed-loss-widths"
    assert [member.run_name for member in plan.members] == [
        "mine-seed1-loss_l1-widths8_16", "mine-seed1-loss_huber-widths8_16",
        "mine-seed2-loss_l1-widths8_16", "mine-seed2-loss_huber-widths8_16"]
    assert sweep.member_name("ci", {"augment": False, "init_weights": None}) == "ci-augment_false-init_weights_null"


def test_folds_make_k_runs_of_one_cross_validation():
    plan = sweep.plan("ci", {}, [], folds=3)
    assert plan.name == "ci-sweep-folds3"
    assert [member.run_name for member in plan.members] == ["ci-fold1of3", "ci-fold2of3", "ci-fold3of3"]
    assert [member.overrides for member in plan.members][1] == {"folds": 3, "fold": 2, "run_name": "ci-fold2of3"}
    both = sweep.plan("ci", {}, [("seed", [1, 2])], folds=2)
    assert [member.run_name for member in both.members][:2] == ["ci-seed1-fold1of2", "ci-seed1-fold2of2"]
    for arguments, message in [(([], 1), "at least 2 folds"), (([("fold", [1])], 3), "sets fold and folds itself"),
                               (([], None), "nothing to sweep"),
                               (([("seed", [1]), ("seed", [2])], None), "names seed more than once")]:
        with pytest.raises(ValueError, match=message):
            sweep.plan("ci", {}, *arguments)


def test_invalid_combinations_are_all_named_before_anything_runs():
    with pytest.raises(ValueError) as caught:
        sweep.plan("ci", {}, [("image_size", [48, 8, 4])])
    message = str(caught.value)
    assert "nothing was run" in message and "ci-image_size8:" in message and "ci-image_size4:" in message
    assert "image_size: expected an integer from 16 to 1024, got 8" in message and "ci-image_size48" not in message


def test_the_runner_refuses_a_bad_sweep_before_any_run(capsys):
    assert pipeline.main(["--preset", "ci", "--sweep", "epoch=1,2"]) == 1
    assert "unknown parameter 'epoch'" in capsys.readouterr().err
    assert pipeline.main(["--preset", "ci", "--sweep", "image_size=48,8", "-p", "run_name", "never_swept"]) == 1
    assert "never_swept-image_size8:" in capsys.readouterr().err
    assert pipeline.main(["--preset", "ci", "--jobs", "2"]) == 1
    assert "--jobs and --scheduler run the runs of a sweep" in capsys.readouterr().err
    assert not any(config.results_root().glob("never_swept*"))


def test_each_local_run_gets_its_share_of_the_cores_or_one_gpu(monkeypatch):
    assert sweep.thread_limits(2, cpus=2) == {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
                                              "TF_NUM_INTEROP_THREADS": "1"}
    assert sweep.thread_limits(2, cpus=8)["TF_NUM_INTRAOP_THREADS"] == "4"
    assert sweep.thread_limits(4, cpus=2)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0, 2")
    assert sweep.visible_gpus() == ["0", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert sweep.visible_gpus() == []


def test_a_failed_runs_message_is_the_runners_own():
    output = ("== 01_eda\nExecuting: 100%|###| 3/3\nerror: 01_eda.ipynb failed in cell 5 (execution count 4: x = 1): "
              "ValueError: nope\n  partly executed notebook: /r/01_eda.failed.ipynb (and .html)\nmore\n")
    assert sweep.failure_message(output) == ("01_eda.ipynb failed in cell 5 (execution count 4: x = 1): ValueError: "
                                             "nope\npartly executed notebook: /r/01_eda.failed.ipynb (and .html)")
    assert sweep.failure_message("a\nb\nKilled\n") == "a\n  b\n  Killed"


# ---- a two-seed sweep of the ci preset on a local Dask cluster ---------------------------------

def _git_status() -> str:
    completed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=config.PROJECT_ROOT,
                               capture_output=True, text=True)
    return completed.stdout if completed.returncode == 0 else "(not a git checkout)"


@pytest.fixture(scope="module")
def seed_sweep():
    before = _git_status()
    command = [sys.executable, "-m", "utils.pipeline", "--preset", "ci", "--sweep", "seed=1,2", "--jobs", "2",
               "--no-report", "--timeout", "1200"]
    completed = subprocess.run(command, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=3600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert _git_status() == before, "a sweep of the tests wrote into the repository"
    return completed


@pytest.mark.slow
def test_both_runs_finish_with_a_line_as_each_starts_and_ends(seed_sweep):
    for index, run in enumerate(["ci-seed1", "ci-seed2"], start=1):
        paths = config.RunPaths(run)
        assert paths.metrics.exists() and paths.model.exists() and paths.onnx_model.exists(), run
        assert f"[{index}/2] started {run} (tcp://127.0.0.1:" in seed_sweep.stdout
        assert f"[{index}/2] finished {run} in " in seed_sweep.stdout
    record = json.loads(config.RunPaths("ci-sweep-seed").sweep_record.read_text())
    assert [entry["status"] for entry in record["runs"]] == ["finished", "finished"] and record["jobs"] == 2
    assert len({entry["worker"] for entry in record["runs"]}) == 2, "the two runs ran side by side"
    assert record["runs"][1]["command"].endswith("-p data_seed 42 -p seed 2 -p run_name ci-seed2 --timeout 1200 --no-report")


@pytest.mark.slow
def test_the_comparison_table_is_each_runs_metrics_file(seed_sweep):
    paths = config.RunPaths("ci-sweep-seed")
    table = pd.read_csv(paths.comparison_table)
    assert list(table["run"]) == ["ci-seed1", "ci-seed2"] and list(table["seed"]) == [1, 2]
    for row in table.to_dict("records"):
        metrics = json.loads(config.RunPaths(row["run"]).metrics.read_text())
        for key in ("n", "mae", "rmse", "bias", "pearson_r", "within_12_pct"):
            assert row[key] == metrics[key], (row["run"], key)
        assert (row["mae_low"], row["mae_high"]) == (metrics["ci"]["mae"]["low"], metrics["ci"]["mae"]["high"])
        assert row["interval_coverage_pct"] == metrics["prediction_interval"]["coverage_pct"]
    # One data_seed: the same test images, so the difference is paired.
    first, second = (pd.read_csv(config.RunPaths(run).predictions) for run in ("ci-seed1", "ci-seed2"))
    expected = evaluation.paired_mae_difference(first["boneage"], first["boneage_pred"], second["boneage_pred"])
    assert (table.loc[1, "mae_vs_reference_low"], table.loc[1, "mae_vs_reference_high"]) == pytest.approx(
        (expected["low"], expected["high"]))
    assert "## Mean and SD over seeds" in paths.comparison_markdown.read_text()
    assert paths.figure("mae_per_run.png").exists() and paths.notebook(pipeline.COMPARISON).exists()


@pytest.mark.slow
def test_the_ensemble_of_the_two_runs_predicts_through_the_cli_and_its_onnx_matches_keras(seed_sweep):
    from utils.model import KerasBoneAgeModel
    from utils.onnx_runtime import OnnxBoneAgeModel

    out = config.models_root() / "ci-seeds-ensemble"
    made = subprocess.run([sys.executable, "-m", "utils.ensemble", "ci-seed1", "ci-seed2", "--out", str(out)],
                          cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    assert "ensemble of 2 runs" in made.stdout
    metrics = json.loads((out / config.METRICS_FILE).read_text())
    validation = metrics["ensemble_validation"]
    assert validation["n"] == metrics["dataset"]["splits"]["validation"] and set(validation["mae_by_member"]) == {
        "ci-seed1", "ci-seed2"}
    assert f"validation MAE {validation['mae']:.2f} months" in made.stdout
    # |mean of predictions - truth| <= mean of |prediction - truth| image by image: never worse than the members' mean.
    assert validation["mae"] <= np.mean(list(validation["mae_by_member"].values())) + 1e-6
    assert metrics["run"]["ensemble_of"] == ["ci-seed1", "ci-seed2"] and metrics["n"] == len(
        pd.read_csv(out / "predictions_test.csv"))
    card = json.loads((out / config.MODEL_CARD_FILE).read_text())
    assert card["command"].startswith("python -m utils.ensemble ci-seed1 ci-seed2 --out ")
    assert card["calibration"]  # its own interval, calibrated on the runs' calibration split
    images = np.random.default_rng(0).integers(0, 256, (16, 48, 48), dtype=np.uint8)
    male = np.arange(16) % 2
    np.testing.assert_allclose(OnnxBoneAgeModel(out / config.ONNX_FILE).predict(images, male),
                               KerasBoneAgeModel(out / config.MODEL_FILE).predict(images, male), atol=1e-3)
    path = next((config.SYNTHETIC_DIR / "n600_px128_seed42").rglob("*.png"))  # the runs' data (data_seed 42)
    predicted = subprocess.run([sys.executable, "-m", "utils.predict", str(path), "--sex", "M", "--model", str(out)],
                               cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    reading = json.loads(predicted.stdout)
    assert 0 <= reading["bone_age_months"] <= 240 and reading["model"].endswith("ci-seeds-ensemble/bone_age.onnx")


@pytest.mark.slow
def test_runs_of_other_preprocessing_are_not_ensembled(seed_sweep):
    ensemble.check_members(["ci-seed1", "ci-seed2"])
    paths = config.RunPaths("ci-seed2-other")
    for source, target in ((config.RunPaths("ci-seed2").metrics, paths.metrics),
                           (config.RunPaths("ci-seed2").split, paths.split),
                           (config.RunPaths("ci-seed2").training_summary, paths.training_summary),
                           (config.RunPaths("ci-seed2").model, paths.model)):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    metrics = json.loads(paths.metrics.read_text())
    metrics["run"]["parameters"]["contrast"] = "none"
    paths.metrics.write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="must share preprocessing: contrast is 'clahe' in ci-seed1 but 'none' in ci-seed2-other"):
        ensemble.check_members(["ci-seed1", "ci-seed2-other"])
    metrics["run"]["parameters"].update(contrast="clahe", fold=2, folds=5)
    paths.metrics.write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="must share the split: folds is 1 in ci-seed1 but 5 in ci-seed2-other"):
        ensemble.check_members(["ci-seed1", "ci-seed2-other"])


@pytest.mark.slow
def test_a_failing_member_is_reported_with_its_notebook_and_cell_and_the_other_finishes():
    # A folder that does not exist (relative to the project): the first cell after the parameters fails.
    missing = "no-such-dataset-folder"
    assert not (config.PROJECT_ROOT / missing).exists()
    command = [sys.executable, "-m", "utils.pipeline", "--preset", "ci", "--stages", "01", "--jobs", "2",
               "--sweep", f"dataset=synthetic,{missing}", "-p", "run_name", "failing"]
    completed = subprocess.run(command, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 1, completed.stdout[-3000:] + completed.stderr[-3000:]
    bad = sweep.member_name("failing", {"dataset": missing})
    assert bad == "failing-dataset_no-such-dataset-folder"
    assert f"FAILED {bad}" in completed.stdout
    assert "01_eda.ipynb failed in cell" in completed.stdout and "does not exist" in completed.stdout
    assert "[1/2] finished failing-dataset_synthetic" in completed.stdout
    assert config.RunPaths("failing-dataset_synthetic").notebook("01_eda").exists()
    record = json.loads(config.RunPaths("failing-sweep-dataset").sweep_record.read_text())
    assert [entry["status"] for entry in record["runs"]] == ["finished", "failed"]
    assert "01_eda.ipynb failed in cell" in record["runs"][1]["error"]
    assert f"failed: {bad}" in completed.stdout
