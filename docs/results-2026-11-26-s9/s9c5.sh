#!/bin/bash
# session 9, call 5 (4 GPUs): why rank 0 computes ~10% longer than the others in pass-KV at 128K
# (every 4-GPU run since session 6): each algorithm alone after the one-GPU baseline (which runs
# on GPU 0 just before), over peer copies; pass-KV once more with a longer warm-up.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
R=$OUT/r; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s9c5.tgz .); }
nvidia-smi -L > $R/gpu.txt
one() { # one NAME ARGS...
  local n=$1; shift
  timeout 40 .devbin/cp-ring-bench bench --world-size 4 --seq-len 131072 --transport peer --iters 5 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(date +%T)"
  grep -E "one GPU|on 4 GPUs|rank [0-3]:" $R/$n.log | cut -c1-120; pack
}
one pq --algorithm pass-q --warmup 2
one pkv --algorithm pass-kv --warmup 2
one gkv --algorithm gather-kv --warmup 2
one pkv-w10 --algorithm pass-kv --warmup 10
