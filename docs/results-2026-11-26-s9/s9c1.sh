#!/bin/bash
# session 9, call 1 (4 GPUs): the GPU suite at HEAD (static_assert fix, no-overlap auto, bench
# helper, none run on a GPU yet); issue 12's ring bar on 4 GPUs: ours at 128K around PyTorch
# context_parallel on cuDNN (4 ranks); issue 10's sweep with the no-overlap auto (NCCL, peer).
# Packed after every step.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$OUT/r; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s9c1.tgz .); }
nvidia-smi -L | tee $R/gpu.txt; nvidia-smi --query-gpu=power.limit,clocks.max.sm --format=csv >> $R/gpu.txt
ring() { # ring NAME
  timeout 60 .devbin/cp-ring-bench bench --world-size 4 --seq-len 131072 --algorithm all --warmup 2 --iters 5 --json $R/$1.json > $R/$1.log 2>&1; echo "$1 rc=$? $(date +%T)"
  grep -E "one GPU|on 4 GPUs" $R/$1.log | cut -c1-140; pack
}
ring ours-1
(cd scripts && timeout 150 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-cp-n4-cudnn-131072.json) > $R/torch-cp-n4-cudnn-131072.log 2>&1; echo "torch rc=$? $(date +%T)"
grep -E "SDPA|context_parallel|rror" $R/torch-cp-n4-cudnn-131072.log | head; pack
ring ours-2
sw() { # sw NAME ARGS...
  local n=$1; shift
  timeout 45 .devbin/cp-ring-bench sweep --world-size 4 --miss-rates 2.5,5,10 --warmup 1 --iters 3 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(date +%T)"
  grep -E "^\s+[0-9.]+% |exposed|auto" $R/$n.log | head -12 | cut -c1-160; pack
}
sw sweep-nccl
sw sweep-peer --transport peer
( time timeout 200 .devbin/gpu_checks --test-threads=1 --nocapture ) > $R/gpu-checks.log 2>&1; echo "gpu_checks rc=$? $(date +%T)"
grep -E "test result|FAILED|panicked|^real" $R/gpu-checks.log | head; echo "ok lines: $(grep -c '\[ok\]' $R/gpu-checks.log)"; gzip $R/gpu-checks.log; pack
