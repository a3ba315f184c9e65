"""The modules of utils import downwards only: no circle, and no import from a lower floor to a higher one."""

import ast
import subprocess
import sys

import pytest

from utils import config

# Floors, lowest first: a module may import modules of lower floors only (lazy imports included).
FLOORS = [
    {"config", "files", "quality"},
    {"parameters", "evaluation", "synthetic", "plots", "clinical", "rejection"},
    {"preprocessing", "conformal", "data", "figures", "result_formats", "backbones", "comparison"},
    {"model", "model_card", "onnx_runtime", "study", "growth"},
    {"training", "explain", "report", "ensemble", "sweep"},
    {"predict", "pipeline"},
]
FLOOR = {module: level for level, modules in enumerate(FLOORS) for module in modules}


def imports_of(module: str) -> set[str]:
    """The utils modules that `module` imports, at the top or inside functions."""
    tree = ast.parse((config.PROJECT_ROOT / "utils" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "utils":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("utils."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("utils."))
    return found


def test_every_module_has_a_floor():
    modules = {path.stem for path in (config.PROJECT_ROOT / "utils").glob("*.py")} - {"__init__"}
    assert modules == set(FLOOR), f"floors to assign or to remove: {modules ^ set(FLOOR)}"


@pytest.mark.parametrize("module", sorted(FLOOR))
def test_imports_go_downwards(module):
    upward = sorted(other for other in imports_of(module) if FLOOR[other] >= FLOOR[module] and other != module)
    assert not upward, f"utils.{module} (floor {FLOOR[module]}) imports {upward} of the same or a higher floor"


@pytest.mark.parametrize("module, heavy", [("predict", "tensorflow"), ("predict", "keras"), ("model_card", "keras"),
                                           ("parameters", "cv2"),
                                           # utils.model imports TensorFlow itself: seconds in a new interpreter
                                           pytest.param("model", "onnxruntime", marks=pytest.mark.slow), ("report", "keras"),
                                           ("backbones", "keras"), ("sweep", "tensorflow"), ("comparison", "keras")])
def test_light_modules_stay_light(module, heavy):
    code = f"import sys, utils.{module}; print({heavy!r} in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "False", f"importing utils.{module} loads {heavy}"
