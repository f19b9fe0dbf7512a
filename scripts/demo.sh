#!/usr/bin/env bash
# README command 1: set up .venv, then run the end-to-end demo (collect -> fit -> evaluate).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/trajlib demo --out "${1:-runs/demo}"
