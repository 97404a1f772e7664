#!/usr/bin/env bash
# Everything GPU in one device call, from the repository root, with the release binaries
# built here (cargo build --release -p cp-attention --features cuda --bin cp-gpu-bench;
# cargo build --release -p cp-nccl --bin cp-ring-bench) in $CP_BIN_DIR (default
# ./target/release):
#   scripts/gpu_all.sh OUT_DIR [kernels|ring|all]
# 1. kernels: wgmma self-test, check against the f64 oracle, timings beside PyTorch SDPA
#    (scripts/gpu_kernels.sh);
# 2. the ring: check on every transport (NCCL with one GPU per rank where there are several);
#    the rank-failure test (scripts/nccl_failure.sh) with 2+ GPUs; benches (auto included);
# 3. with 2+ GPUs, PyTorch's context-parallel attention on the same shapes (scripts/torch_cp_bench.py).
# Each step has its own time limit; each part stays under 10 minutes (one device call each).
# Results go to OUT_DIR/res-PART.tgz (everything) and OUT_DIR/summary-PART.log.
set -uo pipefail
out=${1:?usage: scripts/gpu_all.sh OUT_DIR [kernels|ring|all]}
part=${2:-all}
export CP_BIN_DIR=${CP_BIN_DIR:-./target/release} CP_KERNEL_CACHE=/tmp/cp-kernel-cache PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
res=$(mktemp -d)
ring=$CP_BIN_DIR/cp-ring-bench
gpus=$(nvidia-smi -L | wc -l)
{
    echo "== $(date -u) $gpus GPU(s)"; nvidia-smi -L; cat /proc/driver/nvidia/version 2>/dev/null | head -1
    ls -l /usr/lib/x86_64-linux-gnu/libnccl.so* 2>/dev/null
    if [ "$part" != ring ]; then
        echo "== 1. kernels"
        scripts/gpu_kernels.sh "$res/kernels"
        echo "== 2. ring check"
        timeout 200 $ring check 2>&1
        if [ "$gpus" -ge 2 ]; then
            echo "== 2b. a rank dies mid-run under NCCL"
            scripts/nccl_failure.sh "$res/failure"
        fi
    fi
    [ "$part" = kernels ] && exit 0
    echo "== 2c. ring benches"
    n=$(( gpus >= 2 ? 2 : 4 ))
    timeout 120 $ring bench --world-size $n --seq-len 16384 --algorithm all --json "$res/ring-n$n-16k.json" 2>&1
    timeout 60 $ring bench --world-size $n --seq-len 2048 --cached 30000 --algorithm auto --json "$res/ring-n$n-partial-auto.json" 2>&1
    timeout 60 $ring bench --world-size 4 --seq-len 16384 --algorithm auto --json "$res/ring-n4-16k-auto.json" 2>&1
    if [ "$gpus" -ge 2 ]; then
        timeout 120 $ring bench --world-size 2 --seq-len 131072 --algorithm pass-kv --iters 3 --json "$res/ring-n2-128k.json" 2>&1
        timeout 120 $ring bench --world-size 2 --seq-len 262144 --algorithm pass-kv --iters 2 --json "$res/ring-n2-256k.json" 2>&1
        echo "== 3. PyTorch context parallel, 2 GPUs"
        for t in 16384 131072; do
            (cd scripts && timeout 150 torchrun --nproc-per-node 2 torch_cp_bench.py --seq-len $t --iters 3 --json "$res/torch-cp-n2-$t.json" 2>&1 | grep -v "^W1\|OMP_NUM\|\*\*\*" | tail -8)
        done
    fi
    echo "== done $(date -u)"
} 2>&1 | tee "$res/all.log"
grep -E "FAILED|rror|TFLOP|TB/s|efficiency|slowest|heuristic|PASS|FAIL|exit codes|rank [0-9]|wgmma|==" "$res/all.log" > "$out/summary-$part.log"
tar czf "$out/res-$part.tgz" -C "$res" .
