#!/bin/bash
# session 15, call 2 (4 GPUs): v7.1 (tree row maxima) and the SIMT decode guard on four GPUs: the
# GPU suite with session 14's NaN kernels (never run on 2+ GPUs) and the ring bar. The ring check first (every algorithm over NCCL
# and peer copies), then PyTorch context_parallel on cuDNN at 128K, our pass-KV over peer copies
# twice and over NCCL once, full prefill at 16K (issue 10's >= 85% bar), then the GPU suite.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/c2; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/c2.tgz .); }
nvidia-smi -L > $R/gpu.txt; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv >> $R/gpu.txt; cat $R/gpu.txt
timeout 100 .devbin/cp-ring-bench check > $R/ring-check.log 2>&1; echo "ring check rc=$? $(( $(date +%s) - T0 ))s"
echo "ok $(grep -c '\[ok\]' $R/ring-check.log) failed $(grep -c FAILED $R/ring-check.log)"; gzip $R/ring-check.log; pack
(cd scripts && timeout 100 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-cp-n4-cudnn-131072.json) > $R/torch-cp-n4-cudnn-131072.log 2>&1; echo "torch rc=$? $(( $(date +%s) - T0 ))s"
grep -E "SDPA|context_parallel|rror" $R/torch-cp-n4-cudnn-131072.log | head; pack
ring() { # ring NAME SEQ ALGO ARGS...
  local n=$1 t=$2 a=$3; shift 3
  timeout 60 .devbin/cp-ring-bench bench --world-size 4 --seq-len $t --algorithm $a --warmup 2 --iters 10 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(( $(date +%s) - T0 ))s"
  grep -E "one GPU|on 4 GPUs|rank [0-3]:" $R/$n.log | cut -c1-150; pack
}
ring peer-1 131072 pass-kv --transport peer
ring nccl 131072 pass-kv
ring peer-2 131072 pass-kv --transport peer
ring p16k-peer 16384 auto --transport peer
ring p16k-nccl 16384 auto
( time timeout 280 .devbin/gpu_checks --test-threads=1 --nocapture ) > $R/gpu-checks.log 2>&1; echo "gpu_checks rc=$? $(( $(date +%s) - T0 ))s"
grep -E "test result|FAILED|panicked|^real" $R/gpu-checks.log | head -20; echo "ok lines: $(grep -c '\[ok\]' $R/gpu-checks.log) failed lines: $(grep -c 'FAILED' $R/gpu-checks.log)"
gzip $R/gpu-checks.log; pack
echo "total $(( $(date +%s) - T0 ))s"
