#!/bin/sh
# A stop signal during `diffusion train` (ctest example_diffusion_interrupt_resume): the step ends,
# the checkpoint is written, the status is 128 + SIGTERM = 143, no end-of-run files are written,
# and `train --resume` continues from the checkpoint's step. (SIGTERM: a non-interactive shell
# starts background jobs with SIGINT ignored, and the program leaves an ignored signal ignored.
# Ctrl-C's SIGINT takes the same path; the unit tests raise it.)
#   interrupt_test.sh <diffusion binary> <work folder>
set -u
bin=$1
dir=$2
rm -rf "$dir" && mkdir -p "$dir" || exit 1
"$bin" --threads 2 train --synthetic --max-train 256 --steps 100000 --batch 16 --channels 8,8 --attention '' \
  --grid-nfe 3 --out "$dir/run" > "$dir/out.txt" 2>&1 &
pid=$!
# Interrupt once training is under way: metrics.csv gets its first row at step 20.
i=0
until grep -q '^20,' "$dir/run/metrics.csv" 2>/dev/null; do
  i=$((i + 1))
  if [ $i -gt 1200 ]; then kill -KILL $pid; echo "training never started"; cat "$dir/out.txt"; exit 1; fi
  sleep 0.1
done
kill -TERM $pid
wait $pid
status=$?
[ $status -eq 143 ] || { echo "status $status, expected 143"; cat "$dir/out.txt"; exit 1; }
step=$(sed -n 's/.*stopped by signal 15 after step \([0-9]*\);.*/\1/p' "$dir/out.txt")
[ -n "$step" ] || { echo "no stop message"; cat "$dir/out.txt"; exit 1; }
[ -f "$dir/run/checkpoint.safetensors" ] || { echo "no checkpoint"; exit 1; }
[ ! -f "$dir/run/model_ema.safetensors" ] || { echo "end-of-run files written after the interrupt"; exit 1; }
# Resume for 5 more steps (the run's budget, edited in its config.json, ends there).
sed -i "s/\"steps\": 100000/\"steps\": $((step + 5))/" "$dir/run/config.json"
"$bin" --threads 2 train --resume --grid-nfe 3 --out "$dir/run" > "$dir/resume.txt" 2>&1 || { cat "$dir/resume.txt"; exit 1; }
grep -q "resumed from .* at step $step " "$dir/resume.txt" && grep -q "trained $((step + 5)) steps" "$dir/resume.txt" \
  || { echo "resume did not continue from step $step"; cat "$dir/resume.txt"; exit 1; }
echo "interrupted at step $step and resumed"
