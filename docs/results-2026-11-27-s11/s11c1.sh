#!/bin/bash
# session 11, call 1 (1 GPU): v7 (O staged through the item's end stage + coalesced row stores;
# the row maximum as four chains) against v6.2 (_v62) and v7 with v6.2's softmax (_v7e):
# kernel checks first, then SDPA between two benches, then ncu on the default at 4K B=4 if time is left.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/k; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s11c1.tgz .); }
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
if [ $(( $(date +%s) - T0 )) -lt 520 ]; then
tag=t4096b4
timeout 60 ncu --section SpeedOfLight --section WarpStateStats --section SourceCounters -k regex:flash_fwd_d128 --launch-count 1 -o $R/$tag \
  .devbin/cp-gpu-bench profile --tokens 4096 --batch 4 > $R/$tag.log 2>&1; echo "ncu rc=$?"
ncu --import $R/$tag.ncu-rep --page details > $R/$tag-details.txt 2>&1; grep -E "Duration|Warp Cycles Per Issued" $R/$tag-details.txt | head -3
ncu --import $R/$tag.ncu-rep --page source --csv --print-source sass > $R/$tag-sass.csv 2>/dev/null; gzip -f $R/$tag-sass.csv; rm -f $R/$tag.ncu-rep; pack
fi
echo "total $(( $(date +%s) - T0 ))s"
