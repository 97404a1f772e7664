#!/bin/bash
# session 13, call 3 (4 GPUs): v6.7 on the ring (pass-KV's steps with the tail split and folds that
# skip query blocks seeing no key). The ring check (every algorithm on 1-4 GPUs against the f64
# oracle), then the ring bar at 128K: PyTorch context_parallel on cuDNN, v6.6's ring bench and
# v6.7's taking turns (peer copies twice, NCCL once).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$OUT/c3; mkdir -p $R; T0=$(date +%s)
nvidia-smi -L > $R/gpu.txt; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv >> $R/gpu.txt; cat $R/gpu.txt
timeout 100 .devbin/cp-ring-bench check > $R/ring-check.log 2>&1; echo "ring check rc=$? $(( $(date +%s) - T0 ))s"
echo "ok $(grep -c '\[ok\]' $R/ring-check.log) failed $(grep -c FAILED $R/ring-check.log)"; tail -3 $R/ring-check.log | cut -c1-200; gzip $R/ring-check.log
(cd scripts && timeout 100 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-cp-n4-cudnn-131072.json) > $R/torch-cp-n4-cudnn-131072.log 2>&1; echo "torch rc=$? $(( $(date +%s) - T0 ))s"
grep -E "SDPA|context_parallel|rror" $R/torch-cp-n4-cudnn-131072.log | head
ring() { # ring NAME BIN ARGS...
  local n=$1 bin=$2; shift 2
  timeout 60 $bin bench --world-size 4 --seq-len 131072 --algorithm pass-kv --warmup 2 --iters 10 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(( $(date +%s) - T0 ))s"
  grep -E "one GPU|on 4 GPUs|rank [0-3]:" $R/$n.log | cut -c1-150
}
for round in 1 2; do
  ring v66-peer-$round .devbin/cp-ring-bench-v66 --transport peer
  ring v67-peer-$round .devbin/cp-ring-bench --transport peer
done
ring v66-nccl .devbin/cp-ring-bench-v66
ring v67-nccl .devbin/cp-ring-bench
echo "total $(( $(date +%s) - T0 ))s"
