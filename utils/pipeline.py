"""Run the study end to end: the five stage notebooks, then bone-age.ipynb, then Report.pdf.

    python -m utils.pipeline --preset demo
    python -m utils.pipeline --preset rsna100 -p epochs 30 -p run_name rsna100_e30
    python -m utils.pipeline --preset ci --stages 03,04
    python -m utils.pipeline --preset rsna100 --sweep seed=1,2,3 --jobs 2      # many runs (utils/sweep.py)

Every notebook is executed by papermill with the same two parameters, `preset` and
`overrides`, so that one set of parameters (presets.yaml plus `-p` overrides) governs the
whole run. Executed notebooks (.ipynb and .html), figures and performance_metrics.json go to
results/<run_name>/, the model to models/<run_name>/. A sweep (`--sweep`, `--folds`) runs one
such run per combination on Dask, then notebooks/06_comparison.ipynb over them into
results/<sweep>/ (comparison.csv, comparison.md, figures).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from utils import config, sweep
from utils.parameters import load_parameters
from utils.files import atomic_path, write_json_atomic

KERNEL_NAME = "bone-age"
# The kernels leave what libraries write straight to the process's stderr (TensorFlow's oneDNN
# and absl start-up lines, which TF_CPP_MIN_LOG_LEVEL does not silence) in the runner's terminal
# instead of copying it into the notebooks; Python output, warnings and errors still go there.
KERNEL_ARGUMENTS = ["--IPKernelApp.capture_fd_output=False"]
NOTEBOOKS_DIR = config.PROJECT_ROOT / "notebooks"
STAGES = ["01_eda", "02_preprocessing", "03_training", "04_evaluation", "05_error_analysis"]
SUMMARY_NOTEBOOK = config.PROJECT_ROOT / "bone-age.ipynb"
COMPARISON = "06_comparison"  # a sweep's comparison of its runs, executed with the list of runs
COMPARISON_NOTEBOOK = NOTEBOOKS_DIR / f"{COMPARISON}.ipynb"
METRICS_STAGE = "04_evaluation"  # what the comparison reads exists once this stage has run
DEFAULT_TIMEOUT = 4 * 3600


TRAINING_STAGE = "03_training"
DEAD_KERNEL = "the kernel died, often memory: try a smaller batch_size or image_size"
INTERRUPTED_STATUS = 130  # the shell's status for a command stopped by Ctrl-C (128 + SIGINT)


class StageFailed(RuntimeError):
    """A stage that did not finish: a cell error, a timeout, a dead kernel or Ctrl-C. The message
    names the notebook, the cell and the cause; the attempt is kept as `<stage>.failed.ipynb`."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class RunLocked(RuntimeError):
    """Another process is running a run of the same name."""


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


def execute_notebook(source: Path, output: Path, parameters: dict, timeout: int) -> float:
    """Execute one notebook with papermill into `output` (the stage's record, with an .html copy),
    its parameters cell given `parameters` (a stage's `preset` and `overrides`); return its wall
    time in seconds.

    The notebook is written to `<stage>.running.ipynb` while it runs. Only success replaces the
    record; a failure of any kind (a cell error, a cell running past `timeout`, a dead kernel,
    Ctrl-C) keeps the attempt as `<stage>.failed.ipynb` and .html, leaves an earlier record as it
    was, and raises StageFailed naming the notebook, the cell and the cause.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    running, failed = config.notebook_attempt(output, "running"), config.notebook_attempt(output, "failed")
    ctrl_c = _CtrlC()
    status = 1
    started = time.perf_counter()
    try:
        with ctrl_c.installed():
            papermill.execute_notebook(
                str(source),
                str(running),
                parameters=parameters,
                kernel_name=KERNEL_NAME,
                cwd=str(source.parent),
                progress_bar=True,
                execution_timeout=timeout,
                # A cell past the timeout is interrupted (KeyboardInterrupt in the kernel, which stops
                # cleanly), rather than the kernel being shut down in the middle of its work.
                interrupt_on_timeout=True,
                error_on_timeout={"ename": "CellTimeout", "evalue": f"longer than {timeout} s", "traceback": []},
                kernel_manager_class=ctrl_c.kernel_manager_class(),
                extra_arguments=KERNEL_ARGUMENTS,
            )
    except PapermillExecutionError as error:
        cell = _describe_cell(running, error.cell_index, error.exec_count, error.source)
        # Without a Ctrl-C, a KeyboardInterrupt in a cell is the interruption at the timeout.
        timed_out = error.ename in ("KeyboardInterrupt", "CellTimeout")
        cause = f"the cell ran longer than --timeout {timeout} s" if timed_out else f"{error.ename}: {error.evalue}"
    except CellTimeoutError:  # the interrupted kernel did not answer either
        cell, cause = _describe_cell(running), f"the cell ran longer than --timeout {timeout} s"
    except DeadKernelError:
        cell, cause = _describe_cell(running), DEAD_KERNEL
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the kernel ran
        cell, cause, status = _describe_cell(running), "interrupted (Ctrl-C)", INTERRUPTED_STATUS
    except Exception as error:  # the kernel did not start, a parameter papermill refused, a file error
        cell, cause = _describe_cell(running), f"{type(error).__name__}: {error}"
    else:
        os.replace(running, output)
        write_html(output)
        for stale in (failed, failed.with_suffix(".html")):
            stale.unlink(missing_ok=True)
        return time.perf_counter() - started
    if ctrl_c.pressed:
        cause, status = "interrupted (Ctrl-C)", INTERRUPTED_STATUS
    kept = "no notebook was written"
    if running.exists():
        os.replace(running, failed)
        write_html(failed)
        kept = f"partly executed notebook: {failed} (and .html)"
        if output.exists():
            kept += f"; the last successful run's {output.name} is kept"
    raise StageFailed(f"{source.name} failed in {cell}: {cause}\n  {kept}", status)


class _CtrlC:
    """Ctrl-C while a stage runs. The kernel runs in its own session, so the terminal's SIGINT
    reaches only this process: the first Ctrl-C is passed on to the kernel, whose cell stops
    with a KeyboardInterrupt (training between two batches, its checkpoints intact) and is
    recorded as the cell's error; a second one stops at once."""

    def __init__(self):
        self.pressed = False
        self.managers = []

    def kernel_manager_class(self):
        """papermill's kernel manager, made to remember its instances (papermill keeps them to itself)."""
        from jupyter_client import AsyncKernelManager

        managers = self.managers

        class RememberedKernelManager(AsyncKernelManager):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                managers.append(self)

        return RememberedKernelManager

    @contextlib.contextmanager
    def installed(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _handle(self, signum, frame):
        kernels = [process for manager in self.managers
                   if (process := getattr(manager.provisioner, "process", None)) is not None and process.poll() is None]
        if self.pressed or not kernels:
            self.pressed = True
            raise KeyboardInterrupt
        self.pressed = True
        print("\ninterrupting the running cell (Ctrl-C again stops at once)", file=sys.stderr, flush=True)
        for process in kernels:
            process.send_signal(signal.SIGINT)


def _describe_cell(notebook_path: Path, index=None, execution_count=None, source=None) -> str:
    """`cell 7 (execution count 5: <first line of its code>)`; without `index`, the cell that was
    running when execution stopped (the last one papermill started, read from the notebook)."""
    if index is None:
        import nbformat

        try:
            cells = nbformat.read(notebook_path, as_version=4).cells
        except Exception:  # not written yet, or written half by a killed run
            cells = []
        started = [number for number, cell in enumerate(cells)
                   if cell.get("metadata", {}).get("papermill", {}).get("start_time")]
        if not started:
            return "no cell (the kernel stopped before the first cell ran)"
        index = started[-1]
        execution_count, source = cells[index].get("execution_count"), cells[index].source
    first_line = next((line.strip() for line in (source or "").splitlines() if line.strip()), "")
    first_line = first_line if len(first_line) <= 60 else first_line[:57] + "..."
    count = "not executed" if execution_count is None else f"execution count {execution_count}"
    return f"cell {index} ({count}: {first_line})" if first_line else f"cell {index} ({count})"


def write_html(notebook_path: Path) -> None:
    """An HTML copy beside the executed notebook, for readers without Jupyter."""
    if not notebook_path.exists():
        return
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook_path, as_version=4))
    with atomic_path(notebook_path.with_suffix(".html")) as temporary:
        temporary.write_text(body, encoding="utf-8")


def resume_hint(paths: config.RunPaths, epochs: int) -> str:
    """What rerunning the same command does after stage 03 stopped: from which epoch each model
    resumes (the checkpoints' state.json counts the completed epochs)."""
    progress = []
    for state_file in sorted(paths.checkpoints.glob("*/state.json")):
        try:
            completed = len(json.loads(state_file.read_text(encoding="utf-8"))["history"].get("epoch", []))
        except (OSError, ValueError, KeyError, AttributeError):
            continue
        progress.append((state_file.parent.name, completed))
    if not progress:
        return "rerun the same command to start training again (no epoch was completed)"
    if len(progress) == 1:
        name, completed = progress[0]
        if completed >= epochs:
            return f"rerun the same command to continue after training ({completed} epochs done)"
        return (f"rerun the same command to resume from epoch {completed + 1} "
                f"({completed} of {epochs} epochs done; checkpoints in {paths.checkpoints / name})")
    models = ", ".join(
        f"{name} finished ({completed} epochs)" if completed >= epochs else f"{name} from epoch {completed + 1}"
        for name, completed in progress
    )
    return f"rerun the same command to resume: {models} (checkpoints in {paths.checkpoints})"


@contextlib.contextmanager
def run_lock(paths: config.RunPaths):
    """Hold the lock of a run name (results/<run>/.run.lock) while the block runs.

    A second holder is refused at once with RunLocked naming the first one's PID, start time and
    command. The lock is an flock, which the system releases when its process dies however it
    dies; a lock file left by a dead process is taken over with a note.
    """
    paths.results.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(paths.lock, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_lock(handle)
            handle.close()
            raise RunLocked(
                f"run {paths.run_name!r} is already running: {_describe_holder(holder)} holds {paths.lock}; "
                "wait for it to finish, stop it, or give this run another run_name"
            ) from None
        try:
            current = os.stat(paths.lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the holder removed the file between our open and our lock: lock the new one
    try:
        previous = _read_lock(handle)
        if previous:
            print(f"note: taking over the lock of run {paths.run_name!r} from {_describe_holder(previous)}, "
                  "which stopped without releasing it (it was killed)", flush=True)
        handle.seek(0)
        handle.truncate()
        json.dump({"pid": os.getpid(), "started": datetime.now().isoformat(sep=" ", timespec="seconds"),
                   "command": shlex.join([Path(sys.executable).name, *sys.argv])}, handle)
        handle.flush()
        yield
    finally:
        # Removed while still locked: a process waiting on the old file sees it gone and retries.
        paths.lock.unlink(missing_ok=True)
        handle.close()


def _read_lock(handle) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except ValueError:
        return {"pid": "?", "started": "?", "command": "(unreadable lock file)"}


def _describe_holder(holder: dict) -> str:
    return (f"PID {holder.get('pid', '?')} (started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')})")


def run(preset: str, overrides: dict, stages: list[str], timeout: int, report: bool = True) -> dict:
    """Execute the selected stages and, with the last stage, the summary notebook and the report.

    The run holds its lock (`RunPaths.lock`) throughout: a second run of the same name is refused.
    """
    parameters = load_parameters(preset, overrides)
    if TRAINING_STAGE in stages:
        # Weights that init_weights names and this machine lacks stop the run now, not in stage 03.
        from utils.backbones import resolve_init_weights

        resolve_init_weights(parameters.architecture, parameters.init_weights)
    paths = config.RunPaths(parameters.run_name)
    with run_lock(paths):
        return _run_locked(parameters, paths, preset, overrides, stages, timeout, report)


def _run_locked(parameters, paths: config.RunPaths, preset, overrides, stages, timeout, report) -> dict:
    paths.make()
    ensure_kernel()
    # Quieter TensorFlow in the kernels, which inherit this environment (set before any kernel
    # imports TensorFlow); what it still prints at start-up stays out of the notebooks (KERNEL_ARGUMENTS).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    print(f"run {parameters.run_name!r} (preset {preset}) -> {paths.results}", flush=True)

    timings_path = paths.stage_timings
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    # The summary page and the report gather every stage: rebuilt whenever the last stage runs.
    summarise = STAGES[-1] in stages
    notebooks = [(NOTEBOOKS_DIR / f"{stage}.ipynb", stage) for stage in stages]
    if summarise:
        notebooks.append((SUMMARY_NOTEBOOK, "bone-age"))
    for source, name in notebooks:
        print(f"== {name}", flush=True)
        try:
            seconds = execute_notebook(source, paths.notebook(name), {"preset": preset, "overrides": overrides}, timeout)
        except StageFailed as failure:
            if name != TRAINING_STAGE or "trained with other settings" in str(failure):
                raise
            raise StageFailed(f"{failure}\n  {resume_hint(paths, parameters.epochs)}", failure.status) from None
        timings[name] = round(seconds, 1)
        write_json_atomic(timings_path, timings)
        print(f"== {name} done in {seconds:.0f} s", flush=True)

    if report and summarise:
        from utils.report import build_report

        build_report(paths.results, paths.report)
        print(f"report: {paths.report}")
        if parameters.report_at_root:
            with atomic_path(config.ROOT_REPORT) as temporary:
                shutil.copyfile(paths.report, temporary)
            print(f"report: {config.ROOT_REPORT}")
    return timings


def run_sweep(preset: str, overrides: dict, axes: list, folds: int | None, stages: list[str], timeout: int,
              report: bool, jobs: int, scheduler: str | None) -> int:
    """Run every combination of a sweep on Dask (`sweep.execute`), then the comparison notebook over
    the runs that finished; 0 when every run and the comparison succeeded, else 1.

    The sweep holds the lock of its folder (results/<sweep>/), each run its own.
    """
    plan = sweep.plan(preset, overrides, axes, folds)
    options = [] if stages == STAGES else ["--stages", ",".join(stage.split("_")[0] for stage in stages)]
    options += [] if timeout == DEFAULT_TIMEOUT else ["--timeout", str(timeout)]
    options += [] if report else ["--no-report"]
    paths = config.RunPaths(plan.name)
    with run_lock(paths):
        where = scheduler or f"a local Dask cluster of {jobs} single-threaded worker process(es)"
        print(f"sweep {plan.name!r}: {len(plan.members)} runs on {where} -> {paths.results}", flush=True)
        for member in plan.members:
            print(f"  {member.run_name}: {member.command(preset, options)}", flush=True)
        started = time.perf_counter()
        outcomes = sweep.execute(plan, options=options, jobs=jobs, scheduler=scheduler,
                                 echo=lambda line: print(line, flush=True))
        finished = [outcome["run_name"] for outcome in outcomes if outcome["status"] == "finished"]
        status = 0 if len(finished) == len(outcomes) else 1
        if METRICS_STAGE in stages and finished:
            print(f"== {COMPARISON} of {len(finished)} run(s)", flush=True)
            ensure_kernel()
            try:
                execute_notebook(COMPARISON_NOTEBOOK, paths.notebook(COMPARISON),
                                 {"sweep": plan.name, "runs": finished, "reference": finished[0]}, timeout)
                print(f"comparison: {paths.comparison_markdown}", flush=True)
            except StageFailed as failure:
                print(f"error: {failure}", file=sys.stderr)
                status = 1
        wall_seconds = time.perf_counter() - started
        sweep.write_record(plan, outcomes, options=options, jobs=jobs, scheduler=scheduler, wall_seconds=wall_seconds)
    failed = [outcome["run_name"] for outcome in outcomes if outcome["status"] != "finished"]
    print(f"sweep {plan.name!r}: {len(finished)} of {len(outcomes)} runs finished in {wall_seconds / 60:.1f} min"
          + (f"; failed: {', '.join(failed)} (their commands and logs: {paths.sweep_record})" if failed else ""), flush=True)
    return status


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
        "--timeout", type=int, default=DEFAULT_TIMEOUT,
        help="seconds one cell may run before the run is stopped (default: 4 h)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip Report.pdf")
    many = parser.add_argument_group("many runs (a sweep: one run per combination, on Dask)")
    many.add_argument("--sweep", action="append", metavar="NAME=VALUES",
                      help="a parameter and its values, e.g. seed=1,2,3 (read as YAML); repeatable: every combination")
    many.add_argument("--folds", type=int, metavar="K", help="K-fold cross-validation: K runs whose test folds partition the data")
    many.add_argument("--jobs", type=int, default=1, metavar="N",
                      help="runs at a time on a local Dask cluster of N single-threaded workers (default: 1)")
    many.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask cluster's scheduler, e.g. tcp://host:8786")
    arguments = parser.parse_args(argv)
    try:
        overrides = parse_overrides(arguments.parameter)
        stages = select_stages(arguments.stages)
        if arguments.sweep or arguments.folds is not None:
            if arguments.jobs < 1:
                raise ValueError(f"--jobs: expected at least 1, got {arguments.jobs}")
            axes = [sweep.parse_axis(text) for text in arguments.sweep or []]
            return run_sweep(arguments.preset, overrides, axes, arguments.folds, stages, arguments.timeout,
                             not arguments.no_report, arguments.jobs, arguments.scheduler)
        if arguments.jobs != 1 or arguments.scheduler:
            raise ValueError("--jobs and --scheduler run the runs of a sweep: give --sweep NAME=VALUES or --folds K")
        timings = run(arguments.preset, overrides, stages, arguments.timeout, report=not arguments.no_report)
    except StageFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return error.status
    except (ValueError, RunLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # between stages (a stage reports its own interruption)
        print("error: interrupted (Ctrl-C); rerun the same command to continue", file=sys.stderr)
        return INTERRUPTED_STATUS
    print("stage wall times (s):", json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
