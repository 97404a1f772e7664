#!/bin/bash
# session 11, call 4 (4 GPUs): decode latency per token on 1, 2 and 4 GPUs with graphs, incl. one
# graph per shape rebound every token (issue 11's per-token loop, never run on 4 GPUs).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
R=/tmp/r; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s11c4.tgz .); }
nvidia-smi -L > $R/gpu.txt
timeout 200 .devbin/cp-ring-bench decode --world-sizes 2,4 --contexts 131072 --batches 1,8 --iters 100 --growing-iters 40 --graphs --json $R/decode-128k.json > $R/decode-128k.log 2>&1; echo "decode 128k rc=$? $(( $(date +%s) - T0 ))s"
grep -E "ctx|rror" $R/decode-128k.log | cut -c1-175; pack
timeout 200 .devbin/cp-ring-bench decode --world-sizes 2,4 --contexts 1048576 --batches 1 --iters 60 --growing-iters 20 --graphs --json $R/decode-1m.json > $R/decode-1m.log 2>&1; echo "decode 1m rc=$? $(( $(date +%s) - T0 ))s"
grep -E "ctx|rror" $R/decode-1m.log | cut -c1-175; pack
