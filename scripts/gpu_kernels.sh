#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with the release binary carried:
#   cargo build --release -p cp-attention --features cuda --bin cp-gpu-bench   (here)
#   scripts/gpu_kernels.sh OUT_DIR [--quick]                                    (there)
# Checks the kernels against the f64 oracle, times them and PyTorch SDPA in the same call,
# compares one output with SDPA, and records the kernels' register and shared-memory use.
set -uo pipefail
out=${1:?usage: scripts/gpu_kernels.sh OUT_DIR [--quick]}
quick=${2:-}
mkdir -p "$out"
export CP_KERNEL_CACHE=/tmp/cp-kernel-cache PYTHONUNBUFFERED=1
bin=./target/release/cp-gpu-bench
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$out/gpu.txt"
echo "== resource usage"
$bin check >/dev/null 2>&1 || true   # fills the kernel cache
for f in "$CP_KERNEL_CACHE"/*.cubin; do cuobjdump -res-usage "$f" 2>&1 | grep -A1 -E "flash_fwd_d(64|128)_bf16|decode_d128_bf16_g4|merge_fold_f32|merge_all_f32" | tee "$out/resources.txt"; done
echo "== check"
$bin check 2>&1 | tee "$out/check.log" || status=1
echo "== ours"
$bin bench --json "$out/ours.json" $quick 2>&1 | tee "$out/bench.log" || status=1
echo "== PyTorch SDPA"
python3 scripts/sdpa_bench.py --json "$out/sdpa.json" $quick 2>&1 | tee "$out/sdpa.log" || status=1
echo "== ours vs SDPA on the same inputs"
$bin dump /tmp/cp-dump && python3 scripts/compare_sdpa.py /tmp/cp-dump/prefill_t4096.safetensors 2>&1 | tee "$out/compare.log" || status=1
exit $status
