#!/bin/bash
# session 10, call 8 (4 GPUs): the ring bar with v6.2 — PyTorch context_parallel on cuDNN and our
# pass-KV at 128K over peer copies and NCCL (warm start), the same as session 9 call 9.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/r; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s10c8.tgz .); }
nvidia-smi -L > $R/gpu.txt
ring() { # ring NAME ARGS...
  local n=$1; shift
  timeout 60 .devbin/cp-ring-bench bench --world-size 4 --seq-len 131072 --algorithm all --warmup 2 --iters 5 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(date +%T)"
  grep -E "==|one GPU|on 4 GPUs" $R/$n.log | cut -c1-150; pack
}
(cd scripts && timeout 150 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-cp-n4-cudnn-131072.json) > $R/torch-cp-n4-cudnn-131072.log 2>&1; echo "torch rc=$? $(date +%T)"
grep -E "SDPA|context_parallel|rror" $R/torch-cp-n4-cudnn-131072.log | head; pack
ring peer-1 --transport peer
ring nccl-1
