#!/usr/bin/env python3
"""Compares one `cp-gpu-bench dump` (our kernel's inputs and outputs, as safetensors) with
PyTorch on the same inputs: SDPA's output, and the log-sum-exp recomputed in f32.

    python3 scripts/compare_sdpa.py DUMP.safetensors
Exit status 1 if the output differs by more than 1e-2 (relative L2) or the LSE by more than 1e-4.
"""
import math
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def main():
    t = load_file(sys.argv[1], device="cuda")
    q, k, v, out, lse = t["q"], t["k"], t["v"], t["out"], t["lse"]  # [T, H, D] token-major
    g = q.shape[1] // k.shape[1]
    qh, kh, vh = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    ref = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)[0].transpose(0, 1)
    rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    # LSE in f32, one head at a time to bound memory.
    tq = q.shape[0]
    mask = torch.ones(tq, tq, device="cuda", dtype=torch.bool).tril()
    lse_ref = torch.empty_like(lse)
    for h in range(q.shape[1]):
        s = (q[:, h].float() @ k[:, h // g].float().T) / math.sqrt(q.shape[2])
        lse_ref[:, h] = torch.logsumexp(s.masked_fill(~mask, float("-inf")), dim=-1)
    rel_lse = ((lse - lse_ref).norm() / lse_ref.norm()).item()
    ok = rel <= 1e-2 and rel_lse <= 1e-4
    print(f"ours vs SDPA on the same bf16 inputs (T={tq}, NH={q.shape[1]}, NKV={k.shape[1]}): "
          f"output rel L2 {rel:.2e}, LSE rel L2 {rel_lse:.2e} -> {'SUCCESS' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
