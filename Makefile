# `make demo` and `make test` work on a fresh machine with only Python 3.10+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export YOLO_OFFLINE := true
export YOLO_CONFIG_DIR := $(CURDIR)/.venv/ultralytics-config
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test test-gpu lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/yoloray demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

test-gpu: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/gpu

lint: $(STAMP)
	$(PY) -m ruff check platform tests jobs benchmarks

clean:
	rm -rf $(VENV) runs sample_data
