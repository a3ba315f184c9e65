"""The modules of utils import downwards only: no circle, and no import from a lower floor to a higher one."""

import ast
import json
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


# (module, the heavy libraries it must not load), lightest first: one interpreter imports them in
# this order and checks after each, so a library that is still absent after a module was loaded
# by none of the modules before it either (a new interpreter per pair cost seconds of test time).
LIGHT_MODULES = [("parameters", ("cv2", "tensorflow", "keras")), ("quality", ("tensorflow", "keras")),
                 ("evaluation", ("tensorflow", "keras")), ("conformal", ("tensorflow", "keras")),
                 ("clinical", ("tensorflow", "keras")), ("model_card", ("tensorflow", "keras")),
                 ("onnx_runtime", ("tensorflow", "keras")),
                 ("predict", ("tensorflow", "keras")), ("sweep", ("tensorflow", "keras")),
                 ("comparison", ("tensorflow", "keras")), ("report", ("tensorflow", "keras")),
                 ("backbones", ("tensorflow", "keras"))]
LIGHTNESS_CHECK = """
import importlib, json, sys
loaded = {}
for module, heavy in json.loads(sys.argv[1]):
    importlib.import_module("utils." + module)
    loaded[module] = [name for name in heavy if name in sys.modules]
print(json.dumps(loaded))
"""


def test_light_modules_stay_light():
    completed = subprocess.run([sys.executable, "-c", LIGHTNESS_CHECK, json.dumps(LIGHT_MODULES)],
                               capture_output=True, text=True, check=True)
    loaded = json.loads(completed.stdout)
    heavy = {module: names for module, names in loaded.items() if names}
    assert not heavy, f"importing these modules (in this order) loads heavy libraries: {heavy}"
