#!/bin/bash
# session 13, call 8 (4 GPUs): the ring bar with v6.8 (the tail split, folds skipping blind query
# blocks, a fold's running partial read under the last P V). The ring check first, then PyTorch
# context_parallel on cuDNN, v6.6's ring bench once and v6.8's twice over peer copies, v6.8 over
# NCCL. Results packed in one archive (the device returns a limited number of files).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/c8; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/c8.tgz .); }
nvidia-smi -L > $R/gpu.txt; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv >> $R/gpu.txt; cat $R/gpu.txt
timeout 100 .devbin/cp-ring-bench check > $R/ring-check.log 2>&1; echo "ring check rc=$? $(( $(date +%s) - T0 ))s"
echo "ok $(grep -c '\[ok\]' $R/ring-check.log) failed $(grep -c FAILED $R/ring-check.log)"; gzip $R/ring-check.log; pack
(cd scripts && timeout 100 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-cp-n4-cudnn-131072.json) > $R/torch-cp-n4-cudnn-131072.log 2>&1; echo "torch rc=$? $(( $(date +%s) - T0 ))s"
grep -E "SDPA|context_parallel|rror" $R/torch-cp-n4-cudnn-131072.log | head; pack
ring() { # ring NAME BIN ARGS...
  local n=$1 bin=$2; shift 2
  timeout 60 $bin bench --world-size 4 --seq-len 131072 --algorithm pass-kv --warmup 2 --iters 10 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(( $(date +%s) - T0 ))s"
  grep -E "one GPU|on 4 GPUs|rank [0-3]:" $R/$n.log | cut -c1-150; pack
}
ring v68-peer-1 .devbin/cp-ring-bench --transport peer
ring v66-peer .devbin/cp-ring-bench-v66 --transport peer
ring v68-peer-2 .devbin/cp-ring-bench --transport peer
ring v68-nccl .devbin/cp-ring-bench
echo "total $(( $(date +%s) - T0 ))s"
