#!/bin/bash
# session 10, call 4 (1 GPU): ncu with PC sampling (SourceCounters) on the default TMA kernel
# (v5.9), causal T=4K B=4 and T=16K: where the warps stall, instruction by instruction, to find
# what the item change costs (the 4K/16K gap to cuDNN).
export CP_KERNEL_CACHE=$PWD/.devcache
R=/tmp/k; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s10c4.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
which ncu; ncu --version | tail -1
for w in "4096 4" "16384 1"; do
  set -- $w; tag=t$1b$2
  timeout 150 ncu --section SpeedOfLight --section WarpStateStats --section SourceCounters --section SchedulerStats \
    --section LaunchStats -k regex:flash_fwd_d128 --launch-count 1 -o $R/$tag \
    .devbin/cp-gpu-bench profile --tokens $1 --batch $2 > $R/$tag.log 2>&1; echo "$tag rc=$?"
  tail -3 $R/$tag.log
  ncu --import $R/$tag.ncu-rep --page details > $R/$tag-details.txt 2>&1
  grep -E "Duration|Warp Cycles Per Issued|Issued Warp|No Eligible|Active Warps Per" $R/$tag-details.txt | head -8
  ncu --import $R/$tag.ncu-rep --page source --csv --print-source sass > $R/$tag-sass.csv 2> $R/$tag-sass.err; echo "sass csv rc=$? $(wc -l < $R/$tag-sass.csv) lines"; head -c 300 $R/$tag-sass.err
  gzip -f $R/$tag-sass.csv; pack
done
head -c 600 $R/t4096b4-sass.csv.gz | zcat 2>/dev/null | head -3 | cut -c1-400
