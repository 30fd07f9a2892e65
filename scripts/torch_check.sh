#!/usr/bin/env bash
# Differential checks against PyTorch 1.13:
# - ops, forward and backward, in float64 and float32 (tapegrad's f32 error against torch's own
#   f32 error): tests/torch/torch_diff.py, which takes the arguments
#     scripts/torch_check.sh [--dtype f64|f32|both] [--cases N] [--seed S] [--op REGEX]... [--failures-only] [--list]
#   and prints one PASS/FAIL line per case and a summary per op and dtype;
# - the benchmark transformer (logits and gradients) and the optimizers: tests/torch/model_diff.py.
# Builds the two drivers (configuring build/ first, as scripts/test.sh does); exit status 1 when any
# check fails. python3-torch is installed for this script only (with apt, as scripts/bench.sh does
# for its references); it is never a dependency of tapegrad.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=/usr/bin/python3
if ! "$PY" -c 'import torch, numpy' >/dev/null 2>&1; then
  echo "torch_check: installing python3-torch python3-numpy" >&2
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "torch_check: need root or sudo to install python3-torch" >&2; exit 1; }
    sudo_cmd=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends python3-torch python3-numpy >/dev/null
  "$PY" -c 'import torch' || { echo "torch_check: $PY still cannot import torch" >&2; exit 1; }
fi

if [[ ! -f build/CMakeCache.txt ]]; then
  scripts/install-deps.sh
fi
# Configure (cheap when build/ exists; needed once for the driver targets), then build only them.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target torch_diff model_diff >/dev/null

# The ops (with the given arguments), then the transformer model and the optimizers.
status=0
"$PY" tests/torch/torch_diff.py --driver build/tests/torch_diff "$@" || status=1
"$PY" tests/torch/model_diff.py --driver build/tests/model_diff || status=1
exit $status
