#!/bin/bash
# session 9, call 4 (4 GPUs): v5.9 (first tile before Q) — issue 12's ring bar at 128K: ours over
# NCCL and over peer copies around PyTorch context_parallel on cuDNN (4 ranks); then the GPU suite.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$OUT/r; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s9c4.tgz .); }
nvidia-smi -L | tee $R/gpu.txt
ring() { # ring NAME ARGS...
  local n=$1; shift
  timeout 60 .devbin/cp-ring-bench bench --world-size 4 --seq-len 131072 --algorithm all --warmup 2 --iters 5 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(date +%T)"
  grep -E "one GPU|on 4 GPUs" $R/$n.log | cut -c1-140; pack
}
ring nccl-1
ring peer-1 --transport peer
(cd scripts && timeout 150 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-cp-n4-cudnn-131072.json) > $R/torch-cp-n4-cudnn-131072.log 2>&1; echo "torch rc=$? $(date +%T)"
grep -E "SDPA|context_parallel|rror" $R/torch-cp-n4-cudnn-131072.log | head; pack
ring peer-2 --transport peer
ring nccl-2
( time timeout 200 .devbin/gpu_checks --test-threads=1 --nocapture ) > $R/gpu-checks.log 2>&1; echo "gpu_checks rc=$? $(date +%T)"
grep -E "test result|FAILED|panicked|^real" $R/gpu-checks.log | head; echo "ok lines: $(grep -c '\[ok\]' $R/gpu-checks.log)"; gzip $R/gpu-checks.log; pack
