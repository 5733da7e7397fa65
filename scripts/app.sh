#!/usr/bin/env bash
# Set up (if needed), build the demo workspace the first time (if the demo zoo is shipped), and
# start the app on http://localhost:8501. Later starts skip straight to the app.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${VENV:-.venv}"
demo_ws="$("$VENV/bin/python" -c 'from fingerprint_core.demo import default_workspace; print(default_workspace())')"
if [ ! -f "$demo_ws/workspace.json" ] && [ -f assets/demo/models.csv ]; then
  echo "building the demo workspace (first start only)..."
  "$VENV/bin/manifpt" demo
fi
exec "$VENV/bin/streamlit" run app/main.py "$@"
