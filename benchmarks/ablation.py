"""The accuracy ablation: each variant is an ordinary study run with `-p` overrides.

    .venv/bin/python benchmarks/ablation.py                 # run what is missing, then tabulate
    .venv/bin/python benchmarks/ablation.py --only base,l1  # some variants
    .venv/bin/python benchmarks/ablation.py --table-only    # tabulate the runs that exist

Every variant runs `python -m utils.pipeline --preset rsna100 -p run_name ablation-<name> ...`
(same split, preprocessing, training and evaluation code as rsna100; stages 02-04), so each
row's command reproduces it alone. The shared settings shorten the schedule so that the study
fits in a session (`SHARED`): one change at a time against `base`. Variants are compared on
the validation MAE (the test MAE is reported, never used to choose). A run interrupted half
way resumes from its checkpoint when this command is given again.

Writes results/benchmarks/ablation.json, ablation.md and ablation.png. A variant whose run
folder is not here keeps its row from the committed ablation.json (same command, same schedule).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")  # a script: no display
import matplotlib.pyplot as plt  # noqa: E402

from utils import config  # noqa: E402
from utils.model_card import run_command  # noqa: E402
from utils.files import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from utils.parameters import load_parameters  # noqa: E402

PRESET = "rsna100"
STAGES = "02,03,04"
# A shorter fixed schedule than rsna100's 40 epochs, the same for every variant; no time budget,
# so that a busy machine changes the minutes, not the result. The base is pinned to the
# configuration the table was measured on (no hand crop, a float32 graph, float32 training), so
# that each row's command reproduces it after the preset itself moved on (rsna100 now ships the
# crop, int8 and mixed_bfloat16).
SHARED = {"epochs": 15, "patience": 15, "time_budget_minutes": None, "train_seed_baseline": False,
          "report_at_root": False, "hand_crop": "none", "onnx_precision": "float32", "mixed_precision": "none"}
VARIANTS = {
    "base": ("rsna100's network and training without the hand crop, 15 epochs", {}),
    "flip": ("horizontal flip as augmentation and as a TTA view", {"augment_flip": True, "tta": "shift_flip"}),
    "l1": ("L1 loss instead of Huber (delta 0.25 SD)", {"loss": "l1"}),
    "huber_small": ("Huber with a small delta (0.05 SD, about 2 months)", {"huber_delta": 0.05}),
    "distribution": ("a softmax over 80 age bins and its expected value, instead of one linear output",
                     {"head": "distribution", "age_bins": 80}),
    "ema": ("exponential moving average of the weights", {"ema": True}),
    "hand_crop": ("crop to the hand's bounding box before resizing", {"hand_crop": "box"}),
    "native_100": ("the native 100 px thumbnails instead of 96 px", {"image_size": 100}),
    "size_128": ("128 px input (the thumbnails upsampled) instead of 96", {"image_size": 128}),
    "lr_high": ("twice the peak learning rate (0.004)", {"learning_rate": 0.004}),
    "lr_low": ("half the peak learning rate (0.001)", {"learning_rate": 0.001}),
    "residual": ("residual blocks (2 per stage)", {"block": "residual"}),
    "progressive": ("progressive resizing: the first 5 epochs at 64 px, then 96",
                    {"progressive_image_size": 64, "progressive_epochs": 5}),
    "repvgg": ("RepVGG blocks (3x3, 1x1 and identity branches; one 3x3 conv each for inference)", {"block": "repvgg"}),
    "wider": ("1.5x wider stages", {"widths": [48, 96, 192, 384]}),
    "stage5": ("a 5th stage (512 filters)", {"widths": [32, 64, 128, 256, 512]}),
    # The final-model procedure: validation joins training, so only the test column compares.
    "refit": ("trained on training + validation, the last of its 15 epochs kept",
              {"refit_on_validation": True}),
}
OUTPUT = config.benchmarks_dir()


def overrides(name: str) -> dict:
    return {"run_name": f"ablation-{name}", **SHARED, **VARIANTS[name][1]}


def command(name: str) -> str:
    return f"{run_command(PRESET, overrides(name))} --stages {STAGES} --no-report"


def finished(name: str) -> bool:
    """A variant whose metrics were written by a run with exactly these parameters."""
    paths = config.RunPaths(f"ablation-{name}")
    if not paths.metrics.exists():
        return False
    recorded = json.loads(paths.metrics.read_text())["run"]["parameters"]
    expected = load_parameters(PRESET, overrides(name)).to_dict()
    # A parameter added after the run was made (data_seed, folds, fold) ran at its default.
    defaults = load_parameters(PRESET).to_dict()
    return {**{key: defaults[key] for key in expected.keys() - recorded.keys()}, **recorded} == expected


def run(name: str) -> None:
    arguments = shlex.split(command(name))
    arguments[0] = sys.executable  # `python` of the command is this environment's
    print(f"== {name}: {command(name)}", flush=True)
    completed = subprocess.run(arguments, cwd=config.PROJECT_ROOT)
    if completed.returncode != 0:
        print(f"!! {name} failed (exit {completed.returncode}); rerun this command to resume it", flush=True)


def row(name: str) -> dict | None:
    paths = config.RunPaths(f"ablation-{name}")
    if not finished(name):
        return None
    metrics = json.loads(paths.metrics.read_text())
    training = json.loads(paths.training_summary.read_text())["ours"]
    in_sample = overrides(name).get("refit_on_validation", False)  # it trained on the validation images
    return {
        "variant": name,
        "description": VARIANTS[name][0],
        "command": command(name),
        "validation_mae": None if in_sample else round(training["best_val_mae"], 3),
        "test_mae": round(metrics["mae"], 3),
        "test_within_12_pct": round(metrics["within_12_pct"], 1),
        "interval_coverage_pct": round(metrics["prediction_interval"]["coverage_pct"], 1),
        "best_epoch": training["best_epoch"],
        "epochs": len(training["epoch"]),
        "training_minutes": round(training["training_seconds"] / 60, 1),
        "training_images_per_second": round(training["train_images_per_second"], 1),
        "inference_images_per_second": round(metrics["timing"]["inference_images_per_second"], 1),
        "numpy_fp32_matmul_gflops": metrics["timing"].get("numpy_fp32_matmul_gflops_at_training"),
        "parameters_count": metrics["model"]["parameters_count"],
        "git_commit": metrics["run"]["git_commit"],
        "uncommitted_changes": metrics["run"].get("uncommitted_changes", []),  # what made it -dirty
    }


def markdown(rows: list[dict]) -> str:
    """The table; a difference to a base that ran at another commit is marked, since code changes
    between commits move a row by more than the spread between seeds."""
    base = next((item for item in rows if item["variant"] == "base"), None)
    lines = ["| variant | change | validation MAE | Δ vs base | test MAE | within 12 (%) | min | train img/s | GFLOP/s | commit |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    other_commit = False
    for item in rows:
        validation = item["validation_mae"]
        delta = "—"
        if base and validation is not None:
            delta = f"{validation - base['validation_mae']:+.2f}"
            if item["git_commit"] != base["git_commit"]:
                delta, other_commit = delta + " †", True
        commit = item["git_commit"][:7] + ("-dirty" if item["git_commit"].endswith("-dirty") else "")
        lines.append(
            f"| `{item['variant']}` | {item['description']} | "
            f"{'in-sample' if validation is None else f'{validation:.2f}'} | {delta} | "
            f"{item['test_mae']:.2f} | {item['test_within_12_pct']:.1f} | {item['training_minutes']:.1f} | "
            f"{item['training_images_per_second']:.0f} | {item['numpy_fp32_matmul_gflops'] or float('nan'):.0f} | {commit} |"
        )
    if other_commit:
        lines.append("\n† measured at another commit than `base`: the code between the two commits differs, "
                     "so the difference is not one change at a time.")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict]):
    names = [item["variant"] for item in rows]
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    positions = range(len(rows))
    # A refitted variant trained on the validation images: no validation bar.
    axes.barh([p + 0.2 for p in positions], [item["validation_mae"] or 0.0 for item in rows], 0.4,
              label="validation (chooses)")
    axes.barh([p - 0.2 for p in positions], [item["test_mae"] for item in rows], 0.4, label="test (reported)", alpha=0.6)
    axes.set_yticks(list(positions), names)
    axes.invert_yaxis()
    axes.set_xlabel("MAE (months)")
    low = min(value for item in rows for value in (item["validation_mae"], item["test_mae"]) if value is not None)
    axes.set_xlim(low - 1.0, None)
    axes.set_title(f"Ablation on {PRESET}: one change at a time, {SHARED['epochs']} epochs each")
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def recorded_rows() -> dict[str, dict]:
    """Rows of the committed table, for variants whose run folders are not on this machine."""
    path = OUTPUT / "ablation.json"
    if not path.exists():
        return {}
    recorded = json.loads(path.read_text())
    if recorded.get("shared_overrides") != SHARED:
        return {}  # another schedule: its rows do not compare with these
    return {item["variant"]: {**item, "description": VARIANTS[item["variant"]][0]} for item in recorded["rows"]
            if item["variant"] in VARIANTS and item["command"] == command(item["variant"])}


def tabulate() -> list[dict]:
    earlier = recorded_rows()
    rows = [item for item in (row(name) or earlier.get(name) for name in VARIANTS) if item]
    if not rows:
        print("no finished variant yet")
        return rows
    OUTPUT.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUTPUT / "ablation.json", {
        "preset": PRESET, "shared_overrides": SHARED, "stages": STAGES,
        "selection": "validation MAE (the test MAE is reported, never used to choose)",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows,
    })
    write_text_atomic(OUTPUT / "ablation.md", markdown(rows))
    with atomic_path(OUTPUT / "ablation.png") as temporary:
        figure(rows).savefig(temporary, dpi=130, format="png")
    print(markdown(rows))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated variants (default: all of {', '.join(VARIANTS)})")
    parser.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    arguments = parser.parse_args(argv)
    names = [name.strip() for name in arguments.only.split(",")] if arguments.only else list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if not arguments.table_only:
        for name in names:
            if not finished(name):
                run(name)
    tabulate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
