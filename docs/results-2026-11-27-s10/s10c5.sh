#!/bin/bash
# session 10, call 5 (1 GPU): v6.1 = v5.9 with a masked tile's "scrubbed" waited for before its
# P V instead of before its Q K^T (ncu, call 4: 5.3% of the consumers' samples at 4K B=4 sat in
# that wait), against v5.9 taking turns launch by launch; checks first; SDPA between two benches;
# then ncu on v6.1 at 4K B=4 to see where that wait went.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/k; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s10c5.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
( time timeout 170 .devbin/cp-gpu-bench check ) > $R/check.log 2>&1; echo "check rc=$?"
grep -E "FAILED|rror|mismatch|^real" $R/check.log | head; echo "ok lines: $(grep -c '\[ok\]' $R/check.log)"; gzip $R/check.log; pack
b() {
  timeout 240 .devbin/cp-gpu-bench bench --json $R/bench-$1.json > $R/bench-$1.log 2>&1; echo "bench $1 rc=$? $(date +%T)"
  grep -E "prefill causal|off-diag" $R/bench-$1.log | grep -E "tma" | grep -v "zigzag\|claimed" | sed 's/prefill causal //; s/tma+wgmma//; s/wide at D=64//' | cut -c1-80; pack
}
b 1
timeout 100 python3 scripts/sdpa_bench.py --json $R/sdpa.json > $R/sdpa.log 2>&1; echo "sdpa rc=$? $(date +%T)"; grep -iE "cudnn" $R/sdpa.log | grep -v "short\|decode" | cut -c1-100; pack
b 2
tag=t4096b4
timeout 100 ncu --section SpeedOfLight --section WarpStateStats --section SourceCounters -k regex:flash_fwd_d128 --launch-count 1 -o $R/$tag \
  .devbin/cp-gpu-bench profile --tokens 4096 --batch 4 > $R/$tag.log 2>&1; echo "ncu rc=$?"
ncu --import $R/$tag.ncu-rep --page details > $R/$tag-details.txt 2>&1; grep -E "Duration|Warp Cycles Per Issued" $R/$tag-details.txt | head -3
ncu --import $R/$tag.ncu-rep --page source --csv --print-source sass > $R/$tag-sass.csv 2>/dev/null; gzip -f $R/$tag-sass.csv; rm -f $R/$tag.ncu-rep; pack
