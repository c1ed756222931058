# The two commands of the Quickstart; each does its own set-up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test clean

setup:
	bash scripts/setup.sh

demo: setup
	bash examples/attention_block/demo.sh

# Both cores (pytest-xdist); worksteal evens out the workers' loads at the end of the run.
test: setup
	$(VENV)/bin/pytest -q -n auto --dist worksteal --durations=30

clean:
	rm -rf build examples/out .pytest_cache
