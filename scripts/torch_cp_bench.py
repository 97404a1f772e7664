#!/usr/bin/env python3
"""The peer baseline for issue 6: PyTorch's context-parallel attention
(torch.distributed.tensor.experimental.context_parallel, ring attention over SDPA) on the same
shapes as `cp-ring-bench bench` (run on 2 and 4 H100s and 4 H200s with PyTorch 2.11; results in
docs/benchmarks.md).

Launch one process per GPU:
    torchrun --nproc-per-node N scripts/torch_cp_bench.py --seq-len 131072 [--json out.json]
Prints the single-GPU SDPA time (rank 0, same backend) and the context-parallel time (slowest
rank), as medians of CUDA-event timings after warm-up, and the parallel efficiency.
"""
import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.experimental import context_parallel
from torch.nn.attention import SDPBackend, sdpa_kernel

from sdpa_bench import median_ms  # the same timing as the single-GPU baseline


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=131072)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--backend", choices=["flash", "cudnn"], default="flash")
    ap.add_argument("--json")
    args = ap.parse_args()
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    mesh = init_device_mesh("cuda", (world,))
    backend = SDPBackend.FLASH_ATTENTION if args.backend == "flash" else SDPBackend.CUDNN_ATTENTION
    t, g = args.seq_len, args.heads // args.kv_heads
    gen = torch.Generator(device="cuda").manual_seed(0)  # the same inputs on every rank

    def inputs():
        q = torch.randn(1, args.heads, t, args.head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        k = torch.randn(1, args.kv_heads, t, args.head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        v = torch.randn(1, args.kv_heads, t, args.head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        # Ring attention over SDPA takes equal head counts: repeat K/V (memory, not FLOPs).
        return q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)

    q, k, v = inputs()
    flops = 4 * args.heads * t * t * args.head_dim / 2
    single_ms = None
    if rank == 0:
        with sdpa_kernel(backend):
            single_ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.iters)
    dist.barrier()

    def cp_step():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def agree(more):
        # Every rank warms up as long as the slowest wants to: the same number of steps each.
        flag = torch.tensor([1 if more else 0], device="cuda")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # context_parallel shards the buffers in place (load-balanced for causal attention) for the
    # duration of the context.
    with context_parallel(mesh, buffers=[q, k, v], buffer_seq_dims=[2, 2, 2]):
        cp_ms = median_ms(cp_step, args.iters, agree)
    slowest = torch.tensor([cp_ms], device="cuda")
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if rank == 0:
        cp_ms = slowest.item()
        eff = single_ms / (world * cp_ms)
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name()} x{world}, NCCL {torch.cuda.nccl.version()}")
        print(f"single GPU SDPA-{args.backend}: {single_ms:.3f} ms ({flops / single_ms / 1e9:.0f} TFLOP/s)")
        print(f"context_parallel on {world} GPUs: {cp_ms:.3f} ms, parallel efficiency {eff:.3f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"world_size": world, "t": t, "single_ms": single_ms, "cp_ms": cp_ms, "efficiency": eff}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
