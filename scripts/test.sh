#!/usr/bin/env bash
# Set up (if needed), lint (ruff, configured in pyproject.toml) and run every test CI runs: unit,
# app (AppTest) and browser (Chromium) tests. A lint finding fails the run before any test starts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${VENV:-.venv}"
"$VENV/bin/python" -m ruff check .
exec "$VENV/bin/python" -m pytest "$@"
