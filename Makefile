# Shortcuts for the README's two commands (scripts/demo.sh, scripts/test.sh) and the benchmarks.
.PHONY: demo test bench

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

bench:
	.venv/bin/python tests/benchmarks/bench_collect.py
	.venv/bin/python tests/benchmarks/bench_store.py
	.venv/bin/python tests/benchmarks/bench_features.py
	.venv/bin/python tests/benchmarks/bench_controllers.py
	.venv/bin/python tests/benchmarks/bench_deploy.py --checkpoint models/trajlib-lr-v1/checkpoint
