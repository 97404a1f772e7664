#!/bin/bash
# Prepared in session 16 for the next device time (1 GPU): v7.6 (host-combined key tiles) and
# v7.7 (v7.6 + sequence ranges), built on branches and compiled but never run. Their kernel
# checks, then main / v7.6 / v7.7 in turns beside cuDNN, then ring ranks 3 and 0 at 128K.
# Binaries (left in .devbin by session 16; rebuild if main moved): cp-gpu-bench-main (main
# 29d3295), -76 (v7.6-key-summaries c74490a), -77 (v7.7-ranges-on-host-tiles 2d88144); their
# cubins in .devcache (7ad44f3c39fbf82b, 7c2a893f788a8a24, 63f376798b9b1d32).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/n1; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/n1.tgz .); }
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
for v in 76 77; do
  timeout 280 $B-$v check > $R/check-$v.log 2>&1; echo "check $v rc=$? $(( $(date +%s) - T0 ))s ok $(grep -c '\[ok\]' $R/check-$v.log) failed $(grep -c FAILED $R/check-$v.log)"
  grep FAILED $R/check-$v.log | head -5 | cut -c1-200; gzip $R/check-$v.log; pack
done
echo "checks $(( $(date +%s) - T0 ))s"
