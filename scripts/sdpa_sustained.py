#!/usr/bin/env python3
"""PyTorch SDPA (cuDNN backend) at its sustained rate: the same shapes and the same timing as
`cp-gpu-bench profile --repeat N` — half a second of warm-up, then N launches back to back between
two CUDA events — so that both run at the clock the card holds under load (at its power limit,
an H100's clock depends on the kernel: session 11 measured 1400-1850 MHz across these shapes).

    python3 scripts/sdpa_sustained.py --tokens 16384 --batch 1 --repeat 800 [--off-diagonal]
"""
import argparse

import torch
from torch.nn.attention import SDPBackend

from sdpa_bench import NH, NKV, sdpa, warm_up  # the same call and warm-up as the 20-launch bench


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--head-dim", type=int, default=128, choices=[64, 128])
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--off-diagonal", action="store_true", help="no mask (a ring step's off-diagonal block)")
    ap.add_argument("--backend", default="cudnn", choices=["cudnn", "flash"])
    args = ap.parse_args()
    if min(args.tokens, args.batch, args.repeat) < 1:
        ap.error("--tokens, --batch and --repeat must be at least 1")
    t, b, d = args.tokens, args.batch, args.head_dim
    q = torch.randn(b, NH, t, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, NKV, t, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, NKV, t, d, device="cuda", dtype=torch.bfloat16)
    causal = not args.off_diagonal
    backend = SDPBackend.CUDNN_ATTENTION if args.backend == "cudnn" else SDPBackend.FLASH_ATTENTION

    def f():
        return sdpa(q, k, v, causal, backend)

    warm_up(f)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.repeat):
        f()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / args.repeat
    flops = 4 * b * NH * t * t * d / (2 if causal else 1)
    what = "causal" if causal else "off-diagonal"
    print(
        f"sdpa-{args.backend} {what} T={t} B={b} D={d}: {args.repeat} launches, {ms:.3f} ms each, "
        f"{flops / ms / 1e9:.1f} TFLOP/s"
    )


if __name__ == "__main__":
    main()
