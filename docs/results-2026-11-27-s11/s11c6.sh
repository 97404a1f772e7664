#!/bin/bash
# session 11, call 6 (1 GPU): how busy are the tensor cores? ncu's tensor-pipe metrics on v6.3
# (T=16K, with and without the ping-pong; T=4K B=4) and on SDPA's cuDNN kernel at T=16K.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/k; mkdir -p $R; T0=$(date +%s)
pack() { (cd $R && tar czf $OUT/s11c6.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
ncu --query-metrics --chip gh100 > $R/metrics.txt 2>&1; echo "query rc=$?"
grep -iE "tensor|gmma" $R/metrics.txt | cut -c1-150 | head -40
M=$(grep -oE "^sm__pipe_tensor[a-z0-9_]*cycles_active" $R/metrics.txt | sort -u | sed 's/$/.avg.pct_of_peak_sustained_active/' | paste -sd,)
M="$M,$(grep -oE "^sm__inst_executed_pipe_tensor[a-z0-9_]*" $R/metrics.txt | sort -u | sed 's/$/.sum/' | paste -sd,)"
M="$M,sm__cycles_elapsed.avg,sm__cycles_active.avg,smsp__inst_executed.sum,sm__ops_path_tensor_src_bf16_dst_fp32.sum"
echo "metrics: $M"; pack
run() { # run TAG KERNEL-REGEX CMD...
  local tag=$1 k=$2; shift 2
  timeout 120 ncu --metrics "$M" -k "regex:$k" --launch-count 1 "$@" > $R/$tag.log 2>&1; echo "$tag rc=$? $(( $(date +%s) - T0 ))s"
  grep -E "flash_fwd|cudnn|sm90|pipe_tensor|cycles|inst_executed|ops_path|==PROF==|rror" $R/$tag.log | grep -v "^==PROF== Disconnected" | cut -c1-150 | head -24; pack
}
run np-t16384 flash_fwd_d128 .devbin/cp-gpu-bench profile --tokens 16384
run pp-t16384 flash_fwd_d128 .devbin/cp-gpu-bench profile --tokens 16384 --pingpong
run np-t4096b4 flash_fwd_d128 .devbin/cp-gpu-bench profile --tokens 4096 --batch 4
cat > $R/sdpa1.py <<'PY'
import torch
from torch.nn.attention import sdpa_kernel, SDPBackend
t, nh, nkv, d = 16384, 32, 8, 128
q = torch.randn(1, nh, t, d, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, nh, t, d, device="cuda", dtype=torch.bfloat16)
v = torch.randn(1, nh, t, d, device="cuda", dtype=torch.bfloat16)
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    for _ in range(2):
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
torch.cuda.synchronize(); print("sdpa done")
PY
run cudnn-t16384 "cudnn|sm90|flash|fmha|attn" --launch-skip 1 python3 $R/sdpa1.py
