#!/usr/bin/env bash
# Everything GPU, in parts that each fit one device call (10 minutes), from the repository root,
# with the release binaries built here and carried (stripped):
#   cargo build --release -p cp-bench --bin cp-gpu-bench
#   cargo build --release -p cp-bench --bin cp-ring-bench
#   scripts/gpu_all.sh OUT_DIR PART...
# Binaries are taken from $CP_BIN_DIR (default ./target/release); compiled kernels are cached in
# $CP_KERNEL_CACHE (default /tmp/cp-kernel-cache; carry a cache built by the same NVRTC to skip
# compiling there). Parts:
#   kernels  wgmma self-test, kernel check against the f64 oracle, kernel timings beside
#            PyTorch SDPA (flash and cuDNN) in the same call       (scripts/gpu_kernels.sh)
#   check    the ring check: every algorithm, 1..8 ranks on GPU 0, NCCL on every GPU
#   links    the ring's link and all-to-all anchors, ours and NCCL's through PyTorch
#   prefill  full prefill at 4K, 16K and 128K on every GPU, pass-KV and pass-Q
#   sweep    the Table 4 miss-rate sweep on every GPU
#   decode   per-token decode latency on 1, 2 and 4 GPUs, enqueued and as CUDA graph replays
#   graphs   the GPU test suite (cp-bench's gpu_checks, built with `cargo test -p cp-bench
#            --release --no-run` and carried as $CP_BIN_DIR/gpu_checks), a graph replay whose
#            peer never replays included (it needs two GPUs)
#   torch    PyTorch context_parallel at 16K and 128K, flash and cuDNN backends
#   failure  a rank crashing mid-run under NCCL must end its peer in bounded time
# The multi-GPU parts use $CP_TRANSPORT between GPUs: nccl (default) or peer (direct copies).
# Each step has its own time limit. Logs and JSON go to OUT_DIR; a summary is printed last.
set -uo pipefail
out=${1:?usage: scripts/gpu_all.sh OUT_DIR PART...}
shift
mkdir -p "$out"
export CP_BIN_DIR=${CP_BIN_DIR:-./target/release} CP_KERNEL_CACHE=${CP_KERNEL_CACHE:-/tmp/cp-kernel-cache}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ring=$CP_BIN_DIR/cp-ring-bench
tr=${CP_TRANSPORT:-nccl}
gpus=$(nvidia-smi -L | wc -l)
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
status=0
step() { # step NAME SECONDS CMD...: runs CMD with a time limit, logging to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%T))"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "!! $name exited $rc"; status=1; }
}
{
    echo "== $(date -u) $gpus GPU(s): $card"
    nvidia-smi -L
    [ "$gpus" -gt 1 ] && nvidia-smi topo -m | head -$((gpus + 1))
    for part in "$@"; do
        case $part in
        kernels) step kernels 420 scripts/gpu_kernels.sh "$out/kernels" ;;
        check) step ring-check 240 "$ring" check ;;
        links)
            step "links-$tr" 120 "$ring" links --world-size "$gpus" --transport "$tr" --sizes 262144,1048576,4194304,16777216 --json "$out/links-n$gpus-$tr.json"
            [ -f .devtools/nccl_anchor.py ] && step nccl-anchor 120 torchrun --nproc-per-node "$gpus" .devtools/nccl_anchor.py
            ;;
        prefill)
            for t in 4096 16384 131072; do
                step "prefill-n$gpus-$t-$tr" 150 "$ring" bench --world-size "$gpus" --transport "$tr" --seq-len $t --algorithm all --warmup 2 --iters 5 --json "$out/prefill-n$gpus-$t-$tr.json"
            done
            ;;
        sweep) step "sweep-n$gpus-$tr" 400 "$ring" sweep --world-size "$gpus" --transport "$tr" --warmup 1 --iters 3 --json "$out/sweep-n$gpus-$tr.json" ;;
        decode)
            # Graph capture needs NCCL (peer copies pass buffers between threads at run time).
            graphs=$([ "$tr" = nccl ] && echo --graphs)
            step "decode-128k-$tr" 300 "$ring" decode --transport "$tr" --world-sizes 2,4 --contexts 131072 --batches 1,8,64 --iters 200 $graphs --json "$out/decode-128k-$tr.json"
            step "decode-1m-$tr" 300 "$ring" decode --transport "$tr" --world-sizes 2,4 --contexts 1048576 --batches 1,8 --iters 100 $graphs --json "$out/decode-1m-$tr.json"
            ;;
        graphs)
            step gpu-checks 300 "$CP_BIN_DIR/gpu_checks" --test-threads=1 --nocapture
            ;;
        decode-growing)
            step "decode-growing-$tr" 200 "$ring" decode --transport "$tr" --world-sizes 2,4 --contexts 131072 --batches 1,8 --iters 20 --growing-iters 10 --json "$out/decode-growing-$tr.json"
            ;;
        torch)
            for backend in flash cudnn; do
                for t in 16384 131072; do
                    (cd scripts && step "torch-cp-$backend-$t" 200 torchrun --nproc-per-node "$gpus" torch_cp_bench.py --seq-len $t --iters 3 --backend $backend --json "$out/torch-cp-n$gpus-$backend-$t.json")
                done
            done
            ;;
        failure) [ "$gpus" -ge 2 ] && step failure 120 scripts/nccl_failure.sh "$out/failure" ;;
        *) echo "unknown part $part"; status=1 ;;
        esac
    done
    echo "== done $(date -u)"
} 2>&1 | tee "$out/all.log"
echo "== summary"
grep -hE "FAILED|rror|TFLOP/s|TB/s|efficiency|slowest|heuristic|cannot win|all-to-all|ring shift|GPU p50|sweep|empirical|miss|exited|exit codes|wgmma|^  +[0-9.]+% " "$out/all.log" | grep -v "\[ok\]" | tail -150
exit $status
