#!/bin/bash
# session 10, call 1 (1 GPU): v6 (last-tile flag instead of an end stage, Q released after the
# last Q K^T, the next item's first Q K^T issued behind the last P V with the epilogue under it)
# against v5.9, taking turns launch by launch; kernel checks first; SDPA between two benches.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/k; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s10c1.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
( time timeout 170 .devbin/cp-gpu-bench check ) > $R/check.log 2>&1; echo "check rc=$?"
grep -E "FAILED|rror|mismatch|^real" $R/check.log | head; echo "ok lines: $(grep -c '\[ok\]' $R/check.log)"; gzip -k $R/check.log; pack
b() {
  timeout 240 .devbin/cp-gpu-bench bench --json $R/bench-$1.json > $R/bench-$1.log 2>&1; echo "bench $1 rc=$? $(date +%T)"
  grep -E "prefill causal|off-diag" $R/bench-$1.log | grep -E "tma" | grep -v "zigzag\|claimed" | sed 's/prefill causal //; s/tma+wgmma//; s/wide at D=64//' | cut -c1-80; pack
}
b 1
timeout 100 python3 scripts/sdpa_bench.py --json $R/sdpa.json > $R/sdpa.log 2>&1; echo "sdpa rc=$? $(date +%T)"; grep -iE "cudnn" $R/sdpa.log | grep -v "short\|decode" | cut -c1-100; pack
b 2
