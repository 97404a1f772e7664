#!/bin/bash
# session 14, call 5 (1 GPU): the review's findings mended — a row that sees a non-finite score
# (NaN query, NaN in a visible K row) gets LSE NaN, not -inf, in every prefill and decode kernel,
# and merges keep a NaN LSE (sum of weights NaN -> NaN); the oracle gives NaN there too. The
# faint-NaN cases' keys at 16 so that the NaN part's weight underflows at D=64 too. Kernel checks
# (new cases: NaN K/Q visible, single launch, fold, split KV, decode), then the build before
# (af32748's kernels) and this one in turns: ring rank 3 at 128K, sustained beside cuDNN.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/c5; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/c5.tgz .); }
B=.devbin/cp-gpu-bench
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
timeout 300 $B check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -c "FAILED" $R/check.log; grep -E "FAILED" $R/check.log | head -8 | cut -c1-220
grep -E "visible K row" $R/check.log | head -4 | cut -c1-220; pack
for round in 1 2; do for v in nan fix; do
  bin=$B; [ $v = nan ] && bin=$B-nan
  timeout 60 $bin profile --tokens 131072 --ring-world 4 --ring-rank 3 --repeat 30 2>&1 | tail -1 | sed "s/^/$v r3: /" | tee -a $R/ring.txt | cut -c1-160
done; done
echo "elapsed $(( $(date +%s) - T0 ))s"; pack
CP_VARIANTS="nan $B-nan
fix $B" CP_SHAPES="16384 1 128 400 --off-diagonal
131072 1 128 12
16384 1 128 800" timeout 200 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1
grep -v "^$" $R/sus/sustained.txt | cut -c1-150
gzip $R/check.log; pack
echo "total $(( $(date +%s) - T0 ))s"
