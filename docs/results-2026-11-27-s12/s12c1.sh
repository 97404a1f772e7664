#!/bin/bash
# session 12, call 1 (1 GPU): the off-diagonal 16K x 16K block, ours (v6.3) beside SDPA's cuDNN
# kernel under ncu: tensor-pipe activity, cycles, instructions, and PC sampling (SASS) of both,
# to find where cuDNN's ~3% per cycle on the unmasked loop comes from.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/k; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s12c1.tgz --exclude='*.ncu-rep' .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
M=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__cycles_elapsed.avg,sm__cycles_active.avg,smsp__inst_executed.sum,sm__inst_executed_pipe_tensor_op_gmma.sum,sm__ops_path_tensor_src_bf16_dst_fp32.sum,smsp__inst_executed_op_mufu.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_gmma.sum,lts__t_sectors.sum,sm__warps_active.avg.pct_of_peak_sustained_active
cat > $R/sdpa1.py <<'PY'
import torch
from torch.nn.attention import sdpa_kernel, SDPBackend
t, nh, d = 16384, 32, 128
q = torch.randn(1, nh, t, d, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 8, t, d, device="cuda", dtype=torch.bfloat16).repeat_interleave(4, dim=1)
v = torch.randn(1, 8, t, d, device="cuda", dtype=torch.bfloat16).repeat_interleave(4, dim=1)
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    for _ in range(2):
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=False)
torch.cuda.synchronize(); print("sdpa done")
PY
prof() { # prof TAG KERNEL-REGEX SKIP CMD...
  local tag=$1 k=$2 skip=$3; shift 3
  timeout 150 ncu --section SpeedOfLight --section WarpStateStats --section SourceCounters --section SchedulerStats --section InstructionStats \
    --metrics "$M" -k "regex:$k" --launch-skip $skip --launch-count 1 -o $R/$tag "$@" > $R/$tag.log 2>&1; echo "$tag rc=$? $(( $(date +%s) - T0 ))s"
  ncu --import $R/$tag.ncu-rep --page details > $R/$tag-details.txt 2>&1
  grep -E "flash_fwd|sm90|Duration|Elapsed Cycles|SM Frequency|Issued Warp Per|pipe_tensor|inst_executed|mufu|sectors|bank_conf" $R/$tag-details.txt | head -20
  ncu --import $R/$tag.ncu-rep --page source --csv --print-source sass > $R/$tag-sass.csv 2>/dev/null; gzip -f $R/$tag-sass.csv; rm -f $R/$tag.ncu-rep; pack
}
prof ours-offdiag flash_fwd_d128 0 .devbin/cp-gpu-bench profile --tokens 16384 --off-diagonal
prof cudnn-offdiag "cudnn|sm90|flash|fmha|attn" 1 python3 $R/sdpa1.py
echo "total $(( $(date +%s) - T0 ))s"
