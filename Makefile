# The two commands of the quick start. Both set up .venv first (torch's CPU wheel, then the project).
# `make demo` runs the demo pipeline (pipelines/demo.yaml); `make ui` serves the MLflow UI on mlruns/.
.PHONY: setup demo ui test lint

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

ui: setup
	.venv/bin/oasis-gen ui

test: setup
	.venv/bin/python -m ruff check oasis_gen tests benchmarks scripts
	.venv/bin/python -m pytest -q -n 2 --dist loadfile   # modules on both cores; a module's fixtures stay in one worker

lint: setup
	.venv/bin/python -m ruff check oasis_gen tests benchmarks scripts
