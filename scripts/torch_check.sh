#!/usr/bin/env bash
# Differential checks against PyTorch 1.13:
# - ops, forward and backward, in float64 and float32 (tapegrad's f32 error against torch's own
#   f32 error): tests/torch/torch_diff.py, which takes the arguments
#     scripts/torch_check.sh [--dtype f64|f32|both] [--cases N] [--seed S] [--op REGEX]... [--failures-only] [--list]
#   and prints one PASS/FAIL line per case and a summary per op and dtype;
# - the benchmark transformer (logits and gradients) and the optimizers: tests/torch/model_diff.py.
# Builds the two drivers (configuring build/ first, as scripts/test.sh does); exit status 1 when any
# check fails. python3-torch is installed for this script only (scripts/install-deps.sh --torch, as
# scripts/bench.sh does for its references); it is never a dependency of tapegrad.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --torch  # build dependencies and python3-torch (quiet when present)
PY=/usr/bin/python3
"$PY" -c 'import torch, numpy' || { echo "torch_check: $PY cannot import torch" >&2; exit 1; }
# Configure (cheap when build/ exists; needed once for the driver targets), then build only them.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target torch_diff model_diff >/dev/null

# The ops (with the given arguments), then the transformer model and the optimizers.
status=0
"$PY" tests/torch/torch_diff.py --driver build/tests/torch_diff "$@" || status=1
"$PY" tests/torch/model_diff.py --driver build/tests/model_diff || status=1
exit $status
