#!/bin/bash
# session 15, call 4 (1 GPU): v7.3 — the warpgroup index broadcast from lane 0 (warp-uniform to
# ptxas), so the consumers' Q descriptors live in uniform registers: no R2UR before each Q K^T
# wgmma (d128 acc kernel: 61 -> 31 R2UR, 40 fewer instructions; the ping-pong kernels 119 -> 31,
# up to 830 fewer). Against HEAD (v7.1, "g") in turns, and v7.3's ping-pong build: ring ranks 3 and
# 0 at 128K, the sustained shapes beside cuDNN (D=64 too: its three-consumer kernels spill less);
# then the kernel checks of v7.3.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/c4; mkdir -p $R; T0=$(date +%s)
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
for round in 1 2; do for rank in 3 0; do for v in g 73 73pp; do
  case $v in g) cmd="$B";; 73) cmd="$B-73";; 73pp) cmd="$B-73 --pingpong";; esac
  timeout 60 $cmd profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v r$rank: /" | tee -a $R/ring.txt | cut -c1-140
done; done; done
(cd $R && tar czf $OUT/c4.tgz . )
echo "elapsed $(( $(date +%s) - T0 ))s"
CP_VARIANTS="g $B
73 $B-73
73pp $B-73 --pingpong" CP_SHAPES="16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500
16384 1 64 1200" timeout 330 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-150; tail -30 $R/sus/clocks.txt | cut -c1-150
(cd $R && tar czf $OUT/c4.tgz . )
echo "elapsed $(( $(date +%s) - T0 ))s"
timeout 160 $B-73 check > $R/check-73.log 2>&1; echo "check 73 rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check-73.log; grep -c "FAILED" $R/check-73.log; grep -E "FAILED" $R/check-73.log | head -5 | cut -c1-200
gzip $R/check-73.log; (cd $R && tar czf $OUT/c4.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
