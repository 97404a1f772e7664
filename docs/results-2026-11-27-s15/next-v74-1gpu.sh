#!/bin/bash
# Prepared in session 15 for the next session's first device call (1 GPU): the kernel checks of
# branch v7.4-lazy-max (the "scores rising" cases drive its rescale and overflow fallbacks), then
# a sustained A/B against main. Binaries: build on the branch and on main, then
#   .devbin/cp-gpu-bench-74  (branch)   .devbin/cp-gpu-bench (main)
# and put both kernel cubins into .devcache (see docs/perf-notes.md, "How a kernel change is measured").
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/v74; mkdir -p $R; T0=$(date +%s)
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 $B-74 check > $R/check-74.log 2>&1; echo "check 74 rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check-74.log; grep -c "FAILED" $R/check-74.log; grep -E "FAILED" $R/check-74.log | head -8 | cut -c1-220
grep "scores rising" $R/check-74.log | cut -c1-200
gzip $R/check-74.log; (cd $R && tar czf $OUT/v74.tgz . )
CP_VARIANTS="main $B
v74 $B-74" CP_SHAPES="16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500
16384 1 64 1200" timeout 280 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-150
(cd $R && tar czf $OUT/v74.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
