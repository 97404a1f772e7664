#!/bin/bash
# session 9, call 2 (1 GPU): v5.9, the two-block cluster kernel (each K/V tile multicast to two
# query heads of one KV head) — the kernel oracle checks, then the bench (multicast variants take
# turns with the default) and SDPA in the same call; power and clocks sampled beside them.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/k; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s9c2.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
( time timeout 150 .devbin/cp-gpu-bench check ) > $R/check.log 2>&1; echo "check rc=$?"
grep -E "FAILED|rror|^real" $R/check.log | head; echo "ok lines: $(grep -c '\[ok\]' $R/check.log)"; grep -E "multicast" $R/check.log | head -5 | cut -c1-150; gzip -k $R/check.log; pack
nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm --format=csv,noheader -lms 200 > $R/power.csv &
SMI=$!
L=$R/bench-1.log
timeout 200 .devbin/cp-gpu-bench bench --json $R/bench-1.json > $L 2>&1; echo "bench rc=$? $(date +%T)"
grep -E "prefill causal|off-diag|D=64" $L | grep -E "tma" | grep -v "zigzag\|claimed\|ping" | cut -c1-110; pack
timeout 100 python3 scripts/sdpa_bench.py --json $R/sdpa.json > $R/sdpa.log 2>&1; echo "sdpa rc=$? $(date +%T)"; grep -iE "cudnn" $R/sdpa.log | grep -v "short\|decode" | cut -c1-100
kill $SMI; pack
