# The two commands of the quick start. Both set up .venv first (torch's CPU wheel, then the project).
.PHONY: setup demo test lint

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/python -m ruff check oasis_gen tests benchmarks
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/python -m ruff check oasis_gen tests benchmarks
