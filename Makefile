# make demo: the main job on the built-in default.  make test: the test suite.  make bench: benchmarks.
# Each creates .venv and installs what it needs on first use: demo and bench the package alone, test (and
# install) the package with its test extras.
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml scripts/setup-venv.sh
	bash scripts/setup-venv.sh

$(VENV)/.installed-dev: pyproject.toml scripts/setup-venv.sh
	bash scripts/setup-venv.sh --dev

install: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/viral demo --out $(DEMO_DIR)

test: $(VENV)/.installed-dev
	$(PY) -m pytest tests

bench: $(VENV)/.installed
	mkdir -p runs/bench
	$(PY) bench/step_overhead.py --json runs/bench/step_overhead.json

clean:
	rm -rf $(VENV) runs
