#!/bin/bash
# session 13, call 6 (1 GPU): v6.7 under compute-sanitizer (memcheck, then racecheck on shared
# memory) on launches that take the tail split — an off-diagonal block at head dims 128 and 64
# with the split forced, a ring rank's folds (busy blocks, pieces, the in-place merge) — then ncu's
# duration of each kernel of the 16K off-diagonal launch with and without the tail split.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=$OUT/c6; mkdir -p $R; T0=$(date +%s)
B=.devbin/cp-gpu-bench
san() { local tool=$1; shift; timeout 120 compute-sanitizer --tool $tool $B profile "$@" > $R/san-$tool-$(echo "$@" | tr ' -' '__').log 2>&1; echo "$tool $* rc=$? $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' $R/san-$tool-$(echo "$@" | tr ' -' '__').log | tail -1)"; }
san memcheck --tokens 1000 --off-diagonal --tail-split always --repeat 1
san memcheck --tokens 1000 --off-diagonal --tail-split always --repeat 1 --head-dim 64
san memcheck --tokens 4096 --ring-world 4 --ring-rank 0 --repeat 1 --tail-split always
san memcheck --tokens 4096 --ring-world 4 --ring-rank 3 --repeat 1 --tail-split always
san memcheck --tokens 16384 --off-diagonal --repeat 1
echo "elapsed $(( $(date +%s) - T0 ))s"
for tail in auto off; do
  timeout 120 ncu --metrics gpu__time_duration.sum -k regex:"flash_fwd|merge_tail" $B profile --tokens 16384 --off-diagonal --repeat 3 --tail-split $tail > $R/ncu-$tail.log 2>&1
  echo "ncu $tail rc=$?"; grep -E "flash_fwd|merge_tail|gpu__time_duration" $R/ncu-$tail.log | sed -E 's/\s+/ /g' | cut -c1-120 | tail -12
done
(cd $R && tar czf $OUT/c6.tgz . )
echo "total $(( $(date +%s) - T0 ))s"
