#!/bin/bash
# session 15, call 3 (1 GPU): v7.2 — a fraction of the softmax's exponentials on the FMA pipe
# (ex2_poly: degree-4 polynomial, 2^j in the exponent bits) instead of MUFU.EX2: e4 = every
# fourth column group (16 of 64 a thread a tile), e8 = every eighth (8 of 64); two consumer
# warpgroups only. Against HEAD (v7.1, "g") in turns: ring ranks 3 and 0 at 128K, the sustained
# shapes beside cuDNN; then the kernel checks of e4 (NaN and masked rows through ex2_poly).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/c3; mkdir -p $R; T0=$(date +%s)
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
for round in 1 2; do for rank in 3 0; do for v in g e4 e8; do
  bin=$B-$v; [ $v = g ] && bin=$B
  timeout 60 $bin profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v r$rank: /" | tee -a $R/ring.txt | cut -c1-140
done; done; done
(cd $R && tar czf $OUT/c3.tgz . )
echo "elapsed $(( $(date +%s) - T0 ))s"
CP_VARIANTS="g $B
e4 $B-e4
e8 $B-e8" CP_SHAPES="16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500" timeout 300 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-150; tail -24 $R/sus/clocks.txt | cut -c1-150
(cd $R && tar czf $OUT/c3.tgz . )
echo "elapsed $(( $(date +%s) - T0 ))s"
timeout 160 $B-e4 check > $R/check-e4.log 2>&1; echo "check e4 rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check-e4.log; grep -c "FAILED" $R/check-e4.log; grep -E "FAILED" $R/check-e4.log | head -5 | cut -c1-200
gzip $R/check-e4.log; (cd $R && tar czf $OUT/c3.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
