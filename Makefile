# make test : create .venv if needed, install lyco with its test dependencies, run the test suite
# make demo : run the end-to-end demo on the embedded default
# make test-min : a second venv with the lowest versions lyco declares (.ci/min-versions.txt), a test subset
# make lint : ruff and mypy as configured in pyproject.toml (mypy: strict on lyco.algos, lyco.network, lyco.io)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lyco-installed

.PHONY: test test-slow test-all test-min lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[sd,test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -p no:cacheprovider

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -p no:cacheprovider -m slow

test-all: $(STAMP)
	$(PY) -m pytest -n 2 -p no:cacheprovider -m "slow or not slow"

MIN_VENV ?= .venv-min
MIN_PY := $(MIN_VENV)/bin/python
MIN_STAMP := $(MIN_VENV)/.lyco-installed

$(MIN_STAMP): pyproject.toml .ci/min-versions.txt
	test -x $(MIN_PY) || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_PY) -m pip install -q --upgrade pip
	$(MIN_PY) -m pip install -q -r .ci/min-versions.txt "pytest>=7" "pytest-xdist>=3"
	$(MIN_PY) -m pip install -q -c .ci/min-versions.txt -e ".[sd]"
	$(MIN_PY) -m pip check
	touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	LYCO_TEST_MIN=1 $(MIN_PY) -m pytest -n 2 -p no:cacheprovider $$(grep -v "^#" .ci/min-tests.txt)

demo: $(STAMP)
	$(PY) -m lyco demo

clean:
	rm -rf $(VENV) $(MIN_VENV) demo_out build dist src/*.egg-info .mypy_cache .ruff_cache
