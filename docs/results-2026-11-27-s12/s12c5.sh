#!/bin/bash
# session 12, call 5 (1 GPU): v6.5 (the tail split: a launch of equal items cuts its short last
# round's items into key-range pieces, merged after): the kernel checks against the f64 oracle
# (the off-diagonal cases now exercise the tail split in the reserved pass), then sustained rates
# of v6.4 (call 3's build) and v6.5 beside SDPA's cuDNN, taking turns twice per shape.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/k; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s12c5.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 200 .devbin/cp-gpu-bench check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -iE "fail|error|mismatch|panick" $R/check.log | head -5; tail -2 $R/check.log; pack
grep -A400 "multiprocessors reserved" $R/check.log | grep "off-diagonal" | head -4 | cut -c1-170
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
v64 .devbin/cp-gpu-bench-v64
v65 .devbin/cp-gpu-bench
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
16384 1 64 400 --off-diagonal
SHAPES
echo "end $(date +%s.%N)" >> $R/marks.txt
kill $smi
python3 scripts/smi_phases.py $R/smi.csv $R/marks.txt > $R/clocks.txt; tail -60 $R/clocks.txt | cut -c1-150; pack
echo "total $(( $(date +%s) - T0 ))s"
