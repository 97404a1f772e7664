#!/usr/bin/env python3
"""PyTorch SDPA baseline for `cp-gpu-bench bench`: the same shapes, timed the same way
(median of CUDA-event timings after warm-up), with the flash and cuDNN backends.

Run on the GPU machine in the same call as the Rust benchmark:
    python3 scripts/sdpa_bench.py --json sdpa.json [--quick]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

NH, NKV, D = 32, 8, 128


def warm_up(fn, agree=lambda more: more):
    # At least half a second of warm-up: an H100 running attention sits at its power limit, and
    # a kernel timed straight after idling or a lighter kernel runs at a higher clock than in a
    # long run (cp-gpu-bench warms up the same way before its timings). `agree` turns this
    # process's "warm up more?" into the answer every process shares (`fn` with collectives
    # inside must run as often on every rank, or the ranks' calls no longer pair up).
    started, n = time.perf_counter(), 0
    while agree(n < 3 or time.perf_counter() - started < 0.5):
        fn()
        torch.cuda.synchronize()
        n += 1


def median_ms(fn, reps, agree=lambda more: more):
    warm_up(fn, agree)
    # Every rep queued before the first wait, as cp-gpu-bench does: a wait per rep would drain the
    # stream, and each timing would then include Python's dispatch of the next call.
    events = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2]


def sdpa(q, k, v, causal, backend):
    with sdpa_kernel(backend):
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        except RuntimeError:
            # A backend without GQA support: repeat K/V (costs memory, not FLOPs).
            g = q.shape[1] // k.shape[1]
            return F.scaled_dot_product_attention(
                q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=causal
            )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 5 if args.quick else 20
    dev = "cuda"
    rows = []

    def record(name, ms, rate, unit):
        print(f"  {name:<44} {ms:>9.3f} ms  {rate:>8.1f} {unit}")
        rows.append({"name": name, "ms": ms, "rate": rate, "unit": unit})

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    sizes = [(4096, 4), (16384, 1)] if args.quick else [(4096, 4), (16384, 1), (65536, 1), (131072, 1)]
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]
    for t, b in sizes:
        q = torch.randn(b, NH, t, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(b, NKV, t, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(b, NKV, t, D, device=dev, dtype=torch.bfloat16)
        flops = 4 * b * NH * t * t * D / 2
        for name, be in backends:
            try:
                ms = median_ms(lambda: sdpa(q, k, v, True, be), reps)
                record(f"sdpa-{name} prefill causal T={t} B={b}", ms, flops / ms / 1e9, "TFLOP/s")
            except RuntimeError as e:
                print(f"  sdpa-{name} T={t}: not run ({str(e).splitlines()[0]})")
        del q, k, v
    # Head dim 64, causal T=16K (half the FLOPs per token of D=128).
    t, d64 = 16384, 64
    q = torch.randn(1, NH, t, d64, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, NKV, t, d64, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, NKV, t, d64, device=dev, dtype=torch.bfloat16)
    for name, be in backends:
        try:
            ms = median_ms(lambda: sdpa(q, k, v, True, be), reps)
            record(f"sdpa-{name} prefill causal D=64 T={t}", ms, 4 * NH * t * t * d64 / 2 / ms / 1e9, "TFLOP/s")
        except RuntimeError as e:
            print(f"  sdpa-{name} D=64: not run ({str(e).splitlines()[0]})")
    del q, k, v
    t = 16384
    q = torch.randn(1, NH, t, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, NKV, t, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, NKV, t, D, device=dev, dtype=torch.bfloat16)
    for name, be in backends:
        ms = median_ms(lambda: sdpa(q, k, v, False, be), reps)
        record(f"sdpa-{name} off-diagonal block 16K x 16K", ms, 4 * NH * t * t * D / ms / 1e9, "TFLOP/s")
    del q, k, v
    # Short queries over a long key range (a ring step of partial prefill at 1% miss on 4
    # ranks): 320 queries after 32000 keys, all visible.
    tq, tk = 320, 32000
    q = torch.randn(1, NH, tq, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, NKV, tk, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, NKV, tk, D, device=dev, dtype=torch.bfloat16)
    for name, be in backends:
        ms = median_ms(lambda: sdpa(q, k, v, False, be), reps)
        record(f"sdpa-{name} short q 320 x 32000 keys", ms, 4 * NH * tq * tk * D / ms / 1e9, "TFLOP/s")
    del q, k, v
    decodes = [(131072, 8)] if args.quick else [(131072, 8), (1 << 20, 1)]
    for length, b in decodes:
        q = torch.randn(b, NH, 1, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(b, NKV, length, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(b, NKV, length, D, device=dev, dtype=torch.bfloat16)
        ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), reps)
        record(f"sdpa decode KV={length} B={b}", ms, 2 * b * length * NKV * D * 2 / ms / 1e9, "TB/s")
        del q, k, v
    x = torch.empty(16384 * NH * D, device=dev, dtype=torch.float32)
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), reps)
    record("torch device copy (read 1, write 1)", ms, 2 * x.numel() * 4 / ms / 1e9, "TB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
