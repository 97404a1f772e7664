#!/bin/bash
# session 12, call 3 (1 GPU): v6.4 (items by KV head, the default now; the consumers' SASS is
# v6.3's, compared offline): the kernel checks against the f64 oracle, then sustained rates
# (~3 s of launches after warm-up) of v6.3 (the previous build), v6.4 and v6.4 with the old
# order (--schedule by-key-range), beside SDPA's cuDNN, taking turns twice per shape.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/k; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s12c3.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 200 .devbin/cp-gpu-bench check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -iE "fail|error|mismatch|panick" $R/check.log | head -5; tail -2 $R/check.log; pack
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader -lms 100 > $R/smi.csv 2>&1 &
smi=$!
: > $R/marks.txt; : > $R/sustained.txt
while read -r t b d n extra; do
  for round in 1 2; do
    while read -r tag bin args; do
      echo "$tag $t $b $d $extra $(date +%s.%N)" >> $R/marks.txt
      echo -n "$tag: " >> $R/sustained.txt
      timeout 60 $bin profile --tokens $t --batch $b --head-dim $d --repeat $n $extra $args < /dev/null 2>&1 | grep launches | tee -a $R/sustained.txt
    done <<'VARIANTS'
v63 .devbin/cp-gpu-bench-v63
v64 .devbin/cp-gpu-bench
v64-range .devbin/cp-gpu-bench --schedule by-key-range
VARIANTS
    echo "cudnn $t $b $d $extra $(date +%s.%N)" >> $R/marks.txt
    echo -n "cudnn: " >> $R/sustained.txt
    timeout 60 python3 scripts/sdpa_sustained.py --tokens $t --batch $b --head-dim $d --repeat $n $extra < /dev/null 2>&1 | tail -1 | tee -a $R/sustained.txt
  done
  echo "elapsed $(( $(date +%s) - T0 ))s"; pack
done <<'SHAPES'
16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500
65536 1 128 50
16384 1 64 1200
SHAPES
echo "end $(date +%s.%N)" >> $R/marks.txt
kill $smi
python3 scripts/smi_phases.py $R/smi.csv $R/marks.txt > $R/clocks.txt; tail -60 $R/clocks.txt | cut -c1-150; pack
echo "total $(( $(date +%s) - T0 ))s"
