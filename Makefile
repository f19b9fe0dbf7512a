# The two commands of the README.
.PHONY: demo test lint bench

demo:  ## set up .venv and run the end-to-end demo (collect -> fit -> evaluate) into runs/demo
	bash scripts/setup.sh
	.venv/bin/trajlib demo --out runs/demo

test:  ## set up .venv with dev tools and run the whole test suite (slow end-to-end tests included)
	bash scripts/setup.sh dev
	.venv/bin/python -m ruff check trajlib tests
	.venv/bin/python -m pytest -q -p no:cacheprovider

bench:
	.venv/bin/python tests/benchmarks/bench_collect.py
	.venv/bin/python tests/benchmarks/bench_store.py
	.venv/bin/python tests/benchmarks/bench_features.py
	.venv/bin/python tests/benchmarks/bench_controllers.py
	.venv/bin/python tests/benchmarks/bench_deploy.py
