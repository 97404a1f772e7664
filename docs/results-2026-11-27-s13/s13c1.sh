#!/bin/bash
# session 13, call 1 (1 GPU): softmax turns (cuDNN's loop) with the fix found offline in
# session 12 (the scale read back from shared memory after the turn's bar.sync, so ptxas keeps
# the exponentials inside the turn). Kernel checks against the f64 oracle (every variant,
# softmax turns included), then sustained rates of v6.6 (default) and softmax turns beside
# SDPA's cuDNN, taking turns twice per shape.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/c1; mkdir -p $R; T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 240 .devbin/cp-gpu-bench check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -iE "fail|error|mismatch|panick" $R/check.log | head -5; tail -2 $R/check.log
CP_VARIANTS="v66 .devbin/cp-gpu-bench
st .devbin/cp-gpu-bench --turns softmax" CP_SHAPES="16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500
65536 1 128 50
16384 1 64 1200" timeout 330 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-160; tail -40 $R/sus/clocks.txt | cut -c1-150
echo "total $(( $(date +%s) - T0 ))s"
