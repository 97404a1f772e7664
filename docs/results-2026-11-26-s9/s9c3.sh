#!/bin/bash
# session 9, call 3 (1 GPU): the item change of the TMA kernel — next item's Q prefetched into L2
# (prefetch-Q) and the first K/V tile copied before Q (tile-first), alone and together, taking
# turns with the default launch by launch; kernel checks first; SDPA between two benches.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/k; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s9c3.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
( time timeout 150 .devbin/cp-gpu-bench check ) > $R/check.log 2>&1; echo "check rc=$?"
grep -E "FAILED|rror|^real" $R/check.log | head; echo "ok lines: $(grep -c '\[ok\]' $R/check.log)"; gzip $R/check.log; pack
b() {
  timeout 220 .devbin/cp-gpu-bench bench --json $R/bench-$1.json > $R/bench-$1.log 2>&1; echo "bench $1 rc=$? $(date +%T)"
  grep -E "prefill causal|off-diag" $R/bench-$1.log | grep -E "tma" | grep -v "ping\|zigzag" | sed 's/prefill causal //; s/tma+wgmma wide at D=64//' | cut -c1-95; pack
}
b 1
timeout 100 python3 scripts/sdpa_bench.py --json $R/sdpa.json > $R/sdpa.log 2>&1; echo "sdpa rc=$? $(date +%T)"; grep -iE "cudnn" $R/sdpa.log | grep -v "short\|decode" | cut -c1-100; pack
b 2
