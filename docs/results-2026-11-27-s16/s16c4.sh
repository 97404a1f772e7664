#!/bin/bash
# session 16, call 4 (1 GPU): head dim 64 — the default three consumer warpgroups (exact softmax)
# against two (`--narrow`, 128-row query blocks), which now take v7.4's lazy maximum; sustained
# beside cuDNN, then ring ranks 3 and 0 at 128K. Binary: main + the `--narrow` flag (same kernels).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/c4; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/c4.tgz .); }
B=.devbin/cp-gpu-bench-n
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
CP_VARIANTS="wide $B
narrow $B --narrow" CP_SHAPES="16384 1 64 1200
4096 4 64 4000
131072 1 64 20
16384 1 64 800 --off-diagonal" timeout 300 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-140; tail -24 $R/sus/clocks.txt | cut -c1-120; pack
echo "sustained $(( $(date +%s) - T0 ))s"
for round in 1 2; do for rank in 3 0; do for v in wide narrow; do
  a=; [ $v = narrow ] && a=--narrow
  timeout 60 $B profile --tokens 131072 --head-dim 64 --ring-world 4 --ring-rank $rank --repeat 40 $a 2>&1 | tail -1 | sed "s/^/$v r$rank: /" | tee -a $R/ring.txt | cut -c1-150
done; done; done; pack
echo "total $(( $(date +%s) - T0 ))s"
