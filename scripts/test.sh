#!/usr/bin/env bash
# Set up (if needed) and run every test CI runs: unit, app (AppTest) and browser (Chromium) tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
