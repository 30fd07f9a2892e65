#!/usr/bin/env bash
# Differential check of tapegrad's ops against PyTorch 1.13, forward and backward, in float64.
#   scripts/torch_check.sh [--cases N] [--seed S] [--op REGEX]... [--failures-only] [--list]
# Builds build/tests/torch_diff (configuring build/ first, as scripts/test.sh does) and runs
# tests/torch/torch_diff.py with the given arguments: one PASS/FAIL line per case, a summary per op,
# exit status 1 when any case fails. python3-torch is installed for this script only (with apt, as
# scripts/bench.sh does for its references); it is never a dependency of tapegrad.
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
# Configure (cheap when build/ exists; needed once for the torch_diff target), then build only it.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target torch_diff >/dev/null

exec "$PY" tests/torch/torch_diff.py --driver build/tests/torch_diff "$@"
