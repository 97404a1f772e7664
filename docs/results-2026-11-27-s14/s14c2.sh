#!/bin/bash
# session 14, call 2 (1 GPU): v6.9 — the copy warp fetches the next item's Q into L2 (TMA prefetch)
# once the current item's first tiles are copied (call 1's ncu: consumers wait ~0.7% of their time
# for Q at each item's start). Consumer code of the default kernels unchanged. Kernel checks, then
# ring ranks 3 and 0 at 128K (v6.9 and the merge-fix build af32748 in turns, twice), then
# sustained rates of both beside cuDNN.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/c2; mkdir -p $R; T0=$(date +%s)
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 $B check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -c "FAILED" $R/check.log; grep -iE "fail|error|mismatch|panick" $R/check.log | head -5 | cut -c1-200
for round in 1 2; do for rank in 3 0; do for v in nan v69; do
  bin=$B; [ $v = nan ] && bin=$B-nan
  timeout 60 $bin profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v r$rank: /" | tee -a $R/ring.txt | cut -c1-200
done; done; done
echo "elapsed $(( $(date +%s) - T0 ))s"
CP_VARIANTS="nan $B-nan
v69 $B" CP_SHAPES="16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500" timeout 280 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-150; tail -20 $R/sus/clocks.txt | cut -c1-150
gzip $R/check.log; (cd $R && tar czf $OUT/c2.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
