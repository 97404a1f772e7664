#!/bin/bash
# session 12, call 4 (4 GPUs): the ring bar with v6.4 (items by KV head) (PyTorch context_parallel on cuDNN beside our
# pass-KV at 128K over peer copies and NCCL, warm start, as session 10 call 8), then the GPU suite
# on 4 GPUs (kernel checks, ring and model-API checks, graph replays incl. the rebound decode graphs
# over NCCL on 4 GPUs — issue 11's check never run on 4).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/r; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s12c4.tgz .); }
nvidia-smi -L > $R/gpu.txt; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv >> $R/gpu.txt; cat $R/gpu.txt
ring() { # ring NAME ARGS...
  local n=$1; shift
  timeout 60 .devbin/cp-ring-bench bench --world-size 4 --seq-len 131072 --algorithm all --warmup 2 --iters 5 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(( $(date +%s) - T0 ))s"
  grep -E "==|one GPU|on 4 GPUs" $R/$n.log | cut -c1-150; pack
}
(cd scripts && timeout 150 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-cp-n4-cudnn-131072.json) > $R/torch-cp-n4-cudnn-131072.log 2>&1; echo "torch rc=$? $(( $(date +%s) - T0 ))s"
grep -E "SDPA|context_parallel|rror" $R/torch-cp-n4-cudnn-131072.log | head; pack
ring peer-1 --transport peer
ring nccl-1
( time timeout 330 .devbin/gpu_checks --test-threads=1 --nocapture ) > $R/gpu-checks.log 2>&1; echo "gpu_checks rc=$? $(( $(date +%s) - T0 ))s"
grep -E "test result|FAILED|panicked|^real|rebound token 0 |NCCL 4" $R/gpu-checks.log | head -30; echo "ok lines: $(grep -c '\[ok\]' $R/gpu-checks.log)"; gzip $R/gpu-checks.log; pack
