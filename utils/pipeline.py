"""Run the study end to end: the five stage notebooks, then bone-age.ipynb, then Report.pdf.

    python -m utils.pipeline --preset demo
    python -m utils.pipeline --preset rsna100 -p epochs 30 -p run_name rsna100_e30
    python -m utils.pipeline --preset ci --stages 03,04

Every notebook is executed by papermill with the same two parameters, `preset` and
`overrides`, so that one set of parameters (presets.yaml plus `-p` overrides) governs the
whole run. Executed notebooks (.ipynb and .html), figures and performance_metrics.json go to
results/<run_name>/, the model to models/<run_name>/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from utils import config
from utils.parameters import load_parameters
from utils.files import atomic_path, write_json_atomic

KERNEL_NAME = "bone-age"
NOTEBOOKS_DIR = config.PROJECT_ROOT / "notebooks"
STAGES = ["01_eda", "02_preprocessing", "03_training", "04_evaluation", "05_error_analysis"]
SUMMARY_NOTEBOOK = config.PROJECT_ROOT / "bone-age.ipynb"


class StageFailed(RuntimeError):
    """A notebook cell raised; the partly executed notebook is kept for inspection."""


def parse_overrides(pairs) -> dict:
    """`-p name value` pairs, each value read as YAML so that `-p epochs 5` is the number 5."""
    return {name: yaml.safe_load(value) for name, value in pairs or []}


def select_stages(stages: str | None) -> list[str]:
    """`--stages 03,04` (or full names) to the stage notebooks in study order."""
    if not stages:
        return list(STAGES)
    wanted = [item.strip() for item in stages.split(",") if item.strip()]
    selected = []
    for item in wanted:
        matches = [stage for stage in STAGES if stage == item or stage.split("_")[0] == item]
        if not matches:
            raise ValueError(f"unknown stage {item!r}; stages are: {', '.join(STAGES)}")
        selected.extend(matches)
    return [stage for stage in STAGES if stage in selected]


def ensure_kernel() -> None:
    """Register this environment's kernel as `bone-age` if it is not yet known to Jupyter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL_NAME, display_name="Python (bone-age)", prefix=sys.prefix)


def execute_notebook(source: Path, output: Path, preset: str, overrides: dict, timeout: int) -> float:
    """Execute one notebook with papermill; return its wall time in seconds."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source),
            str(output),
            parameters={"preset": preset, "overrides": overrides},
            kernel_name=KERNEL_NAME,
            cwd=str(source.parent),
            progress_bar=True,
            execution_timeout=timeout,
        )
    except PapermillExecutionError as error:
        raise StageFailed(
            f"{source.name} failed in cell {error.cell_index} (execution count {error.exec_count}): "
            f"{error.ename}: {error.evalue}\npartly executed notebook kept at {output}"
        ) from None
    finally:
        write_html(output)
    return time.perf_counter() - started


def write_html(notebook_path: Path) -> None:
    """An HTML copy beside the executed notebook, for readers without Jupyter."""
    if not notebook_path.exists():
        return
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook_path, as_version=4))
    with atomic_path(notebook_path.with_suffix(".html")) as temporary:
        temporary.write_text(body, encoding="utf-8")


def run(preset: str, overrides: dict, stages: list[str], timeout: int, report: bool = True) -> dict:
    """Execute the selected stages and, with the last stage, the summary notebook and the report."""
    parameters = load_parameters(preset, overrides)
    paths = config.RunPaths(parameters.run_name).make()
    ensure_kernel()
    # Quieter TensorFlow in the kernels, which inherit this environment.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"run {parameters.run_name!r} (preset {preset}) -> {paths.results}", flush=True)

    timings_path = paths.results / "stage_timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    # The summary page and the report gather every stage: rebuilt whenever the last stage runs.
    summarise = STAGES[-1] in stages
    notebooks = [(NOTEBOOKS_DIR / f"{stage}.ipynb", stage) for stage in stages]
    if summarise:
        notebooks.append((SUMMARY_NOTEBOOK, "bone-age"))
    for source, name in notebooks:
        print(f"== {name}", flush=True)
        seconds = execute_notebook(source, paths.notebooks / f"{name}.ipynb", preset, overrides, timeout)
        timings[name] = round(seconds, 1)
        write_json_atomic(timings_path, timings)
        print(f"== {name} done in {seconds:.0f} s", flush=True)

    if report and summarise:
        from utils.report import build_report

        build_report(paths.results, paths.report)
        print(f"report: {paths.report}")
        if parameters.report_at_root:
            with atomic_path(config.PROJECT_ROOT / "Report.pdf") as temporary:
                shutil.copyfile(paths.report, temporary)
            print(f"report: {config.PROJECT_ROOT / 'Report.pdf'}")
    return timings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.pipeline",
        description="Execute the bone-age study notebooks with papermill under one set of parameters.",
    )
    parser.add_argument("--preset", default="demo", help="a preset of presets.yaml (default: demo)")
    parser.add_argument(
        "-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
        help="override one parameter (value read as YAML); repeatable",
    )
    parser.add_argument("--stages", help="comma-separated subset, e.g. 03,04 (default: all)")
    parser.add_argument(
        "--timeout", type=int, default=4 * 3600,
        help="seconds one cell may run before the run is stopped (default: 4 h)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip Report.pdf")
    arguments = parser.parse_args(argv)
    try:
        overrides = parse_overrides(arguments.parameter)
        stages = select_stages(arguments.stages)
        timings = run(arguments.preset, overrides, stages, arguments.timeout, report=not arguments.no_report)
    except (ValueError, StageFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("stage wall times (s):", json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
