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
