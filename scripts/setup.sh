#!/usr/bin/env bash
# Create .venv and install trajlib into it.
#   scripts/setup.sh        runtime install (what `make demo` needs)
#   scripts/setup.sh dev    runtime + test/lint tools + optional integrations (Ray, Lightning, HF, ...)
# Where no NVIDIA GPU is visible, torch is pinned to 2.13.0 (constraints.txt), which resolves to the
# CPU build; with a GPU, pip's default torch (a CUDA build) is used.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip_args=(-q --disable-pip-version-check --no-compile)
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  pip_args+=(-c constraints.txt)
  # No GPU: torch must be the CPU build. Where pip's configured local wheels hold it (as on our
  # CI machines) the pin resolves to it; elsewhere take it from PyTorch's CPU index first.
  if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    tmp_dl="$(mktemp -d)"
    if ! .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-index \
        -d "$tmp_dl" -c constraints.txt torch >/dev/null 2>&1; then
      .venv/bin/python -m pip install "${pip_args[@]}" torch \
        --index-url https://download.pytorch.org/whl/cpu
    fi
    rm -rf "$tmp_dl"
  fi
fi
target="."
if [ "$extra" = "dev" ]; then target=".[dev]"; fi
.venv/bin/python -m pip install "${pip_args[@]}" -e "$target" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import trajlib, torch; print(f'trajlib {trajlib.__version__} ready (torch {torch.__version__})')"
