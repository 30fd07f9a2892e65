#!/usr/bin/env bash
# Benchmarks tapegrad side by side with the reference systems, in one invocation.
#
#   scripts/bench.sh WORKLOAD...     workloads: gemm conv2d attention norms fftconv
#                                               train_mlp train_cnn train_transformer train_unet
#                                               gemm_skinny (few-row products, tapegrad's own)
#                                    (or "all")
# Every workload runs tapegrad's program and the reference (PyTorch 1.13 CPU; OpenBLAS for gemm)
# alternately (which goes first alternates too, with a pause of SETTLE seconds, default 2, before
# each), REPEATS times (default 3), at 1 and 2 threads (THREADS="1 2"), and prints one JSON
# line per measurement (fields workload, shape, threads, impl, median_s, min_s, max_s, ...), then a
# table of tapegrad/reference time ratios (medians of the per-run medians), and with gemm the GFLOP/s
# of every GEMM shape against this machine's fp32 FMA peak measured in the same run (fma_peak.cpp,
# copied from the reference workloads), with norms their GB/s against the STREAM triad measured in
# the same run (stream_triad.cpp, likewise). The JSON lines are also kept in
# build/bench/results-<time>.jsonl. For 2 threads PyTorch runs in its best setup on this
# machine ("2T+ompblas": the OpenMP build of OpenBLAS first on the library path, so torch and BLAS
# share one pool). python3-torch and libopenblas-dev are installed for this script only; they are
# never build dependencies of tapegrad.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(gemm conv2d attention norms fftconv train_mlp train_cnn train_transformer train_unet gemm_skinny)
if [[ $# -eq 0 ]]; then
  sed -n '2,19p' "$0"
  exit 2
fi
workloads=("$@")
[[ "$1" == "all" ]] && workloads=("${all[@]}")
REPEATS=${REPEATS:-3}
THREADS=${THREADS:-"1 2"}
SETTLE=${SETTLE:-2}  # seconds of pause before every program, so that the previous one's exit has settled

scripts/install-deps.sh --bench
PY=""
for p in /usr/bin/python3 $(which -a python3 2>/dev/null); do
  if "$p" -c 'import torch' >/dev/null 2>&1; then PY=$p; break; fi
done
[[ -n "$PY" ]] || { echo "bench: no python3 with torch (apt-get install python3-torch)" >&2; exit 1; }
ompblas=$(dpkg -L libopenblas0-openmp 2>/dev/null | grep '/openblas-openmp/libblas.so.3$' | head -1 || true)

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTAPEGRAD_BUILD_BENCH=ON >/dev/null
targets=()
for w in "${workloads[@]}"; do
  case $w in
    gemm|gemm_skinny) targets+=(gemm_bench) ;;
    conv2d) targets+=(bench_conv) ;;
    attention) targets+=(bench_attention) ;;
    norms) targets+=(bench_norms) ;;
    fftconv) targets+=(bench_fftconv) ;;
    train_mlp|train_cnn) targets+=(bench_train) ;;
    train_transformer) targets+=(bench_transformer) ;;
    train_unet) targets+=(bench_unet) ;;
    *) echo "bench: unknown workload '$w' (known: ${all[*]})" >&2; exit 2 ;;
  esac
done
cmake --build build -j "$jobs" --target "${targets[@]}" >/dev/null
if [[ " ${workloads[*]} " == *" norms "* ]]; then
  g++ -O3 -march=native -mprefer-vector-width=512 -std=c++20 -pthread tests/bench/stream_triad.cpp -o build/bench/stream_triad
fi
if [[ " ${workloads[*]} " == *" gemm "* || " ${workloads[*]} " == *" gemm_skinny "* ]]; then
  gcc -O2 -std=c11 tests/bench/ref_sgemm_openblas.c -o build/bench/ref_sgemm_openblas -lopenblas
fi
if [[ " ${workloads[*]} " == *" gemm "* ]]; then
  rm -f build/bench/fma_peak
  g++ -O3 -march=native -std=c++20 -pthread tests/bench/fma_peak.cpp -o build/bench/fma_peak 2>/dev/null ||
    echo "bench: fma_peak.cpp needs AVX-512 and AVX2 to build; no FMA peak measurement on this machine" >&2
fi

B=build/bench
T=tests/bench
results=$B/results-$(date +%Y%m%d-%H%M%S).jsonl
clean_env=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE -u OMP_NUM_THREADS -u OPENBLAS_NUM_THREADS)

# The two commands of a workload at t threads (each prints JSON lines on stdout).
run_pair() {
  local w=$1 t=$2 torch_env=()
  if [[ $t -gt 1 && -n "$ompblas" ]]; then torch_env=(LD_LIBRARY_PATH="$(dirname "$ompblas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"); fi
  local ours ref
  case $w in
    gemm) ours=($B/gemm_bench $T/gemm_shapes.txt "$t" 5 0.05); ref=($B/ref_sgemm_openblas $T/gemm_shapes.txt "$t" 5 0.05); torch_env=() ;;
    gemm_skinny) ours=($B/gemm_bench $T/gemm_skinny_shapes.txt "$t" 5 0.05 gemm_skinny); ref=($B/ref_sgemm_openblas $T/gemm_skinny_shapes.txt "$t" 5 0.05 gemm_skinny); torch_env=() ;;
    conv2d) ours=($B/bench_conv --threads "$t"); ref=("$PY" $T/ref_conv.py --threads "$t") ;;
    attention) ours=($B/bench_attention --threads "$t"); ref=("$PY" $T/ref_attention.py --threads "$t") ;;
    norms) ours=($B/bench_norms --threads "$t"); ref=("$PY" $T/ref_norms.py --threads "$t") ;;
    fftconv) ours=($B/bench_fftconv --threads "$t"); ref=("$PY" $T/ref_fftconv.py --threads "$t") ;;
    train_mlp) ours=($B/bench_train mlp --threads "$t" --warmup 20 --steps 200); ref=("$PY" $T/ref_train.py mlp --threads "$t" --warmup 20 --steps 200) ;;
    train_cnn) ours=($B/bench_train cnn --threads "$t" --warmup 5 --steps 40); ref=("$PY" $T/ref_train.py cnn --threads "$t" --warmup 5 --steps 40) ;;
    train_transformer) ours=($B/bench_transformer --threads "$t" --warmup 3 --steps 20); ref=("$PY" $T/ref_transformer.py --threads "$t" --warmup 3 --steps 20) ;;
    train_unet) ours=($B/bench_unet --threads "$t" --warmup 3 --steps 15); ref=("$PY" $T/ref_unet.py --threads "$t" --warmup 3 --steps 15) ;;
  esac
  run_ours() {
    sleep "$SETTLE"
    "${clean_env[@]}" "${ours[@]}" | grep --line-buffered '{' | sed -u 's/^RESULT //' | tee -a "$results"
  }
  run_ref() {
    sleep "$SETTLE"
    "${clean_env[@]}" "${torch_env[@]}" "${ref[@]}" 2>/dev/null | grep --line-buffered '{' | sed -u 's/^RESULT //' | tee -a "$results"
  }
  # Which side runs first alternates from repeat to repeat: a program started right after another
  # one exits (above all a large PyTorch run) measured up to ~15% slower here.
  if (($3 % 2)); then run_ours; run_ref; else run_ref; run_ours; fi
}

# Which CPU this run measured (kernels tuned on one microarchitecture can behave differently on
# another; the results file records it).
cpu_field() { LC_ALL=C lscpu 2>/dev/null | sed -n "s/^$1: *//p" | head -1; }
cache_kib() { local b; b=$(getconf "$1" 2>/dev/null || true); [[ "$b" =~ ^[0-9]+$ ]] && echo "$((b / 1024)) KiB" || echo "?"; }
printf '{"machine":"%s","vendor":"%s","cpu_family":"%s","model":"%s","l1d":"%s","l2":"%s","cpus":"%s"}\n' \
  "$(cpu_field 'Model name')" "$(cpu_field 'Vendor ID')" "$(cpu_field 'CPU family')" "$(cpu_field 'Model')" \
  "$(cache_kib LEVEL1_DCACHE_SIZE)" "$(cache_kib LEVEL2_CACHE_SIZE)" "$(nproc)" | tee -a "$results"

# The machine's fp32 FMA peak, measured in this run (the GEMM efficiency table refers to it).
if [[ -x build/bench/fma_peak && " ${workloads[*]} " == *" gemm "* ]]; then
  echo "# fp32 FMA peak" >&2
  build/bench/fma_peak 5 0.3 | grep '^RESULT' | sed -u 's/^RESULT //' | grep '"fma_peak"' | tee -a "$results"
fi

for r in $(seq 1 "$REPEATS"); do
  for t in $THREADS; do
    for w in "${workloads[@]}"; do
      echo "# run $r/$REPEATS, $t thread(s): $w" >&2
      if [[ $w == norms && $t == "${THREADS%% *}" ]]; then
        # The memory bandwidth the norms are judged against, measured in the same run (DRAM-sized
        # STREAM triad at 1 and 2 threads), once per repeat.
        build/bench/stream_triad 5 | grep '^RESULT' | sed -u 's/^RESULT //' | grep '"op":"triad","level":"DRAM"' | tee -a "$results"
      fi
      run_pair "$w" "$t" "$r"
    done
  done
done
echo
echo "results: $results"
python3 $T/summarize.py "$results"
