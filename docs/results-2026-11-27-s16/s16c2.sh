#!/bin/bash
# session 16, call 2 (4 GPUs, same warm machine as call 1): PyTorch context_parallel on cuDNN at 128K
# twice more between our pass-KV runs (v7.4 peer and NCCL, main peer), full prefill at 16K, then
# the multi-GPU suite (gpu_checks) with v7.4 kernels.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/c2; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/c2.tgz .); }
B=.devbin/cp-gpu-bench
nvidia-smi -L > $R/gpu.txt; nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv >> $R/gpu.txt
RB=.devbin/cp-ring-bench
ring() { # ring NAME BIN SEQ ALGO ARGS...
  local n=$1 b=$2 t=$3 a=$4; shift 4
  timeout 60 $b bench --world-size 4 --seq-len $t --algorithm $a --warmup 2 --iters 10 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(( $(date +%s) - T0 ))s"
  grep -E "one GPU|on 4 GPUs|rank [0-3]:" $R/$n.log | cut -c1-150; pack
}
torch() { (cd scripts && timeout 100 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-$1.json) > $R/torch-$1.log 2>&1; echo "torch $1 rc=$? $(( $(date +%s) - T0 ))s"
grep -E "SDPA|context_parallel|rror" $R/torch-$1.log | head; pack; }
torch 2
ring peer74-3 $RB-74 131072 pass-kv --transport peer
ring nccl74-2 $RB-74 131072 pass-kv
torch 3
ring peer74-4 $RB-74 131072 pass-kv --transport peer
ring peermain-3 $RB 131072 pass-kv --transport peer
ring p16k-peer74 $RB-74 16384 auto --transport peer
ring p16k-nccl74 $RB-74 16384 auto
( time timeout 280 .devbin/gpu_checks-74 --test-threads=1 --nocapture ) > $R/gpu-checks-74.log 2>&1; echo "gpu_checks rc=$? $(( $(date +%s) - T0 ))s"
grep -E "test result|FAILED|panicked|^real" $R/gpu-checks-74.log | head -20; echo "ok lines: $(grep -c '\[ok\]' $R/gpu-checks-74.log) failed lines: $(grep -c 'FAILED' $R/gpu-checks-74.log)"
gzip $R/gpu-checks-74.log; pack
echo "total $(( $(date +%s) - T0 ))s"
