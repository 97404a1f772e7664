#!/bin/bash
# session 13, call 2 (1 GPU): v6.7, the tail split (equal items' short last round run as key-range
# pieces in a launch of their own, merged after) and folds skipping query blocks that see no key.
# Kernel checks (with the tail split forced on every launch it can take), sustained rates of
# v6.7 with and without the tail split beside SDPA's cuDNN, then rank 0's and rank 3's pass-KV
# compute steps of a 4-rank ring at 128K on this one GPU (with and without the tail split) and
# the one-GPU causal 128K launch they add up to.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/c2; mkdir -p $R; T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 .devbin/cp-gpu-bench check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -c "tail:" $R/check.log; grep -iE "fail|error|mismatch|panick" $R/check.log | head -5; tail -2 $R/check.log
for rank in 0 3; do for tail in auto off; do
  timeout 60 .devbin/cp-gpu-bench profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 5 --tail-split $tail 2>&1 | tail -1 | tee -a $R/ring.txt
done; done
timeout 60 .devbin/cp-gpu-bench profile --tokens 131072 --repeat 6 2>&1 | tail -1 | tee -a $R/ring.txt
echo "elapsed $(( $(date +%s) - T0 ))s"
CP_VARIANTS="v67 .devbin/cp-gpu-bench
v67-notail .devbin/cp-gpu-bench --tail-split off" CP_SHAPES="16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500
65536 1 128 50
16384 1 64 1200" timeout 330 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-160; tail -40 $R/sus/clocks.txt | cut -c1-150
for rank in 0 3; do for tail in auto off; do
  timeout 60 .devbin/cp-gpu-bench profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 5 --tail-split $tail 2>&1 | tail -1 | tee -a $R/ring.txt
done; done
echo "total $(( $(date +%s) - T0 ))s"
