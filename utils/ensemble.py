"""Ensembles: several trained bone-age models averaged into one model with the same inputs and output.

The ensemble is an ordinary Functional model ({"image", "male"} -> months), so it is saved as
one `.keras`, exported to ONNX like any other (int8 when the runs' `onnx_precision` is, as stage
04 does), and the prediction command runs it unchanged.
This is the project's one ensemble mechanism: the members of a run (`ensemble_members`, seeds
seed, seed+1, ...) and the models of several finished runs, e.g. the seeds of a sweep:

    python -m utils.ensemble rsna100-seed1 rsna100-seed2 rsna100-seed3 --out models/rsna100-ensemble
    python -m utils.predict scan.png --sex F --model models/rsna100-ensemble

`from_runs` refuses runs that differ in preprocessing (their images would not be the same input)
or in their split (one's calibration or test images would be another's training images, as the
folds of a cross-validation are). The ensemble gets its own conformal calibration on the runs'
calibration split, its own metrics on their test split (and, to judge it against its members,
on their validation split: `ensemble_validation`) and its own model card, in the `--out`
folder: bone_age.keras, bone_age.onnx, model_card.json, MODEL_CARD.md, performance_metrics.json,
predictions_test.csv.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from keras import layers

from utils import config, conformal, evaluation, model_card, onnx_runtime, quality, study
from utils.files import atomic_path
from utils.model import OUTPUT_LAYER, measure_inference_speed, predict_months
from utils.parameters import load_parameters

# What makes an image a network input, and how the interval was calibrated: the runs must agree.
SHARED_PREPROCESSING = (*(item.name for item in dataclasses.fields(model_card.Preprocessing)), "tta")
# What decides a run's images and split; data_seed stands for `data_seed, else seed`.
SHARED_DATA = ("dataset", "synthetic_images", "synthetic_image_size", "drop_invalid", "split_fractions", "data_seed",
               "folds", "fold")
PREDICTION_COLUMNS = ("id", "boneage", "male", "boneage_pred", "boneage_low", "boneage_high", "quality_score",
                      "quality_flag")


def average(members: list[keras.Model], name: str = "bone_age_ensemble") -> keras.Model:
    """One model whose output is the mean of the members' months (each run in inference mode)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    shapes = {tuple(member.input["image"].shape[1:]) for member in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members take different image shapes {sorted(shapes)}: they must share preprocessing")
    if len(members) == 1:
        return members[0]
    inputs = {"image": keras.Input(shapes.pop(), name="image"), "male": keras.Input((1,), name="male")}
    # Nested models need unique names inside the ensemble; wrapping keeps each member's weights.
    outputs = [
        keras.Model(member.input, member.output, name=f"member{index}")(inputs, training=False)
        for index, member in enumerate(members, start=1)
    ]
    return keras.Model(inputs, layers.Average(name=OUTPUT_LAYER)(outputs), name=name)


def members_of(model: keras.Model) -> list[keras.Model]:
    """The member models of an ensemble made by `average`, or [model] for a single model."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith("member")]
    return nested or [model]


def explainable(model: keras.Model) -> keras.Model:
    """The model Grad-CAM can look into: the first member of an ensemble, the model itself otherwise."""
    return members_of(model)[0]


def _recorded(run: str) -> dict:
    """The parameters a finished run recorded in its performance_metrics.json."""
    paths = config.RunPaths(run)
    missing = [path for path in (paths.metrics, paths.model, paths.split, paths.training_summary) if not path.exists()]
    if missing:
        raise ValueError(f"run {run!r}: {', '.join(config.display_path(path) for path in missing)} missing; "
                         "an ensemble is made of runs that finished stage 04")
    values = dict(json.loads(paths.metrics.read_text(encoding="utf-8"))["run"]["parameters"])
    values["data_seed"] = values.get("seed") if values.get("data_seed") is None else values["data_seed"]
    return values


def check_members(runs: list[str]) -> list[dict]:
    """The recorded parameters of each run; a ValueError names the parameter in which two differ
    (preprocessing, or what decides the split), or the split files that differ."""
    if len(runs) < 2:
        raise ValueError(f"an ensemble of runs needs at least two runs, got {len(runs)}")
    if len(set(runs)) != len(runs):
        raise ValueError(f"a run is named twice: {' '.join(runs)}")
    recorded = [_recorded(run) for run in runs]
    first = recorded[0]
    for run, values in zip(runs[1:], recorded[1:]):
        for names, what in ((SHARED_PREPROCESSING, "preprocessing"), (SHARED_DATA, "the split")):
            for name in names:
                if values.get(name) != first.get(name):
                    raise ValueError(
                        f"ensemble members must share {what}: {name} is {first.get(name)!r} in {runs[0]} but "
                        f"{values.get(name)!r} in {run}" + ("" if what == "preprocessing" else
                        " (the calibration and test images of one would be training images of the other)"))
        if not pd.read_csv(config.RunPaths(run).split, dtype=str).equals(pd.read_csv(config.RunPaths(runs[0]).split, dtype=str)):
            raise ValueError(f"ensemble members must share the split: {run} and {runs[0]} have different split.csv files; "
                             f"rerun stage 02 of both with the same data_seed")
    return recorded


def from_runs(runs: list[str], out) -> dict:
    """Average the models of finished runs into one model in folder `out`, calibrate its intervals on
    their calibration split, score it on their test split and write its card; its metrics."""
    recorded = check_members(runs)
    out = Path(out).resolve()
    if any(out == config.RunPaths(run).models.resolve() for run in runs):
        raise ValueError(f"--out {out} is the model folder of a member: name another folder")
    out.mkdir(parents=True, exist_ok=True)
    first = recorded[0]
    parameters = load_parameters(first["preset"], {name: value for name, value in first.items() if name != "preset"})
    paths = config.RunPaths(parameters.run_name)
    table = study.load_split_table(parameters, paths)
    images = study.load_images(table, parameters, progress=False)
    members = [keras.models.load_model(config.RunPaths(run).model, compile=False) for run in runs]
    ensemble = average(members, name="bone_age_runs_ensemble")
    calibration, test, train, validation = (study.split_arrays(table, images, split)
                                            for split in ("calibration", "test", "train", "validation"))
    # Whether the ensemble beats its members is judged here, on validation, never on test.
    validation_pred = {name: predict_months(model, validation[0], validation[1], tta=parameters.tta)
                       for name, model in [*zip(runs, members), ("ensemble", ensemble)]}
    validation_mae = {name: float(np.mean(np.abs(pred - validation[2]))) for name, pred in validation_pred.items()}
    calibration_pred = predict_months(ensemble, calibration[0], calibration[1], tta=parameters.tta)
    intervals = conformal.fit_conformal(calibration[2], calibration_pred, coverage=parameters.interval_coverage)
    predictions = table[table["split"] == "test"].reset_index(drop=True)
    predictions["boneage_pred"] = predict_months(ensemble, test[0], test[1], tta=parameters.tta)
    predictions["boneage_low"], predictions["boneage_high"] = intervals.interval(predictions["boneage_pred"].to_numpy())
    quality_reference = quality.QualityReference.fit(train[0])
    predictions["quality_score"], predictions["quality_flag"] = quality_reference.assess(test[0])

    ensemble.save(out / config.MODEL_FILE)
    # The members' graph precision (int8: calibrated on the calibration split), and what it changes.
    graph = onnx_runtime.export_prediction_graph(ensemble, out / config.ONNX_FILE, precision=parameters.onnx_precision,
                                                 calibration=calibration[:2])
    prediction_runtime = evaluation.prediction_runtime_record(
        graph, parameters.onnx_precision, tta=parameters.tta, validation=validation,
        validation_pred=validation_pred["ensemble"], test=test, test_pred=predictions["boneage_pred"].to_numpy(),
        intervals=intervals)
    member_metrics = [json.loads(config.RunPaths(run).metrics.read_text(encoding="utf-8")) for run in runs]
    speed = measure_inference_speed(ensemble, parameters.image_size)
    values = {**parameters.to_dict(), "run_name": out.name}
    metrics = evaluation.build_performance_metrics(
        parameters=values,
        dataset_name=study.dataset_name(parameters),
        dataset_source=str(study.dataset_folder(parameters)),
        split_counts=table["split"].value_counts().reindex(config.SPLITS, fill_value=0).to_dict(),
        model_info={"architecture": parameters.architecture, "parameters_count": ensemble.count_params(),
                    "image_size": parameters.image_size, "path": config.display_path(out / config.MODEL_FILE)},
        y_true=test[2], y_pred=predictions["boneage_pred"].to_numpy(), male=test[1].astype(bool), train_ages=train[2],
        interval=(predictions["boneage_low"].to_numpy(), predictions["boneage_high"].to_numpy()),
        interval_method=intervals.method, interval_nominal=parameters.interval_coverage,
        timing={"training_seconds": sum(metrics["timing"]["training_seconds"] for metrics in member_metrics),
                "training_images_per_second": None,  # the members trained apart
                "inference_images_per_second": speed["batch_images_per_second"],
                "inference_seconds_single_image": speed["single_image_seconds"],
                "numpy_fp32_matmul_gflops_at_training": None,
                "numpy_fp32_matmul_gflops_at_evaluation": evaluation.matmul_gflops()},
        prediction_runtime=prediction_runtime,
    )
    metrics["run"]["ensemble_of"] = list(runs)
    metrics["ensemble_validation"] = {"n": len(validation[2]), "tta": parameters.tta,
                                      "mae": validation_mae.pop("ensemble"), "mae_by_member": validation_mae}
    evaluation.write_performance_metrics(out / config.METRICS_FILE, metrics)
    with atomic_path(out / "predictions_test.csv") as temporary:
        predictions[list(PREDICTION_COLUMNS)].to_csv(temporary, index=False)
    summary = json.loads(paths.training_summary.read_text(encoding="utf-8"))
    card = model_card.ModelCard.from_run(
        values, calibration=intervals.to_dict(), quality_reference=quality_reference.to_dict(),
        target_mean=summary["target_mean"], target_std=summary["target_std"],
        metrics={key: metrics[key] for key in model_card.CARD_METRICS}, split_counts=metrics["dataset"]["splits"],
        git_commit=metrics["run"]["git_commit"], model=config.MODEL_FILE)
    card = dataclasses.replace(card, command=shlex.join(
        ["python", "-m", "utils.ensemble", *runs, "--out", config.display_path(out)]))
    card.write(out / config.MODEL_CARD_FILE)
    card.write_markdown(out / "MODEL_CARD.md", metrics)
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.ensemble",
        description="Average the models of finished runs into one exported model with its own calibration, "
                    "metrics and model card.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run names under results/ and models/ (at least two)")
    parser.add_argument("--out", required=True, type=Path, help="the ensemble's model folder, e.g. models/NAME")
    arguments = parser.parse_args(argv)
    try:
        metrics = from_runs(arguments.runs, arguments.out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    interval, validation = metrics["prediction_interval"], metrics["ensemble_validation"]
    members = ", ".join(f"{mae:.2f}" for mae in validation["mae_by_member"].values())
    print(f"ensemble of {len(arguments.runs)} runs -> {arguments.out}: validation MAE {validation['mae']:.2f} months "
          f"(members {members}); test MAE {metrics['mae']:.2f} months "
          f"(95% CI {metrics['ci']['mae']['low']:.2f} to {metrics['ci']['mae']['high']:.2f}), "
          f"interval coverage {interval['coverage_pct']:.1f}% (nominal {interval['nominal_pct']:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
