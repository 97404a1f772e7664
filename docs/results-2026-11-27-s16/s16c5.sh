#!/bin/bash
# session 16, call 5 (1 GPU): tile summaries with sequence ranges ("cls"). A query block that
# straddles two sequences of a packed batch used to visit the key tiles of every sequence up to
# its last position (head dim 64, T=4K x 4 in 192-row blocks: 152 TFLOP/s against 383 in 128-row
# blocks, call 4); now it visits its own sequences' only. Kernel checks of the new build, then
# sustained rates of the old build (main 686988d + --narrow, "old") and the new one, in turns,
# beside cuDNN, on packed batches (aligned and not) and single sequences.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/c5; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/c5.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 .devbin/cp-gpu-bench-cls check > $R/check-cls.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
echo "ok $(grep -c '\[ok\]' $R/check-cls.log) failed $(grep -c FAILED $R/check-cls.log)"; grep FAILED $R/check-cls.log | head -8 | cut -c1-220
gzip $R/check-cls.log; pack
CP_VARIANTS="old .devbin/cp-gpu-bench-n
new .devbin/cp-gpu-bench-cls
new-narrow .devbin/cp-gpu-bench-cls --narrow" CP_SHAPES="4096 4 64 4000
4000 4 128 2500
4096 4 128 2500
16384 1 64 1200
16384 1 128 800" timeout 280 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-140; pack
echo "total $(( $(date +%s) - T0 ))s"
