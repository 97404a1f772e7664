#!/bin/bash
# session 14, call 3 (1 GPU): v7.0 — two Q buffers: item n's Q is copied into buffer n % 2 while
# the consumers still work on item n - 1 (call 1's ncu: 0.7% of their time waiting for Q at each
# item's start, not helped by an L2 prefetch in call 2). At head dim 128 that leaves room for two
# K/V stages instead of three; the ping-pong kernels keep one Q buffer and three stages. Kernel
# checks, then ring ranks 3 and 0 at 128K (v7.0 and the merge-fix build af32748 in turns, twice),
# then sustained rates of both beside cuDNN.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/c3; mkdir -p $R; T0=$(date +%s)
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 $B check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -c "FAILED" $R/check.log; grep -iE "fail|error|mismatch|panick" $R/check.log | head -5 | cut -c1-200
for round in 1 2; do for rank in 3 0; do for v in nan v70; do
  bin=$B; [ $v = nan ] && bin=$B-nan
  timeout 60 $bin profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v r$rank: /" | tee -a $R/ring.txt | cut -c1-200
done; done; done
echo "elapsed $(( $(date +%s) - T0 ))s"
CP_VARIANTS="nan $B-nan
v70 $B" CP_SHAPES="16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500
16384 1 64 1200" timeout 330 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-150; tail -30 $R/sus/clocks.txt | cut -c1-150
gzip $R/check.log; (cd $R && tar czf $OUT/c3.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
