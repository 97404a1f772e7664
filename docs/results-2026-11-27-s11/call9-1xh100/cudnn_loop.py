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
