#!/bin/bash
# session 9, call 8 (4 GPUs): the rebind in one upload + one scatter kernel (new) against a copy
# per changed array (old, session 8's code), alternating builds in one call: 128K and 1M, B=1.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
R=$OUT/r; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s9c8.tgz .); }
nvidia-smi -L > $R/gpu.txt
d() { # d NAME BINARY CONTEXT
  timeout 40 $2 decode --world-sizes 4 --contexts $3 --batches 1 --iters 100 --growing-iters 30 --graphs --json $R/$1.json > $R/$1.log 2>&1; echo "$1 rc=$? $(date +%T)"
  grep -E "N=4 .*(graph|rebound)" $R/$1.log | sed 's/ctx *//; s/| attn.*//' | cut -c1-110; pack
}
d new-128k-1 .devbin/cp-ring-bench 131072
d old-128k-1 .devbin/cp-ring-bench-old 131072
d new-128k-2 .devbin/cp-ring-bench 131072
d old-128k-2 .devbin/cp-ring-bench-old 131072
d new-1m .devbin/cp-ring-bench 1048576
d old-1m .devbin/cp-ring-bench-old 1048576
