//! CPU micro-benchmarks: partial attention (throughput counted in FLOPs, shown by criterion as
//! elements/s = FLOP/s) and the merge (throughput in bytes read and written).

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use candle_core::{DType, Device, Tensor};
use cp_attention::{CpuAttention, Partial, merge, merge_all};
use cp_shard::{Layout, Span};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const NH: usize = 8;
const NKV: usize = 2;
const DH: usize = 64;

fn contiguous(len: usize) -> Layout {
    let mut l = Layout::new();
    l.push_tokens(0, Span::new(0, len));
    l
}

fn attention(c: &mut Criterion) {
    let dev = Device::Cpu;
    let ops = CpuAttention::default();
    let mut group = c.benchmark_group("partial_attention_causal_f32");
    group.sample_size(10);
    for t in [128usize, 512, 1024] {
        let q = Tensor::randn(0f32, 1.0, (t, NH, DH), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (t, NKV, DH), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (t, NKV, DH), &dev).unwrap();
        let layout = contiguous(t);
        // Causal attention FLOPs as the GPU figures count them: 2 * 2 * NH * T * T * DH / 2.
        let flops = (2 * NH * t * t * DH) as u64;
        group.throughput(Throughput::Elements(flops));
        group.bench_with_input(BenchmarkId::new("flops", t), &t, |b, _| {
            b.iter(|| ops.partial(&q, &layout, &k, &v, &layout).unwrap())
        });
    }
    group.finish();
}

fn merges(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("merge_f32");
    for rows in [1024usize, 8192] {
        let part = || Partial {
            out: Tensor::randn(0f32, 1.0, (rows, NH, DH), &dev).unwrap(),
            lse: Tensor::randn(0f32, 1.0, (rows, NH), &dev).unwrap(),
        };
        let (a, b) = (part(), part());
        let parts: Vec<_> = (0..4).map(|_| part()).collect();
        let one = rows * NH * (DH + 1) * DType::F32.size_in_bytes();
        group.throughput(Throughput::Bytes((3 * one) as u64));
        group.bench_with_input(BenchmarkId::new("pair_bytes", rows), &rows, |bench, _| {
            bench.iter(|| merge(&a, &b).unwrap())
        });
        group.throughput(Throughput::Bytes((5 * one) as u64));
        group.bench_with_input(BenchmarkId::new("four_way_bytes", rows), &rows, |bench, _| {
            bench.iter(|| merge_all(&parts).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, attention, merges);
criterion_main!(benches);
