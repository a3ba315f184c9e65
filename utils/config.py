"""Where things live, defined once: the project's folders, every file of a run, the age range
and the split names. The lowest floor of `utils`: it imports no other module of the project.

The results and models roots can be redirected with the environment variables
BONE_AGE_RESULTS_DIR and BONE_AGE_MODELS_DIR (the tests run the study in a temporary folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRESETS_FILE = PROJECT_ROOT / "presets.yaml"
DATA_DIR = PROJECT_ROOT / "data"
CACHE_DIR = DATA_DIR / "cache"
SYNTHETIC_DIR = DATA_DIR / "synthetic"
# The real RSNA data of this workplace, beside the project (never committed; see its README).
SHARED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"
RSNA100_DIR = SHARED_DATA_DIR / "rsna-bone-age-100"
FULLRES_SAMPLE_DIR = SHARED_DATA_DIR / "rsna-fullres-sample"
COMMITTED_RUN = "rsna100"
ROOT_REPORT = PROJECT_ROOT / "Report.pdf"  # a copy of one run's report (report_at_root)
# Bone ages and chronological ages the study accepts (RSNA labels run 1..228 months).
MAX_AGE_MONTHS = 240
# File names that code outside RunPaths needs too (a model folder or a results folder given by path).
MODEL_FILE = "bone_age.keras"
ONNX_FILE = "bone_age.onnx"
MODEL_CARD_FILE = "model_card.json"
METRICS_FILE = "performance_metrics.json"
# The study's splits: fit, early stopping, interval calibration, the reported numbers.
SPLITS = ("train", "validation", "calibration", "test")


def results_root() -> Path:
    return Path(os.environ.get("BONE_AGE_RESULTS_DIR") or PROJECT_ROOT / "results")


def models_root() -> Path:
    return Path(os.environ.get("BONE_AGE_MODELS_DIR") or PROJECT_ROOT / "models")


def default_model_dir() -> Path:
    """The model the prediction command uses without --model: the committed one."""
    return PROJECT_ROOT / "models" / COMMITTED_RUN


def benchmarks_dir() -> Path:
    return results_root() / "benchmarks"


def display_path(path) -> str:
    """A path as records show it: relative to the project when inside it (as committed files are)."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def notebook_attempt(record, state: str) -> Path:
    """A stage's notebook while it runs (state "running") or after it failed ("failed"), beside its
    record `<stage>.ipynb`, which only a successful run replaces."""
    record = Path(record)
    return record.with_name(f"{record.stem}.{state}.ipynb")


def clip_to_age_range(months):
    """Estimates limited to the 0..MAX_AGE_MONTHS the data hold (intervals are clipped the same way)."""
    return np.clip(months, 0, MAX_AGE_MONTHS)


@dataclass(frozen=True)
class RunPaths:
    """Every file a run reads or writes, derived from its name."""

    run_name: str

    @property
    def results(self) -> Path:
        return results_root() / self.run_name

    @property
    def figures(self) -> Path:
        return self.results / "figures"

    @property
    def notebooks(self) -> Path:
        return self.results / "notebooks"

    @property
    def split(self) -> Path:
        return self.results / "split.csv"

    @property
    def dropped_rows(self) -> Path:
        return self.results / "dropped_rows.csv"

    @property
    def history(self) -> Path:
        return self.results / "history.json"

    @property
    def baseline_history(self) -> Path:
        return self.results / "history_seed_baseline.json"

    @property
    def training_summary(self) -> Path:
        return self.results / "training_summary.json"

    @property
    def stage_timings(self) -> Path:
        return self.results / "stage_timings.json"

    @property
    def lock(self) -> Path:
        return self.results / ".run.lock"

    @property
    def predictions(self) -> Path:
        return self.results / "predictions_test.csv"

    @property
    def metrics(self) -> Path:
        return self.results / METRICS_FILE

    @property
    def findings(self) -> Path:
        """What stage 05 found (evaluation.error_analysis_findings), read by the report."""
        return self.results / "error_analysis.json"

    @property
    def external_check(self) -> Path:
        """The model on the six-reader test images of FULLRES_SAMPLE_DIR (evaluation.external_check)."""
        return self.results / "external_check.json"

    @property
    def rejection(self) -> Path:
        """What --reject-flagged costs and buys on the test split (rejection.rejection_summary), from stage 05."""
        return self.results / "rejection.json"

    @property
    def report(self) -> Path:
        return self.results / "Report.pdf"

    @property
    def sweep_record(self) -> Path:
        """A sweep's folder (results/<sweep>/): its members, their commands, outcomes and wall times."""
        return self.results / "sweep.json"

    def member_log(self, member: str) -> Path:
        """Everything a sweep's member printed, in the sweep's folder."""
        return self.results / "logs" / f"{member}.log"

    @property
    def comparison_table(self) -> Path:
        """One row per compared run (comparison.comparison_table), from notebooks/06_comparison."""
        return self.results / "comparison.csv"

    @property
    def comparison_markdown(self) -> Path:
        return self.results / "comparison.md"

    @property
    def models(self) -> Path:
        return models_root() / self.run_name

    @property
    def written(self) -> tuple[Path, ...]:
        """What the run writes: its results and model folders, and (report_at_root) the root Report.pdf."""
        return self.results, self.models, ROOT_REPORT

    @property
    def model(self) -> Path:
        return self.models / MODEL_FILE

    def member_history(self, index: int) -> Path:
        """The history of member `index` (1-based) of an ensemble; member 1's is `history`."""
        return self.history if index == 1 else self.results / f"history_member{index}.json"

    @property
    def baseline_model(self) -> Path:
        return self.models / "seed_baseline.keras"

    @property
    def onnx_model(self) -> Path:
        return self.models / ONNX_FILE

    @property
    def model_card(self) -> Path:
        return self.models / MODEL_CARD_FILE

    @property
    def model_card_markdown(self) -> Path:
        """The card for people (model_card.ModelCard.to_markdown), beside the JSON one."""
        return self.models / "MODEL_CARD.md"

    @property
    def checkpoints(self) -> Path:
        return self.models / "checkpoints"

    def figure(self, name: str) -> Path:
        """A figure's file; `name` is a key of `figures.FIGURES` with its suffix (.png or .html)."""
        return self.figures / name

    def notebook(self, stage: str) -> Path:
        return self.notebooks / f"{stage}.ipynb"

    def failed_notebook(self, stage: str) -> Path:
        """The last failed attempt at a stage (and its .html), kept beside the stage's record."""
        return notebook_attempt(self.notebook(stage), "failed")

    def make(self) -> "RunPaths":
        """Create the run's folders (the pipeline and the stages that write do this, once)."""
        for folder in (self.results, self.figures, self.notebooks, self.models):
            folder.mkdir(parents=True, exist_ok=True)
        return self
