"""Where things live and which parameters a run uses: both defined once, here and in presets.yaml."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRESETS_FILE = PROJECT_ROOT / "presets.yaml"
DATA_DIR = PROJECT_ROOT / "data"
CACHE_DIR = DATA_DIR / "cache"
SYNTHETIC_DIR = DATA_DIR / "synthetic"
RESULTS_DIR = PROJECT_ROOT / "results"
MODELS_DIR = PROJECT_ROOT / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "rsna100"
# Bone ages and chronological ages the study accepts (RSNA labels run 1..228 months).
MAX_AGE_MONTHS = 240


def clip_to_age_range(months):
    """Estimates limited to the 0..MAX_AGE_MONTHS the data hold (intervals are clipped the same way)."""
    return np.clip(months, 0, MAX_AGE_MONTHS)


def read_presets(presets_file=PRESETS_FILE) -> dict:
    with open(presets_file, encoding="utf-8") as handle:
        presets = yaml.safe_load(handle)
    if not isinstance(presets, dict) or "defaults" not in presets or "presets" not in presets:
        raise ValueError(f"{presets_file}: expected the keys 'defaults' and 'presets'")
    return presets


def load_parameters(preset: str = "demo", overrides: dict | None = None, presets_file=PRESETS_FILE) -> dict:
    """The parameters of a run: `defaults`, then the preset, then `overrides`.

    An override of a name that `defaults` does not know is refused, so that a typo
    (`-p epoch 5`) cannot silently run with the default.
    """
    presets = read_presets(presets_file)
    if preset not in presets["presets"]:
        raise ValueError(
            f"unknown preset {preset!r}; {presets_file} defines: {', '.join(presets['presets'])}"
        )
    parameters = copy.deepcopy(presets["defaults"])
    for source, values in ((f"preset {preset!r}", presets["presets"][preset] or {}), ("overrides", overrides or {})):
        unknown = sorted(set(values) - set(parameters) - {"run_name"})
        if unknown:
            raise ValueError(
                f"{source} sets unknown parameter(s) {unknown}; known: {', '.join(sorted(parameters))}"
            )
        parameters.update(copy.deepcopy(values))
    parameters["preset"] = preset
    parameters.setdefault("run_name", preset)
    if not parameters["run_name"]:
        parameters["run_name"] = preset
    return parameters


@dataclass(frozen=True)
class RunPaths:
    """Every file a run reads or writes, derived from its name."""

    run_name: str

    @property
    def results(self) -> Path:
        return RESULTS_DIR / self.run_name

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
    def predictions(self) -> Path:
        return self.results / "predictions_test.csv"

    @property
    def metrics(self) -> Path:
        return self.results / "performance_metrics.json"

    @property
    def report(self) -> Path:
        return self.results / "Report.pdf"

    @property
    def models(self) -> Path:
        return MODELS_DIR / self.run_name

    @property
    def model(self) -> Path:
        return self.models / "bone_age.keras"

    @property
    def baseline_model(self) -> Path:
        return self.models / "seed_baseline.keras"

    @property
    def model_card(self) -> Path:
        return self.models / "model_card.json"

    @property
    def checkpoints(self) -> Path:
        return self.models / "checkpoints"

    def make(self) -> "RunPaths":
        for folder in (self.results, self.figures, self.notebooks, self.models):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def run_paths(parameters: dict) -> RunPaths:
    return RunPaths(parameters["run_name"]).make()
