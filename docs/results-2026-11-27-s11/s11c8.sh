#!/bin/bash
# session 11, call 8 (1 GPU): sustained rates, ours (v6.3) against SDPA's cuDNN kernel timed the
# same way: 0.5 s of warm-up, then N launches back to back between two CUDA events (~3 s), the
# two taking turns twice; clocks and power sampled throughout.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
R=/tmp/k; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s11c8.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee $R/gpu.txt
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv,noheader -lms 100 > $R/smi.csv 2>&1 &
SMI=$!
cat > $R/cudnn_loop.py <<'PY'
import sys, time, torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
t, b, d, n = (int(x) for x in sys.argv[1:5])
q = torch.randn(b, 32, t, d, device="cuda", dtype=torch.bfloat16)
k = torch.randn(b, 8, t, d, device="cuda", dtype=torch.bfloat16)
v = torch.randn(b, 8, t, d, device="cuda", dtype=torch.bfloat16)
f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
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
print(f"sdpa-cudnn causal T={t} B={b} D={d}: {n} launches, {ms:.3f} ms each, {4 * b * 32 * t * t * d / 2 / ms / 1e9:.1f} TFLOP/s")
PY
for w in "4096 4 128 2500" "16384 1 128 800" "65536 1 128 50" "131072 1 128 12" "16384 1 64 1200"; do
  set -- $w
  for r in 1 2; do
    timeout 60 .devbin/cp-gpu-bench profile --tokens $1 --batch $2 --head-dim $3 --repeat $4 2>&1 | grep "launches" | tee -a $R/sustained.txt
    timeout 60 python3 $R/cudnn_loop.py $1 $2 $3 $4 2>&1 | tail -1 | tee -a $R/sustained.txt
  done
  pack
done
kill $SMI; pack
