#!/bin/bash
# session 11, call 5 (1 GPU): ncu PC sampling on v6.3 with and without the ping-pong at T=16K
# (and the ping-pong at 4K B=4): why do the warpgroups taking turns lose 5-6% on long launches?
export CP_KERNEL_CACHE=$PWD/.devcache
R=/tmp/k; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s11c5.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
prof() { # prof TAG ARGS...
  local tag=$1; shift
  timeout 100 ncu --section SpeedOfLight --section WarpStateStats --section SourceCounters --section SchedulerStats -k regex:flash_fwd_d128 --launch-count 1 -o $R/$tag \
    .devbin/cp-gpu-bench profile "$@" > $R/$tag.log 2>&1; echo "$tag rc=$? $(( $(date +%s) - T0 ))s"
  ncu --import $R/$tag.ncu-rep --page details > $R/$tag-details.txt 2>&1; grep -E "flash_fwd|Duration|Elapsed Cycles|SM Frequency|Issued Warp Per|Warp Cycles Per Issued" $R/$tag-details.txt | head -7
  ncu --import $R/$tag.ncu-rep --page source --csv --print-source sass > $R/$tag-sass.csv 2>/dev/null; gzip -f $R/$tag-sass.csv; rm -f $R/$tag.ncu-rep; pack
}
prof np-t16384 --tokens 16384
prof pp-t16384 --tokens 16384 --pingpong
prof pp-t4096b4 --tokens 4096 --batch 4 --pingpong
