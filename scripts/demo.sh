#!/usr/bin/env bash
# Installs dependencies, builds tapegrad (Release) into build/, and runs the main demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs" --target spirals
build/examples/spirals "$@"
