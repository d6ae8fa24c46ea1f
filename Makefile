# make test : create .venv if needed, install lyco with its test dependencies, run the test suite
# make demo : run the end-to-end demo on the embedded default
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lyco-installed

.PHONY: test test-slow test-all demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[sd,test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -p no:cacheprovider -m slow

test-all: $(STAMP)
	$(PY) -m pytest -n 2 -p no:cacheprovider -m "slow or not slow"

demo: $(STAMP)
	$(PY) -m lyco demo

clean:
	rm -rf $(VENV) demo_out build dist src/*.egg-info
