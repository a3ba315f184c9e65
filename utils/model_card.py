"""The model card: what a trained model needs to be run again, and what a reader should know of it.

Stage 04 (notebooks/04_evaluation.py) writes `models/<run>/model_card.json` beside
`bone_age.keras` and `bone_age.onnx`; the prediction command (utils/predict.py) reads it, and
only through `ModelCard.read`. One schema, typed here, in the spirit of a MONAI bundle's
metadata: the network's inputs and outputs, the preprocessing that makes an image an input,
the test-time augmentation, the calibrated interval, the image-quality reference, and where the
model came from (parameters, command, commit, headline metrics).

model_card.json, card_version 2
-------------------------------
- ``card_version``: 2 (CARD_VERSION). A card of another version (version 1 had none) is refused
  with the command that re-exports it.
- ``model``: the Keras file of the model (``bone_age.keras``).
- ``network_data_format``: ``inputs`` ``image`` float32 (N, S, S, 1), raw 0..255 grayscale after
  the preprocessing below, and ``male`` float32 (N, 1), 0 or 1; ``outputs`` ``bone_age_months``
  float32 (N, 1). Derived from ``preprocessing.image_size``; a file that says otherwise is refused.
- ``preprocessing``: ``image_size`` (S), ``pad_to_square``, ``contrast``, ``hand_crop``, the
  arguments of `preprocessing.preprocess_image`.
- ``tta``: the test-time augmentation the interval was calibrated with (`parameters.TTA_MODES`).
- ``calibration``: the conformal interval (`conformal.ConformalInterval.to_dict`).
- ``quality_reference``: `quality.QualityReference.to_dict`.
- ``target_mean``, ``target_std``: months, of the training ages the network is standardised by.
- ``metrics``: headline test-split numbers; ``split_counts``: images per split.
- ``parameters``: every parameter of the run; ``command``: the runner command that reproduces
  it; ``git_commit``; ``created_utc`` (ISO 8601).

No TensorFlow or Keras import (NumPy, pandas, OpenCV only): the prediction command imports this module.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from utils import config
from utils.conformal import ConformalInterval
from utils.files import atomic_path, write_json_atomic
from utils.parameters import CONTRASTS, normalise_tta
from utils.quality import QualityReference

CARD_VERSION = 2
CARD_FILE = config.MODEL_CARD_FILE
MODEL_FILE = config.MODEL_FILE
RERUN_STAGES = "04,05"  # stage 04 writes the card; 05 reads stage 04's predictions
# The headline test metrics a card carries (performance_metrics.json has them all).
CARD_METRICS = ("n", "mae", "rmse", "bias", "pearson_r", "r2", "within_6_pct", "within_12_pct", "within_24_pct")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the network: dtype, shape ("N" is the batch) and meaning."""

    dtype: str
    shape: tuple
    description: str
    value_range: tuple | None = None

    def to_dict(self) -> dict:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "value_range": None if self.value_range is None else list(self.value_range),
            "description": self.description,
        }


def network_data_format(image_size: int) -> dict[str, dict[str, TensorSpec]]:
    """{"inputs": {...}, "outputs": {...}} of a bone-age network taking `image_size` px images."""
    return {
        "inputs": {
            "image": TensorSpec(
                "float32", ("N", image_size, image_size, 1),
                "grayscale radiograph after `preprocessing` (uint8 values as float32, not rescaled)", (0, 255),
            ),
            "male": TensorSpec("float32", ("N", 1), "sex of the patient: 1 male, 0 female", (0, 1)),
        },
        "outputs": {
            "bone_age_months": TensorSpec(
                "float32", ("N", 1), "bone age in months (the runtimes clip it to 0..240)"
            ),
        },
    }


@dataclass(frozen=True)
class Preprocessing:
    """The arguments of `preprocessing.preprocess_image` that make a decoded image a network input."""

    image_size: int
    pad_to_square: bool
    contrast: str
    hand_crop: str = "none"

    def __post_init__(self):
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"preprocessing.image_size: expected a positive integer, got {self.image_size!r}")
        if not isinstance(self.pad_to_square, bool):
            raise ValueError(f"preprocessing.pad_to_square: expected true or false, got {self.pad_to_square!r}")
        if self.contrast not in CONTRASTS:
            raise ValueError(f"preprocessing.contrast: expected one of {', '.join(CONTRASTS)}, got {self.contrast!r}")
        if not isinstance(self.hand_crop, str) or not self.hand_crop:
            raise ValueError(f"preprocessing.hand_crop: expected a name such as 'none', got {self.hand_crop!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The keys of the file every card must have (the others have defaults).
REQUIRED_KEYS = (
    "card_version", "preprocessing", "tta", "calibration", "quality_reference", "target_mean", "target_std",
    "metrics", "split_counts", "parameters", "command", "git_commit",
)
REQUIRED_PREPROCESSING_KEYS = ("image_size", "pad_to_square", "contrast")
_FIELD_TYPES = {  # checked on construction, so that a card is valid however it was made
    "calibration": dict, "quality_reference": dict, "metrics": dict, "split_counts": dict,
    "parameters": dict, "command": str, "git_commit": str, "model": str, "created_utc": str,
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelCard:
    """A model's card; `write` and `read` are its only way to and from model_card.json."""

    preprocessing: Preprocessing
    tta: str
    calibration: dict
    quality_reference: dict
    target_mean: float
    target_std: float
    metrics: dict
    split_counts: dict
    parameters: dict
    command: str
    git_commit: str
    model: str = MODEL_FILE
    created_utc: str = field(default_factory=_now)
    card_version: int = field(default=CARD_VERSION, init=False)

    def __post_init__(self):
        if not isinstance(self.preprocessing, Preprocessing):
            raise ValueError(f"preprocessing: expected a Preprocessing, got {type(self.preprocessing).__name__}")
        try:
            object.__setattr__(self, "tta", normalise_tta(self.tta))
        except ValueError as error:
            raise ValueError(f"tta: {error}, got {self.tta!r}") from None
        object.__setattr__(self, "parameters", plain_parameters(self.parameters))
        for name, kind in _FIELD_TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise ValueError(f"{name}: expected a {'mapping' if kind is dict else 'string'}, got {type(value).__name__}")
        for name in ("target_mean", "target_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: expected a number of months, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not self.target_std > 0:
            raise ValueError(f"target_std: expected a positive number of months, got {self.target_std!r}")

    @classmethod
    def from_run(
        cls,
        parameters,
        *,
        overrides: dict | None = None,
        calibration: dict,
        quality_reference: dict,
        target_mean: float,
        target_std: float,
        metrics: dict,
        split_counts: dict,
        git_commit: str,
        model: str = MODEL_FILE,
    ) -> "ModelCard":
        """The card of a run: preprocessing, tta and command from its parameters (a dict or a
        `parameters.Parameters`) and the overrides it was started with."""
        values = plain_parameters(parameters)
        preprocessing = Preprocessing(
            image_size=values["image_size"],
            pad_to_square=values["pad_to_square"],
            contrast=values["contrast"],
            hand_crop=values.get("hand_crop", "none"),
        )
        return cls(
            preprocessing=preprocessing,
            tta=values["tta"],
            calibration=calibration,
            quality_reference=quality_reference,
            target_mean=target_mean,
            target_std=target_std,
            metrics=metrics,
            split_counts=split_counts,
            parameters=values,
            command=run_command(values["preset"], overrides or {}),
            git_commit=git_commit,
            model=model,
        )

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def inputs(self) -> dict[str, TensorSpec]:
        return network_data_format(self.image_size)["inputs"]

    @property
    def outputs(self) -> dict[str, TensorSpec]:
        return network_data_format(self.image_size)["outputs"]

    def conformal_interval(self) -> ConformalInterval:
        return ConformalInterval.from_dict(self.calibration)

    def quality(self) -> QualityReference:
        return QualityReference.from_dict(self.quality_reference)

    def to_dict(self) -> dict:
        return {
            "card_version": self.card_version,
            "model": self.model,
            "network_data_format": {
                part: {name: spec.to_dict() for name, spec in specs.items()}
                for part, specs in network_data_format(self.image_size).items()
            },
            "preprocessing": self.preprocessing.to_dict(),
            "tta": self.tta,
            "calibration": copy.deepcopy(self.calibration),
            "quality_reference": copy.deepcopy(self.quality_reference),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "metrics": copy.deepcopy(self.metrics),
            "split_counts": copy.deepcopy(self.split_counts),
            "parameters": copy.deepcopy(self.parameters),
            "command": self.command,
            "git_commit": self.git_commit,
            "created_utc": self.created_utc,
        }

    def write(self, path) -> Path:
        """Write the card to `path` atomically (a crash never leaves half a card)."""
        return write_json_atomic(path, self.to_dict())

    def to_markdown(self, metrics: dict | None = None) -> str:
        """The card for people (MODEL_CARD.md): intended and out-of-scope use, data and licence,
        preprocessing, metrics with their 95% intervals, subgroups, known failure modes, and the
        command and commit. `metrics` is the run's performance_metrics.json (for the intervals
        and subgroups); without it, the card's headline metrics only."""
        return _markdown_card(self, metrics)

    def write_markdown(self, path, metrics: dict | None = None) -> Path:
        """Write `to_markdown(metrics)` to `path` atomically."""
        path = Path(path)
        with atomic_path(path) as temporary:
            Path(temporary).write_text(self.to_markdown(metrics), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path) -> "ModelCard":
        """The card of a model_card.json; a ValueError naming the file says what is wrong with it
        (not JSON, another card version, a missing or bad key). A missing file is an OSError."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path}: not a model card: cannot be read as JSON ({error})") from error
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data, source: str = "model card") -> "ModelCard":
        """The card of a dict as `to_dict` makes it; errors start with `source` (the file)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: not a model card: expected a JSON object, got {type(data).__name__}")
        version = data.get("card_version")
        if version != CARD_VERSION:
            found = "1 (or missing)" if version in (None, 1) else repr(version)
            raise ValueError(
                f"{source}: model card version {found}, this code reads version {CARD_VERSION}: "
                f"re-export the model by rerunning stage 04: {_rerun_command(data)}"
            )
        preprocessing = data.get("preprocessing")
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if isinstance(preprocessing, dict):
            missing += [f"preprocessing.{key}" for key in REQUIRED_PREPROCESSING_KEYS if key not in preprocessing]
        elif preprocessing is not None:
            raise ValueError(f"{source}: preprocessing: expected a mapping, got {type(preprocessing).__name__}")
        if missing:
            raise ValueError(f"{source}: model card lacks {', '.join(missing)}")
        try:
            card = cls(
                preprocessing=Preprocessing(**{
                    key: preprocessing[key] for key in (*REQUIRED_PREPROCESSING_KEYS, "hand_crop") if key in preprocessing
                }),
                **{item.name: data[item.name] for item in dataclasses.fields(cls)
                   if item.init and item.name != "preprocessing" and item.name in data},
            )
        except (ValueError, TypeError) as error:
            raise ValueError(f"{source}: {error}") from error
        described = data.get("network_data_format")
        expected = card.to_dict()["network_data_format"]
        if described is not None and described != expected:
            raise ValueError(
                f"{source}: network_data_format describes {json.dumps(described)}, but this code feeds "
                f"and reads {json.dumps(expected)}"
            )
        # The parts are parsed now, so that a bad card fails here, naming its file and the part.
        for part, parse in (("calibration", card.conformal_interval), ("quality_reference", card.quality)):
            try:
                parse()
            except (ValueError, KeyError, TypeError) as error:
                detail = f"lacks {error}" if isinstance(error, KeyError) else str(error)
                raise ValueError(f"{source}: {part}: {detail}") from error
        return card


def plain_parameters(parameters) -> dict:
    """A run's parameters as a plain dict: from a mapping, or a `Parameters` object (`to_dict`)."""
    if hasattr(parameters, "to_dict"):
        parameters = parameters.to_dict()
    elif dataclasses.is_dataclass(parameters) and not isinstance(parameters, type):
        parameters = dataclasses.asdict(parameters)
    if not isinstance(parameters, dict):
        raise ValueError(f"parameters: expected a mapping, got {type(parameters).__name__}")
    return copy.deepcopy(dict(parameters))


def run_command(preset: str, overrides: dict) -> str:
    """The runner command that reproduces a run."""
    # Values are read back as YAML, of which JSON is a part; strings go as they are.
    options = "".join(
        f" -p {name} {shlex.quote(value if isinstance(value, str) else json.dumps(value))}"
        for name, value in overrides.items()
    )
    return f"python -m utils.pipeline --preset {preset}{options}"


def _rerun_command(data: dict) -> str:
    """The command that rewrites the card of `data`: its run's command, limited to stages 04 and 05."""
    command = data.get("command")
    if isinstance(command, str) and command.startswith("python -m utils.pipeline --preset "):
        return f"{command} --stages {RERUN_STAGES}"
    parameters = data.get("parameters")
    preset = parameters.get("preset") if isinstance(parameters, dict) else None
    return f"python -m utils.pipeline --preset {preset or '<preset>'} --stages {RERUN_STAGES}"


# ---------------------------------------------------------------------------------------------
# MODEL_CARD.md: the card for people
# ---------------------------------------------------------------------------------------------

RSNA_CITATION = ("Halabi S.S. et al., \"The RSNA Pediatric Bone Age Machine Learning Challenge\", "
                 "Radiology 2019;290(2):498-503")
_CONTRASTS_TEXT = {"clahe": "contrast-limited adaptive histogram equalisation (CLAHE)",
                   "percentile": "a percentile contrast stretch", "none": "no contrast normalisation"}
_HAND_CROPS_TEXT = {"none": "not cropped (the whole frame)", "box": "cropped to the bounding box of the hand (largest bright component)",
                    "rotated": "cropped to the hand and turned upright"}


def _number(value, digits: int = 1, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:{'+' if signed else ''}.{digits}f}"


def _with_ci(entry: dict, key: str, digits: int = 1, signed: bool = False) -> str:
    """'9.8 (95% CI 9.3 to 10.2)', or the value alone when the entry has no interval of `key`."""
    interval = (entry.get("ci") or {}).get(key)
    text = _number(entry.get(key), digits, signed)
    if interval:
        text += f" ({_number(interval['low'], digits, signed)} to {_number(interval['high'], digits, signed)})"
    return text


def _markdown_table(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows[1:]]


def _data_lines(parameters: dict, split_counts: dict) -> list[str]:
    lines = _source_lines(parameters, split_counts)
    if parameters.get("refit_on_validation"):
        lines.append(f"- Refitted: the network trained on the training and validation images together for "
                     f"{parameters.get('epochs')} epochs (a count chosen on validation by a run without the refit) "
                     "and kept its last epoch; the calibration and test splits stayed out.")
    return lines


def _source_lines(parameters: dict, split_counts: dict) -> list[str]:
    dataset = str(parameters.get("dataset", ""))
    counts = ", ".join(f"{name} {count:,}" for name, count in split_counts.items())
    if dataset == "synthetic":
        return [f"- Synthetic hand radiographs drawn by `utils/synthetic.py` ({counts}); their skeletal "
                "maturity follows age and sex. No patient data, so no data licence applies, and no claim "
                "about real radiographs follows from this model."]
    lines = [f"- `{dataset}` ({counts}), split at random, stratified by age band and sex; the test split took "
             "no part in training or model selection."]
    if "rsna" in dataset.lower():
        lines += [
            "- Source: the RSNA Pediatric Bone Age Challenge 2017 data (" + RSNA_CITATION + "). Labels are one "
            "radiologist's clinical reading (Greulich & Pyle), in whole months.",
            "- Licence: non-commercial research and education only, with attribution to the RSNA and to "
            + RSNA_CITATION + ". The images are not redistributed with the model.",
        ]
        if "100" in dataset:
            lines.append("- The images are 100 x 100 pixel thumbnails, stretched to a square without keeping the "
                         "aspect ratio: fine detail of the growth plates is lost.")
    else:
        lines.append("- Licence and labelling protocol: as given by the data set's provider.")
    return lines


def _failure_modes(metrics: dict | None) -> list[str]:
    modes = []
    if metrics:
        bands = metrics.get("by_age_band") or {}
        trend = metrics.get("regression_to_mean") or {}
        slope_interval = (trend.get("ci") or {}).get("slope") or {}
        if trend.get("slope") is not None and bands and trend["slope"] < 0 and slope_interval.get("high", 0) < 0:
            first, last = next(iter(bands)), list(bands)[-1]
            modes.append(f"Regression towards the mean: the residual falls by {_number(-100 * trend['slope'], 1)} "
                         f"months per 100 months of true age; bias {_number(bands[first].get('bias'), 1, True)} "
                         f"months in {first} and {_number(bands[last].get('bias'), 1, True)} in {last}. The "
                         "youngest children are read too old and the oldest too young.")
        if bands:
            worst = max(bands, key=lambda band: bands[band].get("mae") or 0)
            modes.append(f"The largest errors are in the {worst} band (MAE {_with_ci(bands[worst], 'mae')} months, "
                         f"n = {bands[worst].get('n')})."
                         + (" Bands with fewer than 30 test images: "
                            + ", ".join(band for band, entry in bands.items() if entry.get("few_images"))
                            + "; their numbers are imprecise." if any(entry.get("few_images")
                                                                      for entry in bands.values()) else ""))
        interval = metrics.get("prediction_interval") or {}
        nominal = interval.get("nominal_pct")
        short = [band for band, entry in (interval.get("by_age_band") or {}).items()
                 if nominal is not None and ((entry.get("ci") or {}).get("coverage_pct") or {}).get("high", 100) < nominal]
        if short:
            modes.append(f"The {_number(nominal, 0)}% intervals cover too rarely in {', '.join(short)} (the whole "
                         "95% confidence interval of the coverage is below the nominal level).")
    modes += [
        "Images unlike the training radiographs (blank, inverted, rotated, not a hand, another body part) still "
        "get an age; the quality flag marks them, and such predictions must be discarded.",
        "Trained and tested on one data source: accuracy on other hospitals, scanners, populations or "
        "acquisition protocols is unknown.",
    ]
    return modes


def _markdown_card(card: "ModelCard", metrics: dict | None) -> str:
    parameters = card.parameters
    run = parameters.get("run_name") or "run"
    source = metrics or {"n": None, **card.metrics}
    model = (metrics or {}).get("model") or {}
    interval = (metrics or {}).get("prediction_interval") or {}
    nominal = interval.get("nominal_pct") or 100 * card.calibration.get("coverage", 0.9)
    lines = [
        f"# Model card: bone-age model `{run}`",
        "",
        "*Research software. Not a medical device, not cleared or approved by any regulator; not for "
        "diagnosis, treatment or any other clinical decision.*",
        "",
        "## Model",
        "",
        f"- A convolutional network (`{parameters.get('architecture', 'ours')}`"
        + (f", {model['parameters_count']:,} parameters" if model.get("parameters_count") else "")
        + f") that reads a left-hand radiograph ({card.image_size} x {card.image_size} pixels, grayscale) and the "
        "child's sex, and returns bone age in months with a "
        f"{_number(nominal, 0)}% prediction interval (split-conformal, `{card.calibration.get('method', '')}`) and "
        "an image-quality flag.",
        f"- Files: `{card.model}` (Keras), `bone_age.onnx` (the same network for ONNX Runtime), `model_card.json` "
        "(what the prediction command needs). Run it with `python -m utils.predict IMAGE --sex M|F`.",
        "",
        "## Intended use",
        "",
        "- Research and teaching: methods for automated bone-age assessment, benchmarks, error analysis, "
        "demonstrations of a reproducible pipeline.",
        "",
        "## Out-of-scope use",
        "",
        "- Any clinical use: diagnosis or monitoring of growth disorders, treatment decisions, screening.",
        "- Forensic or legal age estimation (for example of asylum seekers or athletes).",
        "- Adults, right hands, other body parts, or images the quality flag marks.",
        "- Populations, hospitals or scanners it has not been validated on.",
        "",
        "## Data and licence",
        "",
        *_data_lines(parameters, card.split_counts),
        "",
        "## Preprocessing",
        "",
        f"- Decoded to 8-bit grayscale; {_HAND_CROPS_TEXT.get(card.preprocessing.hand_crop, card.preprocessing.hand_crop)}; "
        + ("padded to a square (aspect ratio kept)" if card.preprocessing.pad_to_square
           else "stretched to a square (aspect ratio not kept)")
        + f"; resized to {card.image_size} x {card.image_size} pixels; "
        f"{_CONTRASTS_TEXT.get(card.preprocessing.contrast, card.preprocessing.contrast)}.",
        f"- Test-time augmentation: `{card.tta}`. The target is standardised with the training mean "
        f"{card.target_mean:.1f} months and SD {card.target_std:.1f} months.",
        "",
        f"## Metrics (test split{', n = ' + format(source['n'], ',') if source.get('n') else ''})",
        "",
        "95% confidence intervals in parentheses (bootstrap over the test images)." if metrics else
        "Headline numbers of the test split (no intervals: this card was written without the metrics file).",
        "",
    ]
    rows = [["Metric", "Value"],
            ["MAE (months)", _with_ci(source, "mae", 2)],
            ["RMSE (months)", _with_ci(source, "rmse", 2)],
            ["Bias, predicted - true (months)", _with_ci(source, "bias", 2, True)],
            ["Within 12 months (%)", _with_ci(source, "within_12_pct")]]
    if interval:
        rows.append([f"Interval coverage (%), nominal {_number(nominal, 0)}%", _with_ci(interval, "coverage_pct")])
        rows.append(["Mean interval width (months)", _number(interval.get("mean_width"))])
    if metrics and metrics.get("baseline_mae_mean_predictor") is not None:
        rows.append(["MAE of predicting the training mean (months)", _number(metrics["baseline_mae_mean_predictor"], 2)])
    baseline = (metrics or {}).get("seed_baseline") or {}
    difference = baseline.get("paired_mae_difference")
    if difference:
        rows.append(["Seed baseline MAE minus ours (months, paired)",
                     f"{_number(difference['difference'], 2, True)} ({_number(difference['low'], 2, True)} to "
                     f"{_number(difference['high'], 2, True)})"])
    lines += _markdown_table(rows)
    runtime = (metrics or {}).get("prediction_runtime")
    if runtime:
        test = runtime["test"]
        lines += ["", f"The metrics are the Keras model's; the prediction command runs its ONNX export "
                      f"({runtime['precision']}), whose test MAE is {_number(test['mae_runtime'], 2)} months "
                      f"({_number(test['mae_change'], 3, True)} against the Keras model's; each prediction moves by "
                      f"{_number(test['mean_abs_difference'], 2)} months on average, at most "
                      f"{_number(test['max_abs_difference'], 1)})."]
    if metrics:
        coverage_by = {**(interval.get("by_sex") or {}), **(interval.get("by_age_band") or {})}
        lines += ["", "## Subgroups", ""]
        group_rows = [["Group", "n", "MAE (months)", "Bias (months)", "Within 12 months (%)", "Coverage (%)"]]
        for name in ("by_sex", "by_age_band"):
            for group, entry in (metrics.get(name) or {}).items():
                flag = " (few images)" if entry.get("few_images") else ""
                group_rows.append([f"{group}{flag}", entry.get("n"), _with_ci(entry, "mae", 1),
                                   _with_ci(entry, "bias", 1, True), _number(entry.get("within_12_pct")),
                                   _with_ci(coverage_by.get(group) or {}, "coverage_pct")])
        lines += _markdown_table(group_rows)
        lines += ["", "Age bands are bands of the true (reference) bone age."]
    lines += ["", "## Known failure modes", "", *(f"- {mode}" for mode in _failure_modes(metrics)), "",
              "## Reproduce", "",
              f"- Command: `{card.command}`",
              f"- Commit: `{card.git_commit}`",
              f"- Created: {card.created_utc}", ""]
    return "\n".join(lines)
