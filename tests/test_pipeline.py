"""The runner's own logic (fast) and the whole study executed on the tiny `ci` preset (slow)."""

import json
import os
import subprocess
import sys

import pytest

from utils import config, figures, pipeline


def test_overrides_are_read_as_yaml():
    assert pipeline.parse_overrides([("epochs", "5"), ("dataset", "../x"), ("tta", "true")]) == {
        "epochs": 5, "dataset": "../x", "tta": True,
    }


def test_stage_selection_keeps_study_order():
    assert pipeline.select_stages("04,02") == ["02_preprocessing", "04_evaluation"]
    assert pipeline.select_stages(None) == pipeline.STAGES
    with pytest.raises(ValueError, match="unknown stage '07'"):
        pipeline.select_stages("07")


def test_tests_run_outside_the_repository():
    assert not config.results_root().is_relative_to(config.PROJECT_ROOT)
    assert not config.models_root().is_relative_to(config.PROJECT_ROOT)


def test_runner_refuses_unknown_parameter_before_running_anything(capsys):
    assert pipeline.main(["--preset", "ci", "-p", "epoch", "1", "-p", "run_name", "never_made"]) == 1
    assert "unknown parameter" in capsys.readouterr().err
    assert not (config.results_root() / "never_made").exists()


@pytest.mark.parametrize(
    "name, value, message",
    [("epochs", "abc", "epochs: expected an integer >= 1, got 'abc'"),
     ("learning_rate", "-1", "learning_rate: expected a number > 0.0"),
     ("batch_size", "0", "batch_size: expected an integer from 1"),
     ("run_name", "../x", "run_name: expected a plain name"),
     ("split_fractions", "{train: 0.85, test: 0.15}", "split_fractions: "),
     ],
)
def test_runner_refuses_bad_values_before_any_stage(capsys, name, value, message):
    arguments = ["--preset", "ci", "-p", name, value]
    if name != "run_name":
        arguments += ["-p", "run_name", "never_made"]
    assert pipeline.main(arguments) == 1
    assert message in capsys.readouterr().err
    assert not (config.results_root() / "never_made").exists() and not (config.results_root().parent / "x").exists()


RUN = "ci_pipeline_test"


@pytest.fixture(scope="module")
def ci_run():
    """One full run of the ci preset through the runner, as `make run` does for demo."""
    command = [sys.executable, "-m", "utils.pipeline", "--preset", "ci", "-p", "run_name", RUN, "--timeout", "900"]
    before = _git_status()
    completed = subprocess.run(command, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=1800)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert _git_status() == before, "a run of the tests wrote into the repository"
    return config.RunPaths(RUN)


def _git_status() -> str:
    completed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=config.PROJECT_ROOT,
                               capture_output=True, text=True)
    return completed.stdout if completed.returncode == 0 else "(not a git checkout)"


@pytest.mark.slow
def test_runner_writes_every_product(ci_run):
    for stage in [*pipeline.STAGES, "bone-age"]:
        assert (ci_run.notebooks / f"{stage}.ipynb").exists()
        assert (ci_run.notebooks / f"{stage}.html").stat().st_size > 10_000
    for figure in figures.FIGURES.values():
        if not figure.optional:
            assert (ci_run.figures / figure.file_name).stat().st_size > 5_000, figure.name
    assert ci_run.report.read_bytes().startswith(b"%PDF")
    assert ci_run.model.exists() and ci_run.model_card.exists() and ci_run.onnx_model.exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", pipeline.STAGES)
def test_each_stage_shows_every_figure_it_saves(ci_run, stage):
    import nbformat

    notebook = nbformat.read(ci_run.notebook(stage), as_version=4)
    shown = sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
                for output in cell.get("outputs", []))
    saved = [figure for figure in figures.of_stage(stage) if (ci_run.figures / figure.file_name).exists()]
    assert shown == len(saved), f"{stage}: {shown} images shown, {len(saved)} figures saved"


@pytest.mark.slow
def test_metrics_follow_the_schema(ci_run):
    metrics = json.loads(ci_run.metrics.read_text())
    assert metrics["schema_version"] == 1
    for key in ["mae", "rmse", "mse", "pearson_r", "r2", "bias", "within_6_pct", "within_12_pct",
                "within_18_pct", "within_24_pct", "baseline_mae_mean_predictor", "by_age_band", "by_sex",
                "prediction_interval", "timing", "run", "dataset"]:
        assert key in metrics, key
    assert metrics["run"]["parameters"]["run_name"] == RUN
    splits = metrics["dataset"]["splits"]
    assert sum(splits.values()) == metrics["dataset"]["n_images"] and metrics["n"] == splits["test"]
    # The ci run is small, but it must learn: clearly better than predicting the training mean.
    assert metrics["mae"] < 0.9 * metrics["baseline_mae_mean_predictor"]


@pytest.mark.slow
def test_failing_cell_names_notebook_and_cell_and_keeps_partial_notebook(tmp_path):
    run_name = "ci_failure_test"
    # A dataset folder that does not exist makes the first code cell after the parameters fail.
    command = [sys.executable, "-m", "utils.pipeline", "--preset", "ci", "--stages", "01",
               "-p", "run_name", run_name, "-p", "dataset", str(tmp_path / "missing")]
    completed = subprocess.run(command, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 1
    assert "01_eda.ipynb failed in cell" in completed.stderr and "does not exist" in completed.stderr
    partial = config.RunPaths(run_name).notebook("01_eda")
    assert partial.exists() and "does not exist" in partial.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [*pipeline.STAGES, "bone-age"])
def test_nbconvert_executes_each_notebook_as_users_ci_does(stage, tmp_path):
    """`jupyter nbconvert --execute` runs each notebook in its own folder with the ci preset.

    The stages run in study order (pytest keeps the parameter order), each reading what the
    previous one wrote to results/ci/.
    """
    pipeline.ensure_kernel()
    source = pipeline.SUMMARY_NOTEBOOK if stage == "bone-age" else pipeline.NOTEBOOKS_DIR / f"{stage}.ipynb"
    environment = {**os.environ, "BONE_AGE_PRESET": "ci", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", str(source),
               "--output-dir", str(tmp_path), "--ExecutePreprocessor.timeout=600",
               f"--ExecutePreprocessor.kernel_name={pipeline.KERNEL_NAME}"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / source.name).exists()


def test_model_card_command_reproduces_the_overrides():
    import shlex

    from utils import model_card

    overrides = {"run_name": "x y", "epochs": 60, "tta": "shift_flip", "split_fractions": {"train": 0.7, "test": 0.3}}
    words = shlex.split(model_card.run_command("rsna100", overrides))
    assert words[:5] == ["python", "-m", "utils.pipeline", "--preset", "rsna100"]
    pairs = [(words[index + 1], words[index + 2]) for index in range(5, len(words), 3)]
    assert pipeline.parse_overrides(pairs) == overrides
