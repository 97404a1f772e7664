#!/bin/bash
# session 13, call 5 (1 GPU): v6.7's ring steps measured long enough to settle (40 rounds of each
# rank's pass-KV compute steps at 128K on this one GPU, with and without the tail split, taking
# turns), then the off-diagonal block once more (v6.7, without the tail split, cuDNN).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/c5; mkdir -p $R; T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
for rank in 0 1 2 3; do for tail in auto off; do
  timeout 60 .devbin/cp-gpu-bench profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 --tail-split $tail 2>&1 | tail -1 | sed "s/^/$tail: /" | tee -a $R/ring.txt | cut -c1-240
done; done
echo "elapsed $(( $(date +%s) - T0 ))s"
CP_VARIANTS="v67 .devbin/cp-gpu-bench
v67-notail .devbin/cp-gpu-bench --tail-split off" CP_SHAPES="16384 1 128 400 --off-diagonal" timeout 120 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep launches $R/sus.log | cut -c1-160; tail -6 $R/sus/clocks.txt | cut -c1-150
(cd $R && tar czf $OUT/c5.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
