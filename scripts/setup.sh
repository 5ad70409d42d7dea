#!/usr/bin/env bash
# Create .venv in the repository and install misalign-fast into it (editable, with the Cython
# core compiled).  Safe to run again: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel Cython 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e ".[test,bench]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import misalign._simhash" || { echo "setup: the compiled core did not build" >&2; exit 1; }
