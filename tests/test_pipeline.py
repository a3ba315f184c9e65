"""The runner's own logic (fast) and the whole study executed on the tiny `ci` preset (slow)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from utils import config, figures, pipeline
from utils.parameters import load_parameters


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
        if not figure.optional and figure.stage in pipeline.STAGES:  # 06_comparison draws for a sweep
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
    assert metrics["schema_version"] == 2
    for key in ["mae", "rmse", "within_12_pct"]:
        assert metrics["ci"][key]["low"] <= metrics[key] <= metrics["ci"][key]["high"], key
    interval = metrics["prediction_interval"]
    assert interval["ci"]["coverage_pct"]["low"] <= interval["coverage_pct"] <= interval["ci"]["coverage_pct"]["high"]
    assert all("ci" in entry for entry in [*metrics["by_age_band"].values(), *metrics["by_sex"].values()])
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
def test_the_run_writes_its_findings_card_and_a_quiet_record(ci_run):
    findings = json.loads(ci_run.findings.read_text())
    assert findings["gradcam"]["blank_signed"] == 0 and len(findings["gallery"]) == 12
    external = json.loads(ci_run.external_check.read_text())
    assert external["available"] is False and "synthetic" in external["reason"]  # the ci model learnt synthetic hands
    card = ci_run.model_card_markdown.read_text()
    assert "## Intended use" in card and "## Known failure modes" in card
    import nbformat

    for stage in [*pipeline.STAGES, "bone-age"]:
        notebook = nbformat.read(ci_run.notebook(stage), as_version=4)
        outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
        streams = "".join(output.get("text", "") for output in outputs if output.get("output_type") == "stream")
        for noise in ["oneDNN", "absl::InitializeLog", "Warning:", "Epoch 1/"]:
            assert noise not in streams, (stage, noise)
        results = [output["data"].get("text/plain", "") for output in outputs if output.get("output_type") == "execute_result"]
        assert not any(text.startswith("PosixPath(") for text in results), stage


@pytest.mark.slow
def test_failing_cell_names_notebook_and_cell_and_keeps_partial_notebook(tmp_path):
    run_name = "ci_failure_test"
    # A dataset folder that does not exist makes the first code cell after the parameters fail.
    command = [sys.executable, "-m", "utils.pipeline", "--preset", "ci", "--stages", "01",
               "-p", "run_name", run_name, "-p", "dataset", str(tmp_path / "missing")]
    completed = subprocess.run(command, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 1
    assert "01_eda.ipynb failed in cell" in completed.stderr and "does not exist" in completed.stderr
    # The attempt is kept under its own name; the stage's record is only written by a success.
    partial = config.RunPaths(run_name).failed_notebook("01_eda")
    assert partial.exists() and "does not exist" in partial.read_text()
    assert partial.with_suffix(".html").exists() and not config.RunPaths(run_name).notebook("01_eda").exists()
    assert str(partial) in completed.stderr and "Traceback" not in completed.stderr


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


# ---- failures of a stage, one run per name (tiny notebooks: a kernel start each, no study) ----------

def tiny_notebook(path, code: str):
    """A stage-like notebook: the parameters cell papermill fills, a first cell, then `code`."""
    # nbformat is imported where it is used: with jsonschema's format grammars it takes seconds,
    # which every test worker would pay at collection.
    import nbformat

    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("preset = 'ci'\noverrides = {}")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell("import os, time"), nbformat.v4.new_code_cell(code)]
    notebook.metadata["kernelspec"] = {"name": pipeline.KERNEL_NAME, "display_name": "Python (bone-age)", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


STAGE_PARAMETERS = {"preset": "ci", "overrides": {}}
# The runner with its stage notebooks taken from a folder of tiny ones (argv[1]).
RUNNER = "import sys, pathlib; from utils import pipeline; pipeline.NOTEBOOKS_DIR = pathlib.Path(sys.argv[1]); " \
         "sys.exit(pipeline.main(sys.argv[2:]))"


def start_runner(notebooks, run_name, *arguments):
    command = [sys.executable, "-c", RUNNER, str(notebooks), "--preset", "ci", "-p", "run_name", run_name,
               "--no-report", *arguments]
    return subprocess.Popen(command, cwd=config.PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_kernel_ends_the_run_with_one_message_and_status_1(tmp_path):
    pipeline.ensure_kernel()
    tiny_notebook(tmp_path / "02_preprocessing.ipynb", "os.kill(os.getpid(), 9)  # as the out-of-memory killer does")
    run_name = "kernel_kill_test"
    runner = start_runner(tmp_path, run_name, "--stages", "02")
    _, stderr = runner.communicate(timeout=120)
    failed = config.RunPaths(run_name).failed_notebook("02_preprocessing")
    assert runner.returncode == 1, stderr
    assert "02_preprocessing.ipynb failed in cell 3" in stderr and "os.kill(os.getpid(), 9)" in stderr
    assert pipeline.DEAD_KERNEL in stderr and str(failed) in stderr
    assert "Traceback" not in stderr and "DeadKernelError" not in stderr
    assert failed.exists() and failed.with_suffix(".html").exists()
    assert not config.RunPaths(run_name).notebook("02_preprocessing").exists()
    assert not config.RunPaths(run_name).lock.exists()


@pytest.mark.slow
def test_a_cell_past_the_timeout_is_stopped_and_named(tmp_path):
    pipeline.ensure_kernel()
    source = tiny_notebook(tmp_path / "sleepy.ipynb", "time.sleep(120)")
    output = tmp_path / "out" / "sleepy.ipynb"
    started = time.monotonic()
    with pytest.raises(pipeline.StageFailed) as failure:
        pipeline.execute_notebook(source, output, STAGE_PARAMETERS, timeout=2)
    assert time.monotonic() - started < 60
    message = str(failure.value)
    assert "sleepy.ipynb failed in cell 3 (execution count" in message and "time.sleep(120)" in message
    assert "the cell ran longer than --timeout 2 s" in message and failure.value.status == 1
    assert config.notebook_attempt(output, "failed").exists() and not output.exists()


@pytest.mark.slow
def test_a_failed_rerun_keeps_the_finished_record_and_a_success_replaces_it(tmp_path):
    pipeline.ensure_kernel()
    output = tmp_path / "out" / "03_training.ipynb"
    failed = config.notebook_attempt(output, "failed")
    pipeline.execute_notebook(tiny_notebook(tmp_path / "good.ipynb", "print('trained')"), output, STAGE_PARAMETERS, 60)
    record, html = output.read_bytes(), output.with_suffix(".html").read_bytes()
    with pytest.raises(pipeline.StageFailed, match="ValueError: batch_size differs") as failure:
        pipeline.execute_notebook(tiny_notebook(tmp_path / "bad.ipynb", "raise ValueError('batch_size differs')"),
                                  output, STAGE_PARAMETERS, 60)
    assert output.read_bytes() == record and output.with_suffix(".html").read_bytes() == html
    assert failed.exists() and failed.with_suffix(".html").exists() and "batch_size differs" in failed.read_text()
    assert f"partly executed notebook: {failed}" in str(failure.value) and "03_training.ipynb is kept" in str(failure.value)
    pipeline.execute_notebook(tmp_path / "good.ipynb", output, STAGE_PARAMETERS, 60)
    assert not failed.exists() and not failed.with_suffix(".html").exists()
    assert not config.notebook_attempt(output, "running").exists()


@pytest.mark.slow
def test_ctrl_c_ends_the_run_with_status_130_and_says_from_which_epoch_it_resumes(tmp_path):
    pipeline.ensure_kernel()
    run_name = "ctrl_c_test"
    paths = config.RunPaths(run_name)
    # Three completed epochs in the checkpoints, as a training interrupted in epoch 4 leaves them.
    (paths.checkpoints / "ours").mkdir(parents=True)
    (paths.checkpoints / "ours" / "state.json").write_text(json.dumps({"history": {"epoch": [1, 2, 3]}}))
    tiny_notebook(tmp_path / "03_training.ipynb", "time.sleep(120)")
    runner = start_runner(tmp_path, run_name, "--stages", "03")
    running = config.notebook_attempt(paths.notebook("03_training"), "running")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and "time.sleep" not in _running_cell_source(running):
        time.sleep(0.5)
    runner.send_signal(signal.SIGINT)
    _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 130, stderr
    assert "03_training.ipynb failed in cell 3" in stderr and "interrupted (Ctrl-C)" in stderr
    epochs = load_parameters("ci", {}).epochs
    assert f"rerun the same command to resume from epoch 4 (3 of {epochs} epochs done" in stderr
    assert str(paths.failed_notebook("03_training")) in stderr and "Traceback" not in stderr
    assert not paths.lock.exists()


def _running_cell_source(notebook_path) -> str:
    """The code of the cell papermill is running in a notebook it is writing, or ""."""
    import nbformat

    try:
        cells = nbformat.read(notebook_path, as_version=4).cells
    except Exception:
        return ""
    running = [cell for cell in cells if cell.get("metadata", {}).get("papermill", {}).get("status") == "running"]
    return running[-1].source if running else ""


HOLD_LOCK = "import sys, time; from utils import config, pipeline\n" \
            "with pipeline.run_lock(config.RunPaths(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)"


def test_a_second_run_of_the_same_name_is_refused_at_once_naming_the_holder(capsys):
    run_name = "lock_test"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, run_name], cwd=config.PROJECT_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        # (--stages and --timeout bound what a runner that ignored the lock would do.)
        assert pipeline.main(["--preset", "ci", "-p", "run_name", run_name, "--stages", "01", "--timeout", "5"]) == 1
        assert time.monotonic() - started < 10
        error = capsys.readouterr().err
        assert f"run '{run_name}' is already running: PID {holder.pid} (started 20" in error
        assert "another run_name" in error
        assert not config.RunPaths(run_name).notebooks.exists()  # no stage ran, nothing was written
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_killed_run_is_taken_over_with_a_note(capsys):
    paths = config.RunPaths("stale_lock_test")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, paths.run_name], cwd=config.PROJECT_ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)  # no chance to remove its lock file
    holder.wait()
    assert paths.lock.exists()
    with pipeline.run_lock(paths):
        assert json.loads(paths.lock.read_text())["pid"] == os.getpid()
        # Within one process too: a second holder is refused.
        with pytest.raises(pipeline.RunLocked, match=f"PID {os.getpid()}"):
            with pipeline.run_lock(paths):
                pass
    assert f"taking over the lock of run 'stale_lock_test' from PID {holder.pid}" in capsys.readouterr().out
    assert not paths.lock.exists()
