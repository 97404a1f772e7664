#!/bin/bash
# session 15, call 1 (1 GPU): kernel checks with the SIMT decode guard (session 14's ready diff) and
# v7.1 (the row maxima of wg_softmax as trees instead of FMNMX chains); then ring ranks 3 and 0 at
# 128K and the sustained shapes beside cuDNN, v7.1 against the build without it (g) in turns.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/c1; mkdir -p $R; T0=$(date +%s)
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 $B-71 check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -c "FAILED" $R/check.log; grep -iE "fail|error|mismatch|panick" $R/check.log | head -5 | cut -c1-200
grep -i "scoring -inf" $R/check.log | head -8 | cut -c1-160
gzip $R/check.log; (cd $R && tar czf $OUT/c1.tgz . )
for round in 1 2; do for rank in 3 0; do for v in g 71; do
  timeout 60 $B-$v profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v r$rank: /" | tee -a $R/ring.txt | cut -c1-140
done; done; done
(cd $R && tar czf $OUT/c1.tgz . )
echo "elapsed $(( $(date +%s) - T0 ))s"
CP_VARIANTS="g $B-g
71 $B-71" CP_SHAPES="16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500" timeout 280 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-150; tail -14 $R/sus/clocks.txt | cut -c1-150
(cd $R && tar czf $OUT/c1.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
