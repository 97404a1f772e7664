#!/bin/bash
# session 13, call 9 (4 GPUs): the GPU suite with v6.8 (kernel checks, ring and model-API checks,
# graph replays including the rebound decode graphs over NCCL on 4 GPUs).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/c9; mkdir -p $R; T0=$(date +%s)
nvidia-smi -L > $R/gpu.txt; cat $R/gpu.txt
( time timeout 280 .devbin/gpu_checks --test-threads=1 --nocapture ) > $R/gpu-checks.log 2>&1; echo "gpu_checks rc=$? $(( $(date +%s) - T0 ))s"
grep -E "test result|FAILED|panicked|^real" $R/gpu-checks.log | head -20; echo "ok lines: $(grep -c '\[ok\]' $R/gpu-checks.log) failed lines: $(grep -c 'FAILED' $R/gpu-checks.log)"
gzip $R/gpu-checks.log; (cd $R && tar czf $OUT/c9.tgz .)
