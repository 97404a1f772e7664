#!/bin/bash
# session 11, call 9 (1 GPU): sustained rates as in call 8, for the off-diagonal block (16K queries
# after 16K keys, no mask) and once more causal 4K B=4: ours (v6.3) and SDPA's cuDNN kernel taking
# turns twice, 0.5 s of warm-up, then N launches back to back between two CUDA events.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/k; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s11c9.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv,noheader -lms 100 > $R/smi.csv 2>&1 &
SMI=$!
cat > $R/cudnn_loop.py <<'PY'
import sys, time, torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
t, b, d, n, causal = (int(x) for x in sys.argv[1:6])
q = torch.randn(b, 32, t, d, device="cuda", dtype=torch.bfloat16)
k = torch.randn(b, 8, t, d, device="cuda", dtype=torch.bfloat16)
v = torch.randn(b, 8, t, d, device="cuda", dtype=torch.bfloat16)
f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal), enable_gqa=True)
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    t0 = time.time()
    while time.time() - t0 < 0.5:
        f(); torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        f()
    e.record(); torch.cuda.synchronize()
ms = s.elapsed_time(e) / n
what = "causal" if causal else "off-diagonal (no mask)"
print(f"sdpa-cudnn {what} T={t} B={b} D={d}: {n} launches, {ms:.3f} ms each, {4 * b * 32 * t * t * d / (2 if causal else 1) / ms / 1e9:.1f} TFLOP/s")
PY
mark() { echo "$1 $(date +%s.%N)" >> $R/marks.txt; }
for r in 1 2; do
  mark ours-off-$r; timeout 60 .devbin/cp-gpu-bench profile --tokens 16384 --off-diagonal --repeat 400 2>&1 | grep "launches" | tee -a $R/sustained.txt
  mark cudnn-off-$r; timeout 60 python3 $R/cudnn_loop.py 16384 1 128 400 0 2>&1 | tail -1 | tee -a $R/sustained.txt
done
mark ours-4k; timeout 60 .devbin/cp-gpu-bench profile --tokens 4096 --batch 4 --repeat 2500 2>&1 | grep "launches" | tee -a $R/sustained.txt
mark cudnn-4k; timeout 60 python3 $R/cudnn_loop.py 4096 4 128 2500 1 2>&1 | tail -1 | tee -a $R/sustained.txt
mark end; sleep 0.5; kill $SMI; pack
