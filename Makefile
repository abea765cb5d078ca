# make demo: the main job on the built-in default.  make test: the test suite.  make bench: benchmarks.
# Both create .venv and install what they need on first use.
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml scripts/setup-venv.sh
	bash scripts/setup-venv.sh

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/viral demo --out $(DEMO_DIR)

test: $(VENV)/.installed
	$(PY) -m pytest tests

bench: $(VENV)/.installed
	mkdir -p runs/bench
	$(PY) bench/step_overhead.py --json runs/bench/step_overhead.json

clean:
	rm -rf $(VENV) runs
