#!/bin/bash
# session 12, call 6 (1 GPU): ncu on v6.4 (items by KV head) against the old order (by key range)
# in the same binary: DRAM bytes and throughput, L2 sectors, tensor-pipe activity and cycles,
# off-diagonal 16K and causal 128K (where the keys outgrow L2).
export CP_KERNEL_CACHE=$PWD/.devcache
R=/tmp/k; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s12c6.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
M=dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__cycles_elapsed.avg
run() { # run TAG ARGS...
  local tag=$1; shift
  timeout 100 ncu --metrics $M -k regex:flash_fwd_d128 --launch-count 1 .devbin/cp-gpu-bench profile "$@" > $R/$tag.log 2>&1; echo "$tag rc=$? $(( $(date +%s) - T0 ))s"
  grep -E "dram__|lts__|pipe_tensor|cycles_elapsed" $R/$tag.log | sed 's/  */ /g'; pack
}
run kv-offdiag --off-diagonal
run range-offdiag --off-diagonal --schedule by-key-range
run kv-128k --tokens 131072
run range-128k --tokens 131072 --schedule by-key-range
