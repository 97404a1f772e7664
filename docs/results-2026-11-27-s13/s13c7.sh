#!/bin/bash
# session 13, call 7 (1 GPU): v6.8 — a fold's epilogue reads its running partial while the item's
# last P V runs (the _acc_ kernels only; every other kernel's SASS is v6.7's). Kernel checks
# (fold cases on every kernel), then each rank's pass-KV compute steps of a 4-rank ring at 128K,
# v6.7 and v6.8 taking turns, twice.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/c7; mkdir -p $R; T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 .devbin/cp-gpu-bench check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -c "FAILED" $R/check.log; grep -iE "fail|error|mismatch|panick" $R/check.log | head -5 | cut -c1-200
for round in 1 2; do for rank in 0 1 2 3; do for v in v67 v68; do
  bin=.devbin/cp-gpu-bench; [ $v = v67 ] && bin=.devbin/cp-gpu-bench-v67
  timeout 60 $bin profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v: /" | tee -a $R/ring.txt | cut -c1-235
done; done; done
gzip $R/check.log; (cd $R && tar czf $OUT/c7.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
