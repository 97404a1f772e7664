#!/bin/bash
# session 9, call 6 (4 GPUs): the ring timed after half a second of warm-up on every GPU (rank 0
# no longer starts hot from the one-GPU baseline): 128K over NCCL and peer copies around PyTorch
# context_parallel on cuDNN (its timing already warms 0.5 s); issue 10's sweep, NCCL and peer.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$OUT/r; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s9c6.tgz .); }
nvidia-smi -L > $R/gpu.txt
ring() { # ring NAME ARGS...
  local n=$1; shift
  timeout 60 .devbin/cp-ring-bench bench --world-size 4 --seq-len 131072 --algorithm all --warmup 2 --iters 5 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(date +%T)"
  grep -E "one GPU|on 4 GPUs|rank [0-3]:" $R/$n.log | cut -c1-112; pack
}
ring nccl-1
(cd scripts && timeout 150 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-cp-n4-cudnn-131072.json) > $R/torch-cp-n4-cudnn-131072.log 2>&1; echo "torch rc=$? $(date +%T)"
grep -E "SDPA|context_parallel|rror" $R/torch-cp-n4-cudnn-131072.log | head; pack
ring peer-1 --transport peer
sw() { # sw NAME ARGS...
  local n=$1; shift
  timeout 60 .devbin/cp-ring-bench sweep --world-size 4 --miss-rates 2.5,5,10 --warmup 1 --iters 3 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(date +%T)"
  grep -E "^\s+[0-9.]+% " $R/$n.log | head -6 | cut -c1-175; pack
}
sw sweep-nccl
sw sweep-peer --transport peer
