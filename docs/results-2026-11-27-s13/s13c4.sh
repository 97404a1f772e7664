#!/bin/bash
# session 13, call 4 (4 GPUs, the machine of call 3): where the ring's per-rank compute goes. Each
# rank's pass-KV compute steps at 128K (cp-gpu-bench profile --ring-world 4, no transfers) on its
# own GPU, first all four at once (as in the ring), then each alone; with and without the tail
# split; SM clocks sampled throughout.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/c4; mkdir -p $R; T0=$(date +%s)
nvidia-smi --query-gpu=timestamp,index,clocks.sm,power.draw,temperature.gpu --format=csv,noheader -lms 200 > $R/smi.csv 2>&1 &
smi=$!
prof() { CUDA_VISIBLE_DEVICES=$1 timeout 60 .devbin/cp-gpu-bench profile --tokens 131072 --ring-world 4 --ring-rank $1 --repeat 40 --tail-split $2 2>&1 | tail -1 | sed "s/^/gpu$1 $3 /"; }
for tail in auto off; do
  echo "all at once $tail $(date +%s.%N)" >> $R/marks.txt
  for g in 0 1 2 3; do prof $g $tail together > $R/together-$tail-$g.txt & done; wait
  cat $R/together-$tail-*.txt | cut -c1-230
done
for tail in auto off; do for g in 0 1 2 3; do
  echo "alone $g $tail $(date +%s.%N)" >> $R/marks.txt
  prof $g $tail alone | cut -c1-230
done; done
kill $smi; echo "end $(date +%s.%N)" >> $R/marks.txt
(cd $R && tar czf $OUT/c4.tgz . && rm -rf $R)
echo "total $(( $(date +%s) - T0 ))s"
