#!/bin/bash
# session 14, call 1 (1 GPU): merges that keep a NaN a row saw under an underflowed weight (every
# merge kernel and the _acc_ kernels' epilogue fold; SASS otherwise v6.8's). Kernel checks (two
# new cases per dtype/head dim: a fold and a split-KV launch whose NaN part weighs e^-96), then
# ranks 3 and 0 of a 4-rank ring at 128K, v6.8 and the fix taking turns, twice; then ncu's warp
# stall samples per SASS instruction of one folding launch (rank 3) and one off-diagonal launch.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/c1; mkdir -p $R; T0=$(date +%s)
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 $B check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -c "FAILED" $R/check.log; grep -iE "fail|error|mismatch|panick" $R/check.log | head -5 | cut -c1-200
grep -E "e\^-96" $R/check.log | head -6 | cut -c1-220
for round in 1 2; do for rank in 3 0; do for v in v68 nan; do
  bin=$B; [ $v = v68 ] && bin=$B-v68
  timeout 60 $bin profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v r$rank: /" | tee -a $R/ring.txt | cut -c1-235
done; done; done
echo "elapsed $(( $(date +%s) - T0 ))s"
prof() { local name=$1 kern=$2; shift 2
  timeout 200 ncu --section SourceCounters --section WarpStateStats --section LaunchStats -k regex:"$kern" -c 1 -o $R/$name $B profile "$@" > $R/ncu-$name.log 2>&1
  echo "ncu $name rc=$? $(( $(date +%s) - T0 ))s"
  ncu -i $R/$name.ncu-rep --page source --csv --print-source sass > $R/$name-sass.csv 2> $R/$name-sass.err || ncu -i $R/$name.ncu-rep --page details --csv > $R/$name-details.csv 2>&1
  ncu -i $R/$name.ncu-rep --page details --csv > $R/$name-details.csv 2>&1
  ls -la $R/$name-sass.csv; head -c 600 $R/$name-sass.err
}
prof acc _acc_tma --tokens 131072 --ring-world 4 --ring-rank 3 --repeat 1
prof offdiag "flash_fwd_d128_bf16_tma" --tokens 16384 --off-diagonal --repeat 1
gzip $R/check.log $R/*-sass.csv; rm -f $R/*.ncu-rep.tmp; (cd $R && tar czf $OUT/c1.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
