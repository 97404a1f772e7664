//! Decode launches: the split-KV decode kernels (tensor-core and SIMT), their per-layout
//! arguments, and when a partial attention takes them.

use std::sync::Arc;

use cp_ring::Partial;
use cp_shard::Layout;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::layout::DeviceLayout;
use super::merge::elementwise;
use super::ops::CudaAttention;
use super::table::decode_mma_smem;
use super::{GpuDType, GpuTensor, cuda_err};
use crate::Result;

/// Which split-KV decode kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeKernel {
    /// The query heads of a KV head as the rows of an `mma.sync` tile, per-warp cp.async rings
    /// (any head ratio up to 16). The default.
    TensorCore,
    /// CUDA cores, a group of lanes per key (head ratios 1, 4 and 8).
    Simt,
}

/// What the decode kernel needs beyond the tensors, prepared once per pair of layouts.
#[derive(Debug)]
pub struct DecodeArgs {
    kernel: DecodeKernel,
    start: CudaSlice<i32>,
    len: CudaSlice<i32>,
    pos: CudaSlice<i32>,
    splits: usize,
    split_len: usize,
}

/// Decode arguments are prepared per kernel and pair of (query, key) layouts.
pub(super) type DecodeKey = (DecodeKernel, Layout, Layout);

impl CudaAttention {
    /// Prepares the decode kernel's arguments for a pair of layouts: each query row's key
    /// range and position, and the split of the keys. `None` when some sequence's keys are not
    /// contiguous or the head ratio does not suit the kernel (at most 16 for the tensor-core
    /// kernel; 1, 4 or 8 for the SIMT one): the prefill kernel then serves.
    pub fn prepare_decode(
        &self,
        ql: &DeviceLayout,
        kl: &DeviceLayout,
        nh: usize,
        nkv: usize,
    ) -> Result<Option<DecodeArgs>> {
        let Some(ranges) = &kl.seq_ranges else { return Ok(None) };
        let kernel = self.decode_kernel;
        let group_ok = match kernel {
            DecodeKernel::TensorCore => (1..=16).contains(&(nh / nkv.max(1))),
            DecodeKernel::Simt => [1, 4, 8].contains(&(nh / nkv.max(1))),
        };
        if nkv == 0 || !group_ok || ql.rows == 0 {
            return Ok(None);
        }
        let (mut start, mut len, mut pos) = (Vec::new(), Vec::new(), Vec::new());
        for t in ql.layout.rows() {
            let (s, l, p) = match t.and_then(|t| ranges.get(&t.seq).map(|r| (*r, t.pos))) {
                Some(((first, count), p)) => (first as i32, count as i32, p as i32),
                None => (0, 0, 0),
            };
            start.push(s);
            len.push(l);
            pos.push(p);
        }
        let max_len = len.iter().copied().max().unwrap_or(0).max(1) as usize;
        // Many small splits (at most 256 of them): a grid of many waves has no half-empty last
        // wave (576 blocks on 528 slots ran at half speed). The tensor-core kernel takes longer
        // splits (2048 keys: 32 per warp-chunk ring pass) to amortise filling its rings.
        let min_split = match kernel {
            DecodeKernel::TensorCore => 2048,
            DecodeKernel::Simt => 1024,
        };
        let split_len = max_len.div_ceil(256).max(min_split).div_ceil(64) * 64;
        let splits = max_len.div_ceil(split_len);
        let up = |v: &[i32]| self.stream.clone_htod(v).map_err(cuda_err("cuMemcpyHtoD(decode ranges)"));
        Ok(Some(DecodeArgs { kernel, start: up(&start)?, len: up(&len)?, pos: up(&pos)?, splits, split_len }))
    }

    /// Split-KV decode with prepared arguments: the decode kernel writes one partial per split,
    /// and a strided N-way merge combines them.
    pub fn decode_with(
        &self,
        args: &DecodeArgs,
        q: &GpuTensor,
        ql: &DeviceLayout,
        k: &GpuTensor,
        v: &GpuTensor,
        kl: &DeviceLayout,
    ) -> Result<Partial<GpuTensor>> {
        let (bq, _tk, nh, nkv, d) = self.check(q, ql.rows, k, v, kl.rows)?;
        let group = nh / nkv;
        let rows = bq * nh;
        let splits = args.splits;
        let mut part_out = self.alloc(GpuDType::F32, &[splits, rows, d])?;
        let mut part_lse = self.alloc(GpuDType::F32, &[splits, rows])?;
        let (name, smem) = match args.kernel {
            DecodeKernel::TensorCore => (format!("decode_mma_d{d}_{}", q.dtype().tag()), decode_mma_smem(d)),
            DecodeKernel::Simt => (format!("decode_d{d}_{}_g{group}", q.dtype().tag()), 0),
        };
        let f = self.kernels.get(&name)?;
        let (bq_i, nh_i, nkv_i, split_i) = (bq as i32, nh as i32, nkv as i32, args.split_len as i32);
        let scale = self.scale_log2(d);
        let cfg = LaunchConfig {
            grid_dim: (splits as u32, nkv as u32, bq as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(&args.start).arg(&args.len).arg(&args.pos).arg(&kl.pos);
        b.arg(&mut *part_out).arg(&mut *part_lse).arg(&bq_i).arg(&nh_i).arg(&nkv_i).arg(&split_i).arg(&scale);
        // SAFETY: argument types and order match the kernel; every row range lies inside k/v.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch decode"))?;
        if splits == 1 {
            // One split's normalised partial is the result (the merge of one part returns it
            // unchanged): a launch fewer, which a padding-only query block (a decode step's
            // other ranks at batch 1) is nothing but.
            return Ok(Partial {
                out: part_out.into_tensor(GpuDType::F32, vec![bq, nh, d]),
                lse: part_lse.into_tensor(GpuDType::F32, vec![bq, nh]),
            });
        }

        let mut out = self.alloc(GpuDType::F32, &[bq, nh, d])?;
        let mut lse = self.alloc(GpuDType::F32, &[bq, nh])?;
        let f = self.kernels.get("merge_strided_f32")?;
        let (n, rows_l, d_i) = (splits as i32, rows as i64, d as i32);
        let cfg = elementwise(rows * d / 4);
        let mut b = self.stream.launch_builder(f);
        b.arg(&*part_out).arg(&*part_lse).arg(&n).arg(&mut *out).arg(&mut *lse).arg(&rows_l).arg(&d_i);
        // SAFETY: the split partials are `splits` contiguous blocks of `rows x d` and `rows`.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch merge_strided"))?;
        Ok(Partial {
            out: out.into_tensor(GpuDType::F32, vec![bq, nh, d]),
            lse: lse.into_tensor(GpuDType::F32, vec![bq, nh]),
        })
    }

    /// Split-KV decode of a few query rows (one per sequence) against their sequences' keys;
    /// `None` when the layouts or head ratio do not suit the decode kernel. Arguments are
    /// prepared once per pair of layouts and cached.
    pub fn decode(
        &self,
        q: &GpuTensor,
        q_layout: &Layout,
        k: &GpuTensor,
        v: &GpuTensor,
        kv_layout: &Layout,
    ) -> Result<Option<Partial<GpuTensor>>> {
        let ql = self.device_layout(q_layout)?;
        let kl = self.device_layout(kv_layout)?;
        let (_, _, nh, nkv, _) = self.check(q, ql.rows, k, v, kl.rows)?;
        let key = (self.decode_kernel, q_layout.clone(), kv_layout.clone());
        let cached = self.decode_args.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let args = match cached {
            Some(args) => args,
            None => {
                self.refuse_upload_while_capturing("a decode argument")?;
                let Some(args) = self.prepare_decode(&ql, &kl, nh, nkv)? else { return Ok(None) };
                // Shared with clones on other streams only with event tracking on (which orders
                // their launches after these uploads); no host wait here.
                let args = Arc::new(args);
                let mut cache = self.decode_args.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() > 64 && !self.pinning() {
                    cache.clear();
                }
                cache.insert(key, args.clone());
                args
            }
        };
        self.pin(args.clone());
        self.decode_with(&args, q, &ql, k, v, &kl).map(Some)
    }
}

/// Query rows up to which a partial attention takes the split-KV decode kernel whatever the
/// rows hold.
const DECODE_MAX_ROWS: usize = 16;

/// Query rows up to which a batch of one query per sequence (a decode step) takes it.
const DECODE_MAX_BATCH: usize = 4096;

/// Whether the split-KV decode kernel suits these query rows: a few rows, or one row per
/// sequence (a decode batch). The decode kernel reads each row's keys once per row, so many rows
/// of one sequence (a prefill chunk) go to the prefill kernel, which reads them once per block.
pub(super) fn decode_shaped(q_layout: &Layout) -> bool {
    if q_layout.len() <= DECODE_MAX_ROWS {
        return true;
    }
    if q_layout.len() > DECODE_MAX_BATCH {
        return false;
    }
    let mut seen = std::collections::HashSet::new();
    q_layout.rows().flatten().all(|t| seen.insert(t.seq))
}
