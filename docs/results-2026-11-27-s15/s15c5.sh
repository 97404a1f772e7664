#!/bin/bash
# session 15, call 5 (1 GPU): v7.4 — the lazy maximum (loop tiles exponentiate against the running
# maximum as it stands; a power-of-two rescale when a row sum passes 2^8; an f32 recompute of the
# raw scores from shared memory when an exponential overflowed), two consumer warpgroups only,
# built on v7.3 (warp-uniform warpgroup index). Kernel checks first (the fallbacks are exercised by
# the garbage cases), then against HEAD (v7.1, "g") in turns: ring ranks 3 and 0 at 128K, the
# sustained shapes beside cuDNN.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/c5; mkdir -p $R; T0=$(date +%s)
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 170 $B-74 check > $R/check-74.log 2>&1; echo "check 74 rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check-74.log; grep -c "FAILED" $R/check-74.log; grep -E "FAILED" $R/check-74.log | head -8 | cut -c1-220
gzip $R/check-74.log; (cd $R && tar czf $OUT/c5.tgz . )
for round in 1 2; do for rank in 3 0; do for v in g 74; do
  bin=$B; [ $v = 74 ] && bin=$B-74
  timeout 60 $bin profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v r$rank: /" | tee -a $R/ring.txt | cut -c1-140
done; done; done
(cd $R && tar czf $OUT/c5.tgz . )
echo "elapsed $(( $(date +%s) - T0 ))s"
CP_VARIANTS="g $B
74 $B-74" CP_SHAPES="16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500" timeout 250 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-150; tail -16 $R/sus/clocks.txt | cut -c1-150
(cd $R && tar czf $OUT/c5.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
