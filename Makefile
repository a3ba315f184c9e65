# Two commands on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PRESET ?= demo

.PHONY: setup run test test-fast sync clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name bone-age --display-name "Python (bone-age)"
	touch $@

## The whole study on the embedded synthetic data set (or PRESET=rsna100 on the real thumbnails).
run: setup
	$(BIN)/python -m utils.pipeline --preset $(PRESET)

## Unit tests, then the pipeline and the notebooks executed on the tiny `ci` preset.
test: setup
	$(BIN)/python -m pytest -v --durations=15

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -n auto --dist loadscope  # one worker per core; a module's tests in one worker, so its fixtures are built once

## Pair notebooks after editing either side.
sync: setup
	$(BIN)/jupytext --sync notebooks/*.ipynb bone-age.ipynb
