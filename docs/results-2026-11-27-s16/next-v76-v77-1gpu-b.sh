#!/bin/bash
# Second call of the pair (same warm machine): the timings (see next-v76-v77-1gpu.sh).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/n2; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/n2.tgz .); }
B=.devbin/cp-gpu-bench
CP_VARIANTS="main $B-main
v76 $B-76
v77 $B-77" CP_SHAPES="16384 1 128 800
4096 4 128 2500
4000 4 128 1500
16384 1 128 400 --off-diagonal
16384 1 64 1200" timeout 330 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-140; pack
for round in 1 2; do for rank in 3 0; do for v in main 76 77; do
  timeout 60 $B-$v profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v r$rank: /" | tee -a $R/ring.txt | cut -c1-140
done; done; done; pack
echo "total $(( $(date +%s) - T0 ))s"
