"""Every test runs the study in a temporary results/models root, never in the repository's own.

Set at import, before any test module runs, so that the notebooks' kernels and the runner's
subprocesses inherit it too.
"""

import os
import tempfile
from pathlib import Path

_ROOT = Path(tempfile.mkdtemp(prefix="bone-age-tests-"))
os.environ["BONE_AGE_RESULTS_DIR"] = str(_ROOT / "results")
os.environ["BONE_AGE_MODELS_DIR"] = str(_ROOT / "models")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
