#!/bin/bash
# session 16, call 7 (1 GPU): the final build ("fin": cls2's kernels, and at head dim 64 the
# 128-row query blocks wherever 192-row ones would straddle more sequence boundaries). Kernel
# checks, then old (main 686988d) / fin in turns beside cuDNN, then ring ranks 3 and 0 at 128K.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/c7; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/c7.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 .devbin/cp-gpu-bench-fin check > $R/check-fin.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
echo "ok $(grep -c '\[ok\]' $R/check-fin.log) failed $(grep -c FAILED $R/check-fin.log)"; grep FAILED $R/check-fin.log | head -8 | cut -c1-220
gzip $R/check-fin.log; pack
CP_VARIANTS="old .devbin/cp-gpu-bench-n
fin .devbin/cp-gpu-bench-fin" CP_SHAPES="4096 4 64 4000
4000 4 128 1500
16384 1 128 800" timeout 150 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-140; pack
for round in 1 2; do for rank in 3 0; do for v in old fin; do
  bin=.devbin/cp-gpu-bench-n; [ $v = fin ] && bin=.devbin/cp-gpu-bench-fin
  timeout 60 $bin profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v r$rank: /" | tee -a $R/ring.txt | cut -c1-140
done; done; done; pack
echo "total $(( $(date +%s) - T0 ))s"
