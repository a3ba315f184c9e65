"""Many runs at once: a parameter sweep or a K-fold cross-validation as ordinary study runs, on Dask.

    python -m utils.pipeline --preset rsna100 --sweep seed=1,2,3 --jobs 2
    python -m utils.pipeline --preset ci --sweep seed=1,2 --sweep image_size=48,64 --jobs 2
    python -m utils.pipeline --preset rsna100 --folds 5 --jobs 2
    python -m utils.pipeline --preset rsna100 --sweep seed=1,2,3 --scheduler tcp://host:8786

`plan` expands the swept values: every combination is one run of the study with the preset, the
`-p` overrides, its own values and its own run_name (`rsna100-seed2`), so that the command it
prints reproduces it alone. Every combination's parameters are checked before any run starts.
A seed sweep keeps the data and the split of the base run (`data_seed`), so that its runs are
scored on the same test images; `--folds K` makes K runs whose test folds partition the data.

`execute` runs them as tasks of Dask distributed: by default a LocalCluster of `jobs`
single-threaded worker processes on this machine (loopback only), each run's TensorFlow limited
to its share of the cores or given one GPU; with a scheduler address, the workers of that
cluster. Papermill is not thread-safe (papermill#578), so a task runs `python -m utils.pipeline`
in a subprocess, which also keeps the run's lock and its one-message failures: a failed run is
reported with its notebook and cell, and the others go on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from utils import config
from utils.files import write_json_atomic
from utils.model_card import run_command
from utils.parameters import NAMES, RUN_NAME_PATTERN, load_parameters

PROGRESS_TOPIC = "bone-age-sweep"
# The runner gives each run its name; the preset is the sweep's.
NOT_SWEPT = ("preset", "run_name")


@dataclass(frozen=True)
class Member:
    """One run of a sweep: its swept values and every `-p` override it runs with."""

    run_name: str
    values: dict
    overrides: dict

    def command(self, preset: str, options=()) -> str:
        """The command that runs it alone (`options`: the sweep's --stages, --timeout, --no-report)."""
        return " ".join([run_command(preset, self.overrides), *map(shlex.quote, options)])


@dataclass(frozen=True)
class Sweep:
    name: str  # its folder, results/<name>/: sweep.json, logs/, the comparison
    preset: str
    members: tuple


def parse_axis(text: str) -> tuple[str, list]:
    """`seed=1,2,3` -> ("seed", [1, 2, 3]); the values are read as YAML, like `-p` values
    (`widths=[32,64],[48,96]` is two lists)."""
    name, separator, values = text.partition("=")
    name = name.strip()
    if not separator or not name or not values.strip():
        raise ValueError(f"--sweep {text!r}: expected NAME=VALUE,VALUE,... (e.g. seed=1,2,3)")
    if name in NOT_SWEPT:
        raise ValueError(f"--sweep {text!r}: {name} cannot be swept (each run's name is derived from its values)")
    if name not in NAMES:
        raise ValueError(f"--sweep {text!r}: unknown parameter {name!r}; known: {', '.join(sorted(set(NAMES) - set(NOT_SWEPT)))}")
    try:
        parsed = yaml.safe_load(f"[{values}]")
    except yaml.YAMLError as error:
        raise ValueError(f"--sweep {text!r}: the values cannot be read as YAML ({error})") from None
    texts = [json.dumps(value, sort_keys=True) for value in parsed]
    if len(set(texts)) != len(texts):
        raise ValueError(f"--sweep {text!r}: a value is given twice")
    return name, parsed


def _token(name: str, value) -> str:
    """`seed2`, `image_size64`, `loss_l1`, `widths32_64`: a swept value in a run name."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    else:
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    text = re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.")
    return f"{name}{text}" if text[:1].isdigit() else f"{name}_{text}"


def member_name(base: str, values: dict, folds: int | None = None) -> str:
    """The run name of one combination: the base run's name and each swept value (`rsna100-seed2`,
    `ci-seed1-image_size64`, `rsna100-fold2of5`)."""
    tokens = [f"fold{value}of{folds}" if name == "fold" and folds else _token(name, value) for name, value in values.items()]
    return "-".join([base, *tokens])


def sweep_name(base: str, names: list[str], folds: int | None = None) -> str:
    """The sweep's folder: `rsna100-sweep-seed`, `rsna100-sweep-folds5`."""
    tokens = [f"folds{folds}" if name == "fold" and folds else name for name in names]
    return "-".join([base, "sweep", *tokens])


def plan(preset: str, overrides: dict, axes: list[tuple[str, list]], folds: int | None = None) -> Sweep:
    """The runs of a sweep: every combination of `axes` ((name, values) pairs, `parse_axis`), and
    with `folds` K each of the K folds. A ValueError names every combination whose parameters are
    invalid, before anything runs."""
    base = load_parameters(preset, overrides)
    names = [name for name, _ in axes]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--sweep names {', '.join(repeated)} more than once; give all its values in one --sweep")
    fixed = {}
    if folds is not None:
        if folds < 2:
            raise ValueError(f"--folds: expected at least 2 folds, got {folds}")
        clash = sorted({"fold", "folds"} & (set(names) | set(overrides)))
        if clash:
            raise ValueError(f"--folds {folds} sets fold and folds itself: do not also give {', '.join(clash)}")
        fixed["folds"] = folds
        axes = [*axes, ("fold", list(range(1, folds + 1)))]
    if not axes:
        raise ValueError("nothing to sweep: give --sweep NAME=VALUE,... or --folds K")
    if "seed" in names and "data_seed" not in names and "data_seed" not in overrides and base.data_seed is None:
        # A seed sweep varies the training's randomness, not the data: its runs share split and test images.
        fixed["data_seed"] = base.seed
    if base.report_at_root:
        fixed["report_at_root"] = False  # the runs of a sweep never replace the root Report.pdf
    members, problems = [], []
    for combination in itertools.product(*(values for _, values in axes)):
        values = dict(zip((name for name, _ in axes), combination))
        run_name = member_name(base.run_name, values, folds)
        member = Member(run_name, values, {**overrides, **fixed, **values, "run_name": run_name})
        try:
            load_parameters(preset, member.overrides)
        except ValueError as error:
            problems.append(f"{run_name}: {error}".replace("\n", "\n    "))
        members.append(member)
    run_names = [member.run_name for member in members]
    if len(set(run_names)) != len(run_names):
        raise ValueError(f"two combinations get the same run name ({', '.join(run_names)}): give distinct values")
    if problems:
        raise ValueError("invalid sweep combination(s); nothing was run:\n  " + "\n  ".join(problems))
    name = sweep_name(base.run_name, [name for name, _ in axes], folds)
    if not RUN_NAME_PATTERN.match(name):
        raise ValueError(f"the sweep's folder name {name!r} is not a plain name; shorten the base run_name")
    return Sweep(name, preset, tuple(members))


def thread_limits(jobs: int, cpus: int | None = None) -> dict:
    """The environment that limits each of `jobs` runs on one machine to its share of the cores:
    TensorFlow's thread pools and OpenMP (oneDNN)."""
    share = str(max(1, (cpus or os.cpu_count() or 1) // jobs))
    return {"OMP_NUM_THREADS": share, "TF_NUM_INTRAOP_THREADS": share, "TF_NUM_INTEROP_THREADS": share}


def visible_gpus() -> list[str]:
    """The GPUs this machine's runs may share out: CUDA_VISIBLE_DEVICES if set, else those nvidia-smi lists."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip() not in ("", "-1")]
    if not shutil.which("nvidia-smi"):
        return []
    completed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [str(index) for index, line in enumerate(
        line for line in completed.stdout.splitlines() if line.startswith("GPU "))] if completed.returncode == 0 else []


def failure_message(output: str) -> str:
    """What a failed run said: the runner's last `error: ...` message with its indented lines
    (the notebook, the cell, the cause, the partly executed notebook), else its last lines."""
    lines = output.splitlines()
    starts = [index for index, line in enumerate(lines) if line.startswith("error: ")]
    if not starts:
        return "\n  ".join(line.strip() for line in lines[-5:] if line.strip()) or "no output"
    message = [lines[starts[-1]][len("error: "):]]
    for line in lines[starts[-1] + 1:]:
        if not line.startswith("  "):
            break
        message.append(line.strip())
    return "\n".join(message)


def run_member(command: list[str], run_name: str, log: str, environment: dict, gpus: list[str]) -> dict:
    """A Dask task: one run of the study in a subprocess, its output in `log`; its outcome, also
    when the run failed (a task that raised would hide the run's own message)."""
    from distributed import get_worker

    worker = get_worker()
    env = {**os.environ, **environment}
    gpu = None
    if gpus:  # a LocalCluster names its workers 0..N-1: worker i takes GPU i
        gpu = gpus[(worker.name if isinstance(worker.name, int) else 0) % len(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = gpu
    worker.log_event(PROGRESS_TOPIC, {"run": run_name, "worker": worker.address, "gpu": gpu})
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        # `python` of the command is the worker's own interpreter.
        completed = subprocess.run([sys.executable, *command[1:]], cwd=config.PROJECT_ROOT, env=env,
                                   stdout=handle, stderr=subprocess.STDOUT)
    output = Path(log).read_text(encoding="utf-8", errors="replace")
    return {"run_name": run_name, "status": "finished" if completed.returncode == 0 else "failed",
            "returncode": completed.returncode, "seconds": round(time.perf_counter() - started, 1),
            "worker": worker.address, "gpu": gpu,
            "error": None if completed.returncode == 0 else failure_message(output)}


def execute(sweep: Sweep, *, options=(), jobs: int = 1, scheduler: str | None = None, echo=print) -> list[dict]:
    """Run the members as Dask tasks and return their outcomes in sweep order; one line per run
    as it starts (`[2/3] started ...`) and as it ends. `options` go to each run's command."""
    from distributed import Client, LocalCluster, as_completed

    paths = config.RunPaths(sweep.name)
    position = {member.run_name: index for index, member in enumerate(sweep.members, start=1)}
    total = len(sweep.members)
    # The workers write where this process reads the results: the same folders (a shared file system).
    environment = {"BONE_AGE_RESULTS_DIR": str(config.results_root()), "BONE_AGE_MODELS_DIR": str(config.models_root())}
    gpus = []
    if scheduler is None:
        gpus = visible_gpus()
        environment.update(thread_limits(jobs))

    def started(event):
        message = event[1]
        where = f" on GPU {message['gpu']}" if message.get("gpu") is not None else ""
        echo(f"[{position[message['run']]}/{total}] started {message['run']} ({message['worker']}{where})")

    outcomes = {}
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            cluster = stack.enter_context(LocalCluster(
                n_workers=jobs, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                memory_limit=0, silence_logs=logging.ERROR))  # the runs' memory is their subprocesses'
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(Client(scheduler))
        client.subscribe_topic(PROGRESS_TOPIC, started)
        futures = {}
        for member in sweep.members:
            command = shlex.split(member.command(sweep.preset, options))
            future = client.submit(run_member, command, member.run_name, str(paths.member_log(member.run_name)),
                                   environment, gpus, key=f"bone-age-{member.run_name}-{uuid.uuid4().hex[:8]}",
                                   pure=False)
            futures[future] = member
        for future in as_completed(futures):
            name = futures[future].run_name
            try:
                outcome = future.result()
            except Exception as error:  # the worker died or the task could not run at all
                outcome = {"run_name": name, "status": "failed", "returncode": None, "seconds": None,
                           "worker": None, "gpu": None,
                           "error": f"the task failed on the cluster: {type(error).__name__}: {error}"}
            outcomes[name] = outcome
            echo(_ended(outcome, position[name], total, paths.member_log(name)))
    return [outcomes[member.run_name] for member in sweep.members]


def _ended(outcome: dict, index: int, total: int, log: Path) -> str:
    seconds = outcome["seconds"]
    took = "" if seconds is None else f" in {seconds / 60:.1f} min" if seconds >= 60 else f" in {seconds:.0f} s"
    if outcome["status"] == "finished":
        return f"[{index}/{total}] finished {outcome['run_name']}{took}"
    message = outcome["error"].replace("\n", "\n    ")
    return f"[{index}/{total}] FAILED {outcome['run_name']}{took}: {message}\n    log: {log}"


def write_record(sweep: Sweep, outcomes: list[dict], *, options=(), jobs: int, scheduler: str | None,
                 wall_seconds: float) -> Path:
    """results/<sweep>/sweep.json: how the sweep ran, each run's command and outcome."""
    paths = config.RunPaths(sweep.name)
    return write_json_atomic(paths.sweep_record, {
        "sweep": sweep.name,
        "preset": sweep.preset,
        "scheduler": scheduler or f"LocalCluster, {jobs} single-threaded worker process(es)",
        "jobs": None if scheduler else jobs,
        "wall_seconds": round(wall_seconds, 1),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": [{**outcome, "values": member.values, "command": member.command(sweep.preset, options),
                  "log": config.display_path(paths.member_log(member.run_name))}
                 for member, outcome in zip(sweep.members, outcomes)],
    })
