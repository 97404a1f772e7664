#!/bin/bash
# session 16, call 6 (1 GPU): the sequence-range summaries with the one-sequence case first in
# classify and combine ("cls2": call 5's build, "cls", cost ~1% on aligned shapes). Kernel checks
# of cls2, then old (main 686988d + --narrow) / cls / cls2 in turns beside cuDNN.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/c6; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/c6.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 .devbin/cp-gpu-bench-cls2 check > $R/check-cls2.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
echo "ok $(grep -c '\[ok\]' $R/check-cls2.log) failed $(grep -c FAILED $R/check-cls2.log)"; grep FAILED $R/check-cls2.log | head -8 | cut -c1-220
gzip $R/check-cls2.log; pack
CP_VARIANTS="old .devbin/cp-gpu-bench-n
cls .devbin/cp-gpu-bench-cls
cls2 .devbin/cp-gpu-bench-cls2" CP_SHAPES="16384 1 128 800
4096 4 128 2500
16384 1 64 1200
4000 4 128 1500" timeout 280 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-140; pack
echo "total $(( $(date +%s) - T0 ))s"
