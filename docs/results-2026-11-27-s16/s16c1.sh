#!/bin/bash
# session 16, call 1 (4 GPUs): v7.4 (branch v7.4-lazy-max, binaries *-74) validated and measured.
# Phase 1, one job per card at once: GPU 0 the kernel checks of v7.4 (session 15's new cases drive
# its rescale and overflow fallbacks); GPU 1 sustained rates main (v7.1) vs v7.4 in turns beside
# cuDNN; GPU 2 ring ranks 3 and 0 at 128K (one-GPU profile) main vs v7.4 in turns.
# Phase 2, all four cards: the ring check with v7.4, PyTorch context_parallel on cuDNN at 128K,
# pass-KV 128K over peer copies v7.4 / main / v7.4 / main, over NCCL v7.4.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/c1; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/c1.tgz .); }
B=.devbin/cp-gpu-bench
nvidia-smi -L > $R/gpu.txt; nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv >> $R/gpu.txt; cat $R/gpu.txt
( CUDA_VISIBLE_DEVICES=0 timeout 300 $B-74 check > $R/check-74.log 2>&1; echo "check 74 rc=$? $(( $(date +%s) - T0 ))s" > $R/check-rc.txt ) &
( CP_VARIANTS="main $B
v74 $B-74" CP_SHAPES="16384 1 128 400 --off-diagonal
16384 1 128 800
131072 1 128 12
4096 4 128 2500
16384 1 64 1200" CUDA_VISIBLE_DEVICES=1 timeout 295 bash scripts/gpu_sustained.sh $R/sus > $R/sus.log 2>&1 ) &
( for round in 1 2; do for rank in 3 0; do for v in main 74; do
  bin=$B; [ $v = 74 ] && bin=$B-74
  CUDA_VISIBLE_DEVICES=2 timeout 60 $bin profile --tokens 131072 --ring-world 4 --ring-rank $rank --repeat 40 2>&1 | tail -1 | sed "s/^/$v r$rank: /" >> $R/ring1.txt
done; done; done ) &
wait
cat $R/check-rc.txt; echo "ok $(grep -c '\[ok\]' $R/check-74.log) failed $(grep -c FAILED $R/check-74.log)"
grep -E "FAILED" $R/check-74.log | head -8 | cut -c1-220
grep -E "rising|later tile|87.6" $R/check-74.log | head -12 | cut -c1-160
gzip $R/check-74.log
grep -v "^$" $R/sus/sustained.txt | cut -c1-140; cut -c1-140 $R/ring1.txt; pack
echo "phase 1 $(( $(date +%s) - T0 ))s"
RB=.devbin/cp-ring-bench
timeout 100 $RB-74 check > $R/ring-check-74.log 2>&1; echo "ring check rc=$? $(( $(date +%s) - T0 ))s"
echo "ok $(grep -c '\[ok\]' $R/ring-check-74.log) failed $(grep -c FAILED $R/ring-check-74.log)"; gzip $R/ring-check-74.log; pack
(cd scripts && timeout 100 torchrun --nproc-per-node 4 torch_cp_bench.py --seq-len 131072 --iters 5 --backend cudnn --json $R/torch-cp-n4-cudnn-131072.json) > $R/torch-cp-n4-cudnn-131072.log 2>&1; echo "torch rc=$? $(( $(date +%s) - T0 ))s"
grep -E "SDPA|context_parallel|rror" $R/torch-cp-n4-cudnn-131072.log | head; pack
ring() { # ring NAME BIN SEQ ALGO ARGS...
  local n=$1 b=$2 t=$3 a=$4; shift 4
  timeout 60 $b bench --world-size 4 --seq-len $t --algorithm $a --warmup 2 --iters 10 --json $R/$n.json "$@" > $R/$n.log 2>&1; echo "$n rc=$? $(( $(date +%s) - T0 ))s"
  grep -E "one GPU|on 4 GPUs|rank [0-3]:" $R/$n.log | cut -c1-150; pack
}
ring peer74-1 $RB-74 131072 pass-kv --transport peer
ring peermain-1 $RB 131072 pass-kv --transport peer
ring peer74-2 $RB-74 131072 pass-kv --transport peer
ring peermain-2 $RB 131072 pass-kv --transport peer
ring nccl74 $RB-74 131072 pass-kv
echo "total $(( $(date +%s) - T0 ))s"
