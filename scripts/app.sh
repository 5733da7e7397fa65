#!/usr/bin/env bash
# Set up (if needed) and start the app on http://localhost:8501.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/streamlit" run app/main.py "$@"
