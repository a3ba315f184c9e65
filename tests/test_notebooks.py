"""The notebooks as files: paired, in sync, without outputs, each opening with its parameters."""

import json

import pytest

from utils import config, pipeline

NOTEBOOKS = [pipeline.NOTEBOOKS_DIR / f"{stage}.ipynb" for stage in pipeline.STAGES] + [pipeline.SUMMARY_NOTEBOOK,
                                                                                    pipeline.COMPARISON_NOTEBOOK]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebook_has_no_outputs_and_a_parameters_cell(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code_cells = [cell for cell in cells if cell["cell_type"] == "code"]
    assert all(not cell["outputs"] and cell["execution_count"] is None for cell in code_cells)
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"][0].startswith("# ")
    assert "parameters" in code_cells[0]["metadata"].get("tags", [])
    assert json.loads(notebook.read_text())["metadata"]["kernelspec"]["name"] == pipeline.KERNEL_NAME


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_py_and_ipynb_hold_the_same_cells(notebook):
    import jupytext

    from_py = jupytext.read(notebook.with_suffix(".py"))
    from_ipynb = jupytext.read(notebook)
    assert [(cell.cell_type, cell.source) for cell in from_py.cells] == [
        (cell.cell_type, cell.source) for cell in from_ipynb.cells
    ]
    assert [cell.metadata.get("tags") for cell in from_py.cells] == [
        cell.metadata.get("tags") for cell in from_ipynb.cells
    ]


def test_jupytext_sync_changes_nothing(tmp_path):
    import shutil

    for notebook in NOTEBOOKS:
        for suffix in (".py", ".ipynb"):
            shutil.copy(notebook.with_suffix(suffix), tmp_path / notebook.with_suffix(suffix).name)
    shutil.copy(config.PROJECT_ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    before = {path.name: path.read_text() for path in tmp_path.iterdir()}
    from jupytext.cli import jupytext

    jupytext(["--quiet", "--sync", *sorted(str(path) for path in tmp_path.glob("*.ipynb"))])  # in process: no new interpreter
    after = {path.name: path.read_text() for path in tmp_path.iterdir()}
    assert before == after
