#!/usr/bin/env bash
# Installs dependencies, builds tapegrad (Release) into build/, and runs the main demo: a short
# training run of the Fashion-MNIST CNN classifier (about 20 seconds on 2 cores) that writes a run
# folder (metrics, loss plot, confusion matrix, labelled test images, checkpoints).
#   scripts/demo.sh [extra flags for `fashion_mnist train`, e.g. --epochs 3 --model mlp]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs" --target fashion_mnist
build/examples/fashion_mnist train --model cnn --epochs 2 --overwrite --out runs/demo-fashion_mnist "$@"  # a new run each time
