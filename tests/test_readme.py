"""README promises: the two commands, CI running the README's test command, numbers read from files."""

import re

from utils import config, report

README = (config.PROJECT_ROOT / "README.md").read_text()


def test_readme_gives_the_run_and_test_commands_and_ci_runs_the_test_one():
    commands = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    assert "make run" in commands and "make test" in commands
    assert re.search(r"^make test\b", (config.PROJECT_ROOT / ".ci" / "run").read_text(), re.M)


def test_readme_results_table_is_the_committed_rsna100_metrics():
    block = re.search(r"<!-- results: (\S+) -->\n(.*?)<!-- /results -->", README, re.S)
    assert block, "README has no results block"
    metrics = report.read_metrics(config.PROJECT_ROOT / block.group(1))
    assert block.group(2).strip() == report.results_markdown(metrics).strip()


def _example_lines() -> list[str]:
    """The commands of the README's bash blocks, one per line."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_examples_write_only_to_their_own_run_or_a_temporary_path():
    """Copying an example must not overwrite committed files: results/rsna100/, models/rsna100/,
    the root Report.pdf (only the benchmark command itself writes those) or files in the repository."""
    benchmark = {".venv/bin/python -m utils.pipeline --preset rsna100", "make run PRESET=rsna100"}
    rsna100_runs = [line.split("#")[0].strip() for line in _example_lines()
                    if ("utils.pipeline" in line or "make run" in line) and "rsna100" in line]
    assert rsna100_runs, "the README shows no rsna100 command"
    for command in rsna100_runs:
        if command in benchmark or re.search(r"--sweep |--folds ", command):
            continue  # a sweep's runs are named after their values and never replace the root Report.pdf
        assert re.search(r"-p run_name (?!rsna100\b)\S+", command), f"{command}: writes into results/rsna100/"
        assert "-p report_at_root false" in command, f"{command}: replaces the root Report.pdf"
    folder_prediction = [line for line in _example_lines() if "utils.predict" in line and "rsna-fullres-sample --out" in line]
    papermill = [line for line in _example_lines() if line.startswith(".venv/bin/papermill")]
    assert folder_prediction and papermill
    for line in folder_prediction:
        assert re.search(r"--out /tmp/", line), line
    for line in papermill:
        assert line.split()[2].startswith("/tmp/") and "run_name:" in line, line


def test_the_jupyter_commands_the_readme_shows_are_installed():
    requirements = (config.PROJECT_ROOT / "requirements.txt").read_text()
    if ".venv/bin/jupyter lab" in README:
        assert re.search(r"^jupyterlab==", requirements, re.M)
    assert re.search(r"^nbconvert==", requirements, re.M) and re.search(r"^papermill==", requirements, re.M)
