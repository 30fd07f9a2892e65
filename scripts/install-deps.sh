#!/usr/bin/env bash
# Installs the Debian bookworm packages tapegrad needs to build, test and run its examples.
# Idempotent and quiet when everything is already present. Also fetches the data sets that are not
# packaged as files of their own (scripts/get-data.sh: the 8x8 digits).
#   scripts/install-deps.sh            build + test + example dependencies
#   scripts/install-deps.sh --bench    also the reference systems for scripts/bench.sh
#   scripts/install-deps.sh --torch    also PyTorch for scripts/torch_check.sh
set -euo pipefail

packages=(
  g++ cmake make pkg-config           # toolchain
  libxsimd-dev libtbb-dev libfmt-dev  # SIMD kernels, threading, formatting
  catch2                              # tests
  libcli11-dev libstb-dev             # example CLIs, PNG output
  nlohmann-json3-dev zlib1g-dev       # safetensors headers, gzip'd data sets
  dataset-fashion-mnist               # the first real data set
)
if [[ "${1:-}" == "--bench" ]]; then
  # Reference systems, for benchmarks only (never linked into tapegrad).
  packages+=(python3-torch python3-numpy python3-threadpoolctl libopenblas-dev libopenblas0-openmp)
elif [[ "${1:-}" == "--torch" ]]; then
  packages+=(python3-torch python3-numpy)  # the reference of the differential checks only
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# The digits data: tests that need it skip (with a warning) when it could not be fetched.
get_data() {
  "$(dirname "$0")/get-data.sh" || echo "install-deps: warning: scripts/get-data.sh failed; the digits data is missing" >&2
}
if [[ ${#missing[@]} -eq 0 ]]; then
  get_data
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
get_data
