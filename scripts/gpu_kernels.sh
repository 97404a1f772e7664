#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with the release binary carried:
#   cargo build --release -p cp-bench --bin cp-gpu-bench   (here)
#   scripts/gpu_kernels.sh OUT_DIR [--quick]                                    (there)
# Checks the kernels against the f64 oracle, times them and PyTorch SDPA in the same call,
# compares one output with SDPA, and records the kernels' register and shared-memory use.
set -uo pipefail
out=${1:?usage: scripts/gpu_kernels.sh OUT_DIR [--quick]}
quick=${2:-}
mkdir -p "$out"
export CP_KERNEL_CACHE=${CP_KERNEL_CACHE:-/tmp/cp-kernel-cache} PYTHONUNBUFFERED=1
bin=${CP_BIN_DIR:-./target/release}/cp-gpu-bench
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$out/gpu.txt"
# Every step has its own time limit: a hung kernel must not eat the whole call.
echo "== check"
timeout 280 $bin check 2>&1 | tee "$out/check.log" || status=1
echo "== resource usage"
for f in "$CP_KERNEL_CACHE"/*.cubin; do timeout 30 cuobjdump -res-usage "$f" 2>&1 | grep -A1 -E "flash_fwd_d(64|128)_bf16|decode_d128_bf16_g4|decode_mma_d128_bf16|wg_selftest|merge_fold_f32|merge_all_f32" | tee "$out/resources.txt"; done
echo "== ours"
timeout 150 $bin bench --json "$out/ours.json" $quick 2>&1 | tee "$out/bench.log" || status=1
echo "== PyTorch SDPA"
timeout 150 python3 scripts/sdpa_bench.py --json "$out/sdpa.json" $quick 2>&1 | tee "$out/sdpa.log" || status=1
if [ -n "${CP_NCU:-}" ]; then
    echo "== ncu: what limits the prefill kernel (T=16K, one launch)"
    timeout 120 ncu --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
        -k regex:flash_fwd --launch-count 1 $bin profile 2>&1 | grep -vE "^==PROF==|^ +-+$" | tee "$out/ncu.txt" | tail -60
fi
echo "== ours vs SDPA on the same inputs"
timeout 60 $bin dump /tmp/cp-dump && timeout 60 python3 scripts/compare_sdpa.py /tmp/cp-dump/prefill_t4096.safetensors 2>&1 | tee "$out/compare.log" || status=1
exit $status
