#!/usr/bin/env bash
# README command 2 (and CI, .ci/run): set up .venv with dev tools, lint, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/python -m ruff check trajlib tests scripts
.venv/bin/python -m mypy trajlib
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
