#!/bin/bash
# session 16, call 3 (1 GPU): issue 12's 64K bar with v7.4 (now main; binary *-74) against v7.1
# and cuDNN, sustained; then rank 3's and rank 0's 128K ring steps under the kernel's other
# schedules (is rank 3's 2C x C step shape better served by another item order?).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/c3; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/c3.tgz .); }
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
CP_VARIANTS="v71 $B
v74 $B-74" CP_SHAPES="65536 1 128 50
16384 1 128 400 --off-diagonal" timeout 200 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-140; tail -12 $R/sus/clocks.txt | cut -c1-120; pack
echo "sustained $(( $(date +%s) - T0 ))s"
for round in 1 2; do for rank in 3 0; do for v in default "--schedule by-key-range" "--schedule claimed" "--schedule zigzag" "--tail-split always" "--tail-split off" "--pingpong"; do
  a=$v; [ "$v" = default ] && a=
  timeout 60 $B-74 profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 $a 2>&1 | tail -1 | sed "s/^/[$v] r$rank: /" | tee -a $R/ring.txt | cut -c1-150
done; done; done; pack
echo "total $(( $(date +%s) - T0 ))s"
