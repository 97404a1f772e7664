import sys, time, torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
t, b, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
q = torch.randn(b, 32, t, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(b, 8, t, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn(b, 8, t, 128, device="cuda", dtype=torch.bfloat16)
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True); torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    n, t0 = 0, time.time()
    s.record()
    while time.time() - t0 < secs:
        for _ in range(10):
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        n += 10
        torch.cuda.synchronize()
    e.record(); torch.cuda.synchronize()
ms = s.elapsed_time(e) / n
fl = 4 * b * 32 * t * t * 128 / 2
print(f"cudnn T={t} B={b}: {n} launches, {ms:.3f} ms each, {fl / ms / 1e9:.1f} TFLOP/s")
