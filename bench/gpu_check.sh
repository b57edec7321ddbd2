#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU and a package registry (about 5 minutes):
# a fresh venv with bentoedge[build,cloud] and onnxruntime-gpu in place of onnxruntime, then
# bench/gpu_check.py: build, serve on CUDA and on the CPU, compare answers, time both.
#
#   bench/gpu_check.sh                 # writes bench/results/gpu_check.json
#   bench/gpu_check.sh --cpu-dry-run   # no GPU: checks the script itself, writes no result
#   PYTHON=/path/python bench/gpu_check.sh --no-install   # use an environment you made
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
args=()
install=1
for a in "$@"; do
  if [ "$a" = "--no-install" ]; then install=0; else args+=("$a"); fi
done
if [[ " ${args[*]-} " != *" --cpu-dry-run "* ]] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU here (nvidia-smi found none); run this on a GPU machine, or pass --cpu-dry-run" >&2
  exit 2
fi
export BENTOML_DO_NOT_TRACK=true TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
if [ "$install" = 1 ]; then
  VENV=$(mktemp -d "${TMPDIR:-/tmp}/bentoedge-gpu.XXXXXX")
  trap 'rm -rf "$VENV"' EXIT
  echo "== venv with bentoedge[build,cloud] and onnxruntime-gpu in $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
  "$VENV/bin/pip" install -q ".[build,cloud]"
  if [[ " ${args[*]-} " != *" --cpu-dry-run "* ]]; then
    "$VENV/bin/pip" uninstall -q -y onnxruntime
    "$VENV/bin/pip" install -q "onnxruntime-gpu>=1.18"
  fi
  PY=$VENV/bin/python
fi
"$PY" -m bench.gpu_check "${args[@]+"${args[@]}"}"
