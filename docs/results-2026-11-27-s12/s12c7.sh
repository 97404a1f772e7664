#!/bin/bash
# session 12, call 7 (4 GPUs): v6.6, pass-KV's fold in the kernel's epilogue (each step after the
# first attends into the running f32 partial in place, no separate merge pass). The kernel checks
# against the f64 oracle on GPU 0 (new cases fold a second key block into the first's partial, on
# every kernel), then the ring bar at 128K: PyTorch context_parallel on cuDNN, v6.4's ring bench
# and v6.6's taking turns (peer copies, NCCL), then the ring check (every algorithm on GPUs
# against the f64 oracle).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/r; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s12c7.tgz .); }
nvidia-smi -L > $R/gpu.txt; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv >> $R/gpu.txt; cat $R/gpu.txt
CUDA_VISIBLE_DEVICES=0 timeout 150 .devbin/cp-gpu-bench check > $R/check.log 2>&1; echo "check rc=$? $(( $(date +%s) - T0 ))s"
grep -c "\[ok\]" $R/check.log; grep -c "FAILED" $R/check.log; grep "fold:" $R/check.log | head -3 | cut -c1-170; grep "FAILED" $R/check.log | head -5 | cut -c1-200; gzip $R/check.log; pack
(cd scripts && timeout 100 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-cp-n4-cudnn-131072.json) > $R/torch-cp-n4-cudnn-131072.log 2>&1; echo "torch rc=$? $(( $(date +%s) - T0 ))s"
grep -E "SDPA|context_parallel|rror" $R/torch-cp-n4-cudnn-131072.log | head; pack
ring() { # ring NAME BIN ARGS...
  local n=$1 bin=$2; shift 2
  timeout 60 $bin bench --world-size 4 --seq-len 131072 --algorithm pass-kv --warmup 2 --iters 5 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(( $(date +%s) - T0 ))s"
  grep -E "one GPU|on 4 GPUs" $R/$n.log | cut -c1-150; pack
}
for round in 1 2; do
  ring v64-peer-$round .devbin/cp-ring-bench-v64 --transport peer
  ring v66-peer-$round .devbin/cp-ring-bench --transport peer
done
ring v64-nccl .devbin/cp-ring-bench-v64
ring v66-nccl .devbin/cp-ring-bench
timeout 60 .devbin/cp-ring-bench check > $R/ring-check.log 2>&1; echo "ring check rc=$? $(( $(date +%s) - T0 ))s"
echo "ok $(grep -c '\[ok\]' $R/ring-check.log) failed $(grep -c FAILED $R/ring-check.log)"; tail -3 $R/ring-check.log | cut -c1-200; gzip $R/ring-check.log; pack
