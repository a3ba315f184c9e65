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
