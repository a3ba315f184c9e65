"""The ablation table keeps the rows of variants whose run folders are on another machine."""

import importlib.util
import json

from utils import config

spec = importlib.util.spec_from_file_location("ablation", config.PROJECT_ROOT / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def recorded_row(name, **changes):
    return {"variant": name, "description": ablation.VARIANTS[name][0], "command": ablation.command(name),
            "validation_mae": 11.0, "test_mae": 10.5, "test_within_12_pct": 65.0, "training_minutes": 40.0,
            "training_images_per_second": 40.0, "numpy_fp32_matmul_gflops": 100.0, "git_commit": "a" * 40, **changes}


def test_rows_without_a_run_folder_are_kept_only_for_the_same_command_and_schedule(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "OUTPUT", tmp_path)
    rows = [recorded_row("base"), recorded_row("l1", command="python -m utils.pipeline --preset rsna100 -p loss l1")]
    (tmp_path / "ablation.json").write_text(json.dumps({"shared_overrides": ablation.SHARED, "rows": rows}))
    assert [item["variant"] for item in ablation.tabulate()] == ["base"]  # l1's command is not today's
    table = json.loads((tmp_path / "ablation.json").read_text())
    assert [item["variant"] for item in table["rows"]] == ["base"] and (tmp_path / "ablation.png").exists()

    (tmp_path / "ablation.json").write_text(json.dumps({"shared_overrides": {**ablation.SHARED, "epochs": 5}, "rows": rows}))
    assert ablation.tabulate() == []  # another schedule: nothing compares


def test_a_refitted_variant_has_no_validation_mae_to_compare():
    rows = [recorded_row("base"), recorded_row("refit", validation_mae=None, test_mae=10.2)]
    table = ablation.markdown(rows)
    assert "| `refit` | trained on training + validation, the last of its 15 epochs kept | in-sample | — | 10.20 |" in table
    assert ablation.overrides("refit")["refit_on_validation"] is True
    ablation.plt.close(ablation.figure(rows))  # draws without a validation bar for it


def test_a_difference_to_a_base_from_another_commit_is_marked():
    same = ablation.markdown([recorded_row("base"), recorded_row("l1", validation_mae=11.5)])
    assert "| +0.50 |" in same and "†" not in same and same.rstrip().endswith("| aaaaaaa |")
    mixed = ablation.markdown([recorded_row("base"), recorded_row("l1", validation_mae=11.5, git_commit="b" * 40 + "-dirty")])
    assert "| +0.50 † |" in mixed and "| bbbbbbb-dirty |" in mixed
    assert mixed.rstrip().endswith("not one change at a time.")


def test_the_readme_table_is_the_committed_ablation(monkeypatch):
    """Every row of the README's table comes from results/benchmarks/ablation.json, all its rows."""
    monkeypatch.setattr(ablation, "OUTPUT", config.PROJECT_ROOT / "results" / "benchmarks")  # read only
    recorded = ablation.recorded_rows()  # the rows of today's commands and schedule
    readme = (config.PROJECT_ROOT / "README.md").read_text()
    assert ablation.markdown(list(recorded.values())) in readme, "README's ablation table differs from ablation.json"
    assert set(recorded) == set(ablation.VARIANTS), "a variant has no row"


def test_a_finished_run_becomes_a_row_that_says_what_made_its_tree_dirty(tmp_path, monkeypatch):
    monkeypatch.setenv("BONE_AGE_RESULTS_DIR", str(tmp_path))
    paths = config.RunPaths("ablation-l1")
    paths.results.mkdir(parents=True)
    parameters = ablation.load_parameters(ablation.PRESET, ablation.overrides("l1")).to_dict()
    run = {"parameters": parameters, "git_commit": "abc-dirty", "uncommitted_changes": ["utils/model.py"]}
    paths.metrics.write_text(json.dumps({
        "run": run, "mae": 11.5, "within_12_pct": 62.04, "prediction_interval": {"coverage_pct": 89.96},
        "timing": {"inference_images_per_second": 400.0, "numpy_fp32_matmul_gflops_at_training": 300.0},
        "model": {"parameters_count": 1217057}}))
    paths.training_summary.write_text(json.dumps({"ours": {
        "best_val_mae": 11.8123, "best_epoch": 14, "epoch": list(range(1, 16)), "training_seconds": 1200.0,
        "train_images_per_second": 95.04}}))
    row = ablation.row("l1")
    assert row["validation_mae"] == 11.812 and row["test_mae"] == 11.5 and row["training_minutes"] == 20.0
    assert row["git_commit"] == "abc-dirty" and row["uncommitted_changes"] == ["utils/model.py"]
    assert ablation.row("huber_small") is None  # no run folder
    paths.metrics.write_text(json.dumps({"run": {**run, "parameters": {**parameters, "epochs": 30}}}))
    assert ablation.row("l1") is None  # another run's parameters under this name
