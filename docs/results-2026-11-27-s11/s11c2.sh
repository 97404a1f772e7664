#!/bin/bash
# session 11, call 2 (1 GPU): v6.3 (wgmma descriptors made once per tile and stepped by adding offsets) against v6.2 (_v62):
# kernel checks first, then SDPA between two benches.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/k; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s11c2.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
( time timeout 200 .devbin/cp-gpu-bench check ) > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -E "FAILED|rror|mismatch|^real" $R/check.log | head; echo "ok lines: $(grep -c '\[ok\]' $R/check.log)"; gzip $R/check.log; pack
b() {
  timeout 200 .devbin/cp-gpu-bench bench --json $R/bench-$1.json > $R/bench-$1.log 2>&1; echo "bench $1 rc=$? $(( $(date +%s) - T0 ))s"
  grep -E "prefill causal|off-diag" $R/bench-$1.log | grep -E "tma" | grep -v "zigzag\|claimed" | sed 's/prefill causal //; s/tma+wgmma//; s/wide at D=64//' | cut -c1-80; pack
}
b 1
timeout 100 python3 scripts/sdpa_bench.py --json $R/sdpa.json > $R/sdpa.log 2>&1; echo "sdpa rc=$? $(( $(date +%s) - T0 ))s"; grep -iE "cudnn" $R/sdpa.log | grep -v "short\|decode" | cut -c1-100; pack
b 2
echo "total $(( $(date +%s) - T0 ))s"
