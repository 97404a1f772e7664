//! Prefill launches: the fused flash kernels (wgmma on sm_90a, `mma.sync` elsewhere), the
//! split-KV cost model, and the wgmma building blocks' self-test.

use cp_ring::Partial;
use cudarc::driver::sys as cu;
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};

use super::layout::{DeviceLayout, heavy_first_blocks, tile_summaries_of_runs};
use super::merge::elementwise;
use super::ops::CudaAttention;
use super::table::{FLASH_VARIANTS, flash_smem, flash_tma_smem, flash_wg_smem};
use super::{GpuDType, GpuTensor, cuda_err};
use crate::{AttentionError, Result};

/// Which prefill (and off-diagonal) kernel [`CudaAttention::flash`] launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillKernel {
    /// Hopper, warp-specialised (sm_90a only): a producer warpgroup brings Q, K and V in with
    /// TMA bulk tensor copies into a 3-stage ring guarded by mbarriers and scrubs tiles with
    /// masked pairs; two consumer warpgroups of 64 query rows (three at head dim 64 when
    /// `wide`; registers moved to them with `setmaxnreg`) run the wgmma products and the
    /// softmax, optionally (`pingpong`) taking turns at the tensor cores. A persistent grid
    /// (one block per multiprocessor) walks the (query block, head, split) items heaviest
    /// first, loading the next item's Q and tiles under the current one's last products and
    /// epilogue. Inputs the copy engine cannot describe (no keys) run on
    /// [`PrefillKernel::Wgmma`]. The default on sm_90a: no ping-pong, [`ItemSchedule::ByKvHead`],
    /// wide (the ping-pong is faster on one GPU's long causal launches, slower on the ring's
    /// steps: `docs/perf-notes.md`, v5.7).
    Tma {
        /// The consumer warpgroups take turns issuing their products (named barriers).
        pingpong: bool,
        /// How the persistent blocks share the work items.
        schedule: ItemSchedule,
        /// At head dim 64, three consumer warpgroups and 192-row query blocks (as
        /// FlashAttention-3 there: a warpgroup's products are half as long as at 128, so two
        /// warpgroups leave the tensor cores waiting). Head dim 128 always takes two: three
        /// would not fit their registers.
        wide: bool,
    },
    /// Hopper's warpgroup MMA (`wgmma`, sm_90a only): two warpgroups of 64 query rows sharing
    /// 128-key tiles from a 3-stage ring, the softmax of one tile overlapping the P V product of
    /// the previous one; every thread loads and computes.
    Wgmma,
    /// `mma.sync` (sm_80 and newer): `warps` warps (4 or 8) of `m_tiles` 16-row m-tiles (1, or 2
    /// with 4 warps: FlashAttention-2's layout).
    Mma {
        /// Warps per block.
        warps: usize,
        /// 16-row m-tiles per warp.
        m_tiles: usize,
    },
}

/// How the TMA kernel's persistent blocks (one per multiprocessor) share the work items, which
/// are numbered heaviest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemSchedule {
    /// Dealt in a fixed zigzag: block b takes items b + rG in even rounds r and (G − 1 − b) + rG
    /// in odd ones, so each block's share of a declining sequence is about equal.
    Zigzag,
    /// Claimed from a global counter as blocks finish: a block whose items ran long takes fewer.
    Claimed,
    /// Claimed over long key ranges (at least 256 key tiles: 32K keys), zigzag below: on an
    /// H100 (session 6, same call) claiming was 5% faster at causal 128K and 1.4% at 64K, and
    /// 10% slower at causal 16K. With v5.9 (session 9, two benches) claiming is within 2% of the
    /// default at every size, either way — inside the spread of identical launches.
    ByKeyRange,
    /// Claimed, with the items numbered KV head first: each KV head's items (its query blocks
    /// heaviest first, the query heads sharing it adjacent) before the next KV head's, so the
    /// blocks running at once read one KV head's keys, which stay in L2 across rounds of items
    /// (numbered by query block, each round streams every KV head's keys from memory). Session
    /// 12 on an H100, sustained, against `ByKeyRange` in the same build: +1.2% (causal 16K) to
    /// +4.2% (4K batch 4) at head dim 128, −0.8% at 64; the same cycles at a locked clock, 7.5–10×
    /// less DRAM read, so the card holds a 30–45 MHz higher clock under its power limit.
    ByKvHead,
}

impl ItemSchedule {
    fn claims(self, key_tiles: usize) -> bool {
        match self {
            ItemSchedule::Zigzag => false,
            ItemSchedule::Claimed | ItemSchedule::ByKvHead => true,
            ItemSchedule::ByKeyRange => key_tiles >= 256,
        }
    }
}

impl PrefillKernel {
    /// Query rows per thread block (a work item of the persistent kernel) at `head_dim`.
    pub fn block_rows(self, head_dim: usize) -> usize {
        match self {
            PrefillKernel::Tma { wide: true, .. } if head_dim == 64 => 192,
            PrefillKernel::Tma { .. } | PrefillKernel::Wgmma => 128,
            PrefillKernel::Mma { warps, m_tiles } => 16 * warps * m_tiles,
        }
    }

    /// Keys per key tile (the unit of the split-KV ranges).
    pub fn key_tile(self) -> usize {
        match self {
            PrefillKernel::Tma { .. } | PrefillKernel::Wgmma => 128,
            PrefillKernel::Mma { .. } => super::layout::TILE,
        }
    }
}

impl std::fmt::Display for PrefillKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrefillKernel::Tma { pingpong, schedule, wide } => write!(
                f,
                "tma+wgmma{}{}{}",
                if *pingpong { " ping-pong" } else { "" },
                if *wide { " wide at D=64" } else { "" },
                match schedule {
                    ItemSchedule::Zigzag => " zigzag",
                    ItemSchedule::Claimed => " claimed",
                    ItemSchedule::ByKeyRange => " by key range",
                    ItemSchedule::ByKvHead => "",
                }
            ),
            PrefillKernel::Wgmma => write!(f, "wgmma 2x64 rows"),
            PrefillKernel::Mma { warps, m_tiles } => write!(f, "mma.sync {warps}w x {m_tiles}m"),
        }
    }
}

impl CudaAttention {
    /// The fused prefill kernel: attention of `q` against `k`, `v` with O in `out_dtype`
    /// (f32 or the input dtype) and LSE in f32.
    pub fn flash(
        &self,
        q: &GpuTensor,
        ql: &DeviceLayout,
        k: &GpuTensor,
        v: &GpuTensor,
        kl: &DeviceLayout,
        out_dtype: GpuDType,
    ) -> Result<Partial<GpuTensor>> {
        self.flash_impl(q, ql, k, v, kl, out_dtype, None)
    }

    /// The attention of `q` against `k`, `v` folded into `acc`, the running f32 partial of the
    /// same queries (Eq. 4): on the TMA kernel in its epilogue, in place, without writing the
    /// step's partial or a merge pass over it (pass-KV's steps after the first); elsewhere, or
    /// with a split key range, [`CudaAttention::flash`] then [`CudaAttention::merge_into`]. An
    /// accumulator of another shape or dtype is an error.
    pub fn flash_into(
        &self,
        acc: Partial<GpuTensor>,
        q: &GpuTensor,
        ql: &DeviceLayout,
        k: &GpuTensor,
        v: &GpuTensor,
        kl: &DeviceLayout,
    ) -> Result<Partial<GpuTensor>> {
        self.flash_impl(q, ql, k, v, kl, GpuDType::F32, Some(acc))
    }

    #[allow(clippy::too_many_arguments)]
    fn flash_impl(
        &self,
        q: &GpuTensor,
        ql: &DeviceLayout,
        k: &GpuTensor,
        v: &GpuTensor,
        kl: &DeviceLayout,
        out_dtype: GpuDType,
        into: Option<Partial<GpuTensor>>,
    ) -> Result<Partial<GpuTensor>> {
        let (tq, tk, nh, nkv, d) = self.check(q, ql.rows, k, v, kl.rows)?;
        // A running partial to fold into: f32 O and LSE of exactly these rows, refused before
        // any work.
        if let Some(acc) = &into
            && (acc.out.dtype() != GpuDType::F32
                || acc.lse.dtype() != GpuDType::F32
                || acc.out.shape() != [tq, nh, d]
                || acc.lse.shape() != [tq, nh])
        {
            return Err(AttentionError::Shape {
                what: "running partial to fold into (out, lse)",
                expected: format!("f32 [{tq}, {nh}, {d}] and [{tq}, {nh}]"),
                actual: [acc.out.shape(), acc.lse.shape()].concat(),
            });
        }
        if out_dtype != GpuDType::F32 && out_dtype != q.dtype() {
            return Err(AttentionError::GpuDtype {
                what: "prefill output",
                got: format!("{out_dtype:?} for {:?} inputs", q.dtype()),
                supported: "f32 or the input dtype",
            });
        }
        let out_tag = if out_dtype == GpuDType::F32 { "f32" } else { "b16" };
        let prefix = format!("flash_fwd_d{d}_{}_{out_tag}", q.dtype().tag());
        // The TMA kernel's tensor maps take raw addresses (read only for it: with event tracking
        // each one records an event). The copy engine needs keys to describe and 16-byte aligned
        // tensors (allocations are); otherwise the v4 kernel runs.
        let tma_ptrs = match self.prefill {
            PrefillKernel::Tma { .. } if tk > 0 => {
                let addr = |t: &GpuTensor| t.slice().device_ptr(&self.stream).0;
                Some([addr(q), addr(k), addr(v)]).filter(|ptrs| ptrs.iter().all(|p| p % 16 == 0))
            }
            _ => None,
        };
        let kernel = match self.prefill {
            PrefillKernel::Tma { .. } if tma_ptrs.is_none() => PrefillKernel::Wgmma,
            other => other,
        };
        let (name, threads, smem) = match kernel {
            PrefillKernel::Tma { .. } | PrefillKernel::Wgmma if !self.kernels.wgmma => {
                return Err(AttentionError::KernelMissing { name: format!("{prefix} {kernel} (sm_90a only)") });
            }
            PrefillKernel::Tma { pingpong, .. } => {
                let consumers = kernel.block_rows(d) / 64;
                let name = format!(
                    "{prefix}_tma{}{}",
                    if consumers == 3 { "3" } else { "" },
                    if pingpong { "" } else { "_np" }
                );
                (name, 128 * (consumers + 1), flash_tma_smem(d, kernel.block_rows(d)))
            }
            PrefillKernel::Wgmma => (format!("{prefix}_wg"), 256, flash_wg_smem(d)),
            PrefillKernel::Mma { warps, m_tiles } => {
                let Some(&(_, _, suffix)) = FLASH_VARIANTS.iter().find(|v| v.0 == warps && v.1 == m_tiles) else {
                    return Err(AttentionError::KernelMissing {
                        name: format!("mma.sync prefill with {warps} warps x {m_tiles} m-tiles (have 8x1, 4x1, 4x2)"),
                    });
                };
                (format!("{prefix}_{suffix}"), 32 * warps, flash_smem(d, warps, m_tiles))
            }
        };
        let blocks = tq.div_ceil(kernel.block_rows(d));
        let key_tiles = tk.div_ceil(kernel.key_tile());
        // The persistent kernel runs on the multiprocessors left after the reservation.
        let sms = self.prefill_sms(kernel);
        let splits = if self.split_kv { kv_splits(blocks * nh, key_tiles, sms) } else { 1 };
        // The fold in the epilogue: the TMA kernel over one split (anything else runs the
        // partial and then the merge).
        let fold = match into {
            Some(acc) if matches!(kernel, PrefillKernel::Tma { .. }) && splits == 1 && tq > 0 => Some(acc),
            Some(acc) => {
                let part = self.flash_impl(q, ql, k, v, kl, out_dtype, None)?;
                return self.merge_into(acc, &part);
            }
            None => None,
        };
        let folds = fold.is_some();
        let (mut out, mut lse) = match fold {
            Some(acc) => (self.owned(acc.out)?, self.owned(acc.lse)?),
            None => (self.alloc(out_dtype, &[tq, nh, d])?, self.alloc(GpuDType::F32, &[tq, nh])?),
        };
        let name = if folds { name.replacen("_f32_", "_acc_", 1) } else { name };
        if tq == 0 {
            return Ok(Partial {
                out: out.into_tensor(out_dtype, vec![tq, nh, d]),
                lse: lse.into_tensor(GpuDType::F32, vec![tq, nh]),
            });
        }
        let grid = match kernel {
            // Persistent: at most one block per multiprocessor, each walking its share of the
            // (query block, head, split) items, heaviest first.
            PrefillKernel::Tma { .. } => {
                let items = blocks * nh * splits;
                if items > i32::MAX as usize {
                    return Err(AttentionError::TooLarge {
                        what: "the prefill work items (query blocks x heads x splits)",
                        value: items,
                        max: i32::MAX as usize,
                    });
                }
                (items.min(sms).max(1) as u32, 1, 1)
            }
            // The wgmma kernel takes (heads, query blocks, splits); the mma.sync ones (query
            // blocks, heads, splits).
            _ => {
                let (x, y) = if matches!(kernel, PrefillKernel::Mma { .. }) { (blocks, nh) } else { (nh, blocks) };
                if y > 65_535 {
                    return Err(AttentionError::TooLarge {
                        what: "the prefill grid's second dimension",
                        value: y,
                        max: 65_535,
                    });
                }
                if x > i32::MAX as usize {
                    return Err(AttentionError::TooLarge {
                        what: "the prefill grid's first dimension",
                        value: x,
                        max: i32::MAX as usize,
                    });
                }
                (x as u32, y as u32, splits as u32)
            }
        };
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (threads as u32, 1, 1), shared_mem_bytes: smem as u32 };
        let (tq_i, tk_i, nh_i, nkv_i, splits_i) = (tq as i32, tk as i32, nh as i32, nkv as i32, splits as i32);
        let claims = matches!(kernel, PrefillKernel::Tma { schedule, .. } if schedule.claims(key_tiles));
        let kv_major = matches!(kernel, PrefillKernel::Tma { schedule: ItemSchedule::ByKvHead, .. });
        // The kernel's `mode`: bit 0 claims items, bit 1 numbers them KV head first.
        let mode = i32::from(claims) | i32::from(kv_major) << 1;
        let split_tiles = key_tiles.div_ceil(splits).max(1) as i32;
        let scale = self.scale_log2(d);
        let tma = match (kernel, tma_ptrs) {
            (PrefillKernel::Tma { .. }, Some([q_ptr, k_ptr, v_ptr])) => Some((
                [
                    TensorMap::rows(q_ptr, q.dtype(), tq, nh, d, kernel.block_rows(d))?,
                    TensorMap::rows(k_ptr, q.dtype(), tk, nkv, d, kernel.key_tile())?,
                    TensorMap::rows(v_ptr, q.dtype(), tk, nkv, d, kernel.key_tile())?,
                ],
                self.block_order(ql, kernel.block_rows(d))?,
                // Only a claiming launch reads the counter; a dealt one gets a null pointer.
                if claims { Some(self.item_counter()?) } else { None },
            )),
            _ => None,
        };
        let no_counter = 0u64;
        let launch = |name: &str, out: &mut CudaSlice<u8>, lse: &mut CudaSlice<u8>| -> Result<()> {
            let f = self.kernels.get(name)?;
            let mut b = self.stream.launch_builder(f);
            if let Some(([qm, km, vm], _, _)) = &tma {
                b.arg(qm).arg(km).arg(vm);
            }
            b.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(out).arg(lse);
            b.arg(&ql.seq).arg(&ql.pos).arg(&kl.seq).arg(&kl.pos).arg(&ql.tiles).arg(&kl.tiles);
            if let Some((_, order, counter)) = &tma {
                b.arg(*order);
                match counter {
                    Some(counter) => b.arg(&**counter),
                    None => b.arg(&no_counter),
                };
                b.arg(&mode);
            }
            b.arg(&tq_i).arg(&tk_i).arg(&nh_i).arg(&nkv_i).arg(&scale);
            if tma.is_some() {
                b.arg(&splits_i);
            }
            b.arg(&split_tiles);
            // SAFETY: argument types and order match the kernel (the TMA kernels take the three
            // tensor maps first, describing the q, k and v buffers passed after them; after the
            // tile summaries the query blocks' order, the zeroed item counter — null, and never
            // read, when the launch does not claim — and the mode (claim, order); the split count before
            // the split length); `out` and `lse` hold one [tq, nh, d] / [tq, nh] partial per
            // split; the grid covers every query row and key tile (the TMA kernels' blocks take
            // every (query block, head, split) item), and the dynamic shared memory is set. A
            // folding launch (`_acc_`, one split) reads and writes `out` and `lse` in place, this
            // handle's own buffers of the running partial of exactly these rows, each (row, head)
            // by one item.
            unsafe { b.launch(cfg) }.map_err(cuda_err("launch flash_fwd"))?;
            Ok(())
        };
        if splits == 1 {
            launch(&name, &mut out, &mut lse)?;
        } else {
            // Flash-decoding for prefill: each split writes an f32 partial over its key tiles,
            // and one strided N-way merge combines them into the output dtype.
            let f32_name = name.replacen("_b16_", "_f32_", 1);
            let mut part_out = self.alloc(GpuDType::F32, &[splits, tq, nh, d])?;
            let mut part_lse = self.alloc(GpuDType::F32, &[splits, tq, nh])?;
            launch(&f32_name, &mut part_out, &mut part_lse)?;
            let f = self.kernels.get(&format!("merge_strided_{}", out_dtype.tag()))?;
            let (n, rows_l, d_i) = (splits as i32, (tq * nh) as i64, d as i32);
            let mut b = self.stream.launch_builder(f);
            b.arg(&*part_out).arg(&*part_lse).arg(&n).arg(&mut *out).arg(&mut *lse).arg(&rows_l).arg(&d_i);
            // SAFETY: `splits` contiguous partials of `tq * nh` rows of `d` f32 and their LSEs;
            // `out` holds `tq * nh * d` elements of `out_dtype`, `lse` `tq * nh` f32.
            unsafe { b.launch(elementwise(tq * nh * d / 4)) }.map_err(cuda_err("launch merge_strided"))?;
        }
        Ok(Partial {
            out: out.into_tensor(out_dtype, vec![tq, nh, d]),
            lse: lse.into_tensor(GpuDType::F32, vec![tq, nh]),
        })
    }

    /// The multiprocessors a prefill launch of `kernel` spreads over (and splits its key range
    /// for): the persistent TMA kernel runs on those not reserved ([`CudaAttention::reserve_sms`]),
    /// the others on all.
    pub fn prefill_sms(&self, kernel: PrefillKernel) -> usize {
        if matches!(kernel, PrefillKernel::Tma { .. }) { self.sm_count - self.reserved_sms } else { self.sm_count }
    }

    /// The query blocks of `block_rows` rows (128 or 192) of `ql` heaviest first, on the device
    /// (computed once per layout and block size).
    fn block_order<'a>(&self, ql: &'a DeviceLayout, block_rows: usize) -> Result<&'a CudaSlice<i32>> {
        let cell = &ql.block_order[usize::from(block_rows == 192)];
        if let Some(order) = cell.get() {
            return Ok(order);
        }
        self.refuse_upload_while_capturing("a query block order")?;
        let tiles_per_block = block_rows / super::layout::TILE;
        let order = heavy_first_blocks(&tile_summaries_of_runs(&ql.layout, super::layout::TILE), tiles_per_block);
        let uploaded = self.stream.clone_htod(&order).map_err(cuda_err("cuMemcpyHtoD(block order)"))?;
        Ok(cell.get_or_init(|| uploaded))
    }

    /// A zeroed 32-bit counter on this stream: the TMA kernel's next unclaimed work item.
    fn item_counter(&self) -> Result<super::tensor::DeviceBuffer> {
        let mut counter = self.alloc(GpuDType::F32, &[1])?;
        self.stream.memset_zeros(&mut *counter).map_err(cuda_err("cuMemsetD8Async(item counter)"))?;
        Ok(counter)
    }

    /// The wgmma building blocks alone, for diagnosing a layout fault on a new device or
    /// toolchain: for bf16 `q` [64, 128], `k` and `v` [128, 128] (row-major), one warpgroup
    /// computes S = Q K^T and O = bf16(S) V with the prefill kernel's shared-memory layouts,
    /// descriptors and fragment packing; returns (S, O) in f32.
    pub fn wgmma_selftest(&self, q: &GpuTensor, k: &GpuTensor, v: &GpuTensor) -> Result<(GpuTensor, GpuTensor)> {
        if !self.kernels.wgmma {
            return Err(AttentionError::KernelMissing { name: "wg_selftest (wgmma: sm_90a only)".into() });
        }
        for (what, t, rows) in [("q", q, 64), ("k", k, 128), ("v", v, 128)] {
            if t.shape() != [rows, 128] || t.dtype() != GpuDType::Bf16 {
                return Err(AttentionError::Shape {
                    what,
                    expected: format!("[{rows}, 128] bf16"),
                    actual: t.shape().to_vec(),
                });
            }
        }
        let mut s_out = self.alloc(GpuDType::F32, &[64, 128])?;
        let mut o_out = self.alloc(GpuDType::F32, &[64, 128])?;
        let f = self.kernels.get("wg_selftest")?;
        let cfg =
            LaunchConfig { grid_dim: (1, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: flash_wg_smem(128) as u32 };
        let mut b = self.stream.launch_builder(f);
        b.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(&mut *s_out).arg(&mut *o_out);
        // SAFETY: shapes checked above; the kernel reads 64 + 2 x 128 rows of 128 bf16 and
        // writes 2 x 64 x 128 f32.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch wg_selftest"))?;
        Ok((s_out.into_tensor(GpuDType::F32, vec![64, 128]), o_out.into_tensor(GpuDType::F32, vec![64, 128])))
    }
}

/// A TMA descriptor (the driver's `CUtensorMap`), passed by value to the TMA kernels, whose
/// `TmaMap` parameter has the same 128 bytes.
#[repr(transparent)]
struct TensorMap(cu::CUtensorMap);

// SAFETY: plain bytes, copied into the kernel's parameter space at launch.
unsafe impl DeviceRepr for TensorMap {}

impl TensorMap {
    /// Describes a token-major [rows, heads, head_dim] tensor of 16-bit values at `ptr` as the
    /// 3-D tensor (head_dim, heads, rows) read in boxes of 64 x 1 x `box_rows` (at most 256) with
    /// the 128-byte swizzle: one box is one [box_rows][64] column block of the kernels'
    /// shared-memory tiles. Rows past the end read as zeros.
    fn rows(
        ptr: cu::CUdeviceptr,
        dtype: GpuDType,
        rows: usize,
        heads: usize,
        head_dim: usize,
        box_rows: usize,
    ) -> Result<TensorMap> {
        let data_type = match dtype {
            GpuDType::Bf16 => cu::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            GpuDType::F16 => cu::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            other => {
                return Err(AttentionError::GpuDtype {
                    what: "TMA prefill input",
                    got: format!("{other:?}"),
                    supported: "bf16 or f16",
                });
            }
        };
        let dims = [head_dim as u64, heads as u64, rows as u64];
        let strides = [(head_dim * 2) as u64, (heads * head_dim * 2) as u64];
        let boxes = [64u32, 1, box_rows as u32];
        let element_strides = [1u32; 3];
        let mut map = TensorMap(cu::CUtensorMap { opaque: [0; 16] });
        // SAFETY: every array has the rank's length (strides: rank - 1) and lives across the
        // call; `ptr` is a device allocation of rows x heads x head_dim 16-bit values (the
        // caller's tensor), 16-byte aligned.
        let status = unsafe {
            cu::cuTensorMapEncodeTiled(
                &mut map.0,
                data_type,
                3,
                ptr as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                element_strides.as_ptr(),
                cu::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                cu::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                cu::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                cu::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        status.result().map_err(cuda_err("cuTensorMapEncodeTiled"))?;
        Ok(map)
    }
}

/// How many splits of the key range a prefill launch of `blocks` thread blocks (query blocks x
/// heads) over `key_tiles` key tiles takes (flash-decoding for prefill). With one block per
/// multiprocessor, a launch takes `ceil(blocks * s / sm_count)` waves of `key_tiles / s + 2`
/// tile times each (the 2: a split's pipeline prologue and epilogue); the count `s` (at most 16)
/// that minimises this is taken. It matters for a short query block over a long key range —
/// partial prefill at a low miss rate, pass-Q's travelling queries — which would leave
/// multiprocessors idle, and for a grid whose last wave is nearly empty (2.2 waves run as 3).
/// Causal launches, whose blocks see different numbers of tiles, are rarely split: their long
/// key ranges come with many query blocks.
pub fn kv_splits(blocks: usize, key_tiles: usize, sm_count: usize) -> usize {
    if blocks == 0 || sm_count == 0 || key_tiles < 8 {
        return 1;
    }
    let cost = |s: usize| (blocks * s).div_ceil(sm_count) as f64 * (key_tiles as f64 / s as f64 + 2.0);
    let best = (2..=16.min(key_tiles / 4)).fold(1, |best, s| if cost(s) < cost(best) { s } else { best });
    // Splitting writes and merges f32 partials: only for a gain the model is sure of.
    if cost(best) < 0.95 * cost(1) { best } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::{ItemSchedule, TensorMap, kv_splits};
    use crate::AttentionError;
    use crate::cuda::GpuDType;

    #[test]
    fn items_are_claimed_over_long_key_ranges_only() {
        assert!(!ItemSchedule::ByKeyRange.claims(255));
        assert!(ItemSchedule::ByKeyRange.claims(256));
        assert!(ItemSchedule::Claimed.claims(1));
        assert!(ItemSchedule::ByKvHead.claims(1));
        assert!(!ItemSchedule::Zigzag.claims(1 << 20));
    }

    #[test]
    fn a_tensor_map_takes_16_bit_values_only() {
        // Refused before the driver is asked (no GPU needed).
        let err = TensorMap::rows(0, GpuDType::F32, 128, 8, 128, 128).err().expect("f32 must be refused");
        assert!(matches!(err, AttentionError::GpuDtype { what: "TMA prefill input", .. }), "{err}");
    }

    #[test]
    fn splits_fill_idle_multiprocessors_and_ragged_waves_only() {
        // 320 query rows x 32 heads (96 blocks) over 250 key tiles on 132 SMs: split.
        assert!(kv_splits(96, 250, 132) > 1);
        // 2.2 waves over a long key range: split to fill the last wave.
        assert!(kv_splits(288, 250, 132) > 1);
        // Many waves (a long causal prefill): not split.
        assert_eq!(kv_splits(8192, 256, 132), 1);
        assert_eq!(kv_splits(1024, 32, 132), 1);
        // Too few key tiles to split, and degenerate inputs.
        assert_eq!(kv_splits(4, 7, 132), 1);
        assert_eq!(kv_splits(0, 100, 132), 1);
        assert_eq!(kv_splits(10, 100, 0), 1);
        assert!(kv_splits(1, 1 << 20, 132) <= 16);
    }
}
