#!/usr/bin/env bash
# Set up everything ManiFPT Studio needs on a Debian/Ubuntu machine with Python 3.10+:
# system packages (Fashion-MNIST, Chromium for the browser tests), a virtual environment,
# PyTorch, the Python requirements and the package itself, and the optional extras named in
# $MANIFPT_EXTRAS (e.g. MANIFPT_EXTRAS=ray). Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || [ -n "${FASHION_MNIST_DIR:-}" ] || need_apt+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${need_apt[@]}" >/dev/null
  else
    echo "note: please install ${need_apt[*]} (e.g. sudo apt-get install ${need_apt[*]})" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# torch first and pinned: an open range would pull a multi-GB build where a wheel is already at hand
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
"${pip[@]}" -r requirements.txt
"${pip[@]}" --no-deps -e .
# optional extras, comma-separated: MANIFPT_EXTRAS=ray installs the Ray engine (pinned, as in pyproject.toml)
IFS=',' read -ra extras <<< "${MANIFPT_EXTRAS:-}"
for extra in "${extras[@]}"; do
  case "${extra// /}" in
    "") ;;
    ray) "$VENV/bin/python" -c "import ray, ray.data, sys; sys.exit(ray.__version__ != '2.60.0')" 2>/dev/null \
           || "${pip[@]}" "ray[data]==2.60.0" ;;
    *) echo "MANIFPT_EXTRAS: unknown extra '$extra' (known: ray)" >&2; exit 2 ;;
  esac
done
echo "ready: $VENV"
