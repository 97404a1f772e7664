//! Prefill launches: the fused flash kernels (wgmma on sm_90a, `mma.sync` elsewhere), the
//! split-KV cost model, and the wgmma building blocks' self-test.

use cp_ring::Partial;
use cudarc::driver::sys as cu;
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};

use super::layout::{DeviceLayout, heavy_first_blocks, visible_key_tiles};
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
        /// would not fit their registers. A launch over a packed batch whose 192-row blocks
        /// would straddle more sequence boundaries than 128-row ones takes two
        /// ([`PrefillKernel::for_queries`]).
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
    /// Query rows per thread block (a work item of the persistent kernel) at `head_dim`, for this
    /// kernel as configured (a launch may narrow it: [`PrefillKernel::for_queries`]).
    pub fn block_rows(self, head_dim: usize) -> usize {
        match self {
            PrefillKernel::Tma { wide: true, .. } if head_dim == 64 => 192,
            PrefillKernel::Tma { .. } | PrefillKernel::Wgmma => 128,
            PrefillKernel::Mma { warps, m_tiles } => 16 * warps * m_tiles,
        }
    }

    /// The kernel a launch over the queries of `ql` runs: at head dim 64, the TMA kernel's
    /// 192-row query blocks (`wide`) only where they do not straddle more sequence boundaries of
    /// a packed batch than 128-row blocks would. A block holding rows of two sequences visits the
    /// key tiles of every sequence up to its last position, each under a mask per element
    /// (session 16, H100: four packed sequences of 4096 rows ran at 152 TFLOP/s in 192-row
    /// blocks, two of which straddle, and at 383 in 128-row ones, none; cuDNN 408).
    pub fn for_queries(self, ql: &super::layout::DeviceLayout, head_dim: usize) -> PrefillKernel {
        match self {
            PrefillKernel::Tma { pingpong, schedule, wide: true }
                if head_dim == 64 && ql.wide_blocks_straddle_more() =>
            {
                PrefillKernel::Tma { pingpong, schedule, wide: false }
            }
            other => other,
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
    /// step's partial or a merge pass over it (pass-KV's steps after the first) — except a tail
    /// split's pieces, whose f32 partials `merge_tail` folds in ([`TailMode`]); rows that see
    /// none of these keys keep their running partial as it is. Elsewhere, or with a split key
    /// range, [`CudaAttention::flash`] then [`CudaAttention::merge_into`]. An accumulator of
    /// another shape or dtype is an error.
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
            other => other.for_queries(ql, d),
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
        let splits = self.prefill_splits(kernel, tq, tk, nh, d);
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
            // (query block, head, split) items, heaviest first (a launch takes no more blocks
            // than its range has items or pieces: `launch` below).
            PrefillKernel::Tma { .. } => {
                let items = blocks * nh * splits;
                if items > i32::MAX as usize {
                    return Err(AttentionError::TooLarge {
                        what: "the prefill work items (query blocks x heads x splits)",
                        value: items,
                        max: i32::MAX as usize,
                    });
                }
                (sms.max(1) as u32, 1, 1)
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
        // v6.7 (TMA, one split): the query blocks that see some key come first in the items'
        // numbering (`busy`; a fold skips the others, whose running partial stays as it is), and
        // when those blocks' items are equal, the short last round's items run as pieces of their
        // key range in a launch of their own, merged after it (`TailMode`).
        let (busy, tail) = match tma {
            Some(_) if splits == 1 => self.busy_and_tail(kernel, ql, kl, nh, d)?,
            _ => (blocks, None),
        };
        // Items item_lo..item_hi of the numbering run whole; a tail's come first in it.
        let item_hi = if folds { busy * nh } else { blocks * nh * splits };
        let item_lo = tail.map_or(0, |t| t.items);
        let busy_i = busy as i32;
        let no_counter = 0u64;
        // One launch of the kernel `name` over `items` (the TMA kernels; the others take `grid`).
        let launch =
            |name: &str, out: &mut CudaSlice<u8>, lse: &mut CudaSlice<u8>, items: &ItemRange<'_>| -> Result<()> {
                let f = self.kernels.get(name)?;
                let mut b = self.stream.launch_builder(f);
                if let Some(([qm, km, vm], _, _)) = &tma {
                    b.arg(qm).arg(km).arg(vm);
                }
                b.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(out).arg(lse);
                b.arg(&ql.seq).arg(&ql.pos).arg(&kl.seq).arg(&kl.pos).arg(&ql.tiles).arg(&kl.tiles);
                let grid = match &tma {
                    Some((_, (_, order), _)) => {
                        b.arg(order);
                        match items.counter {
                            Some(counter) => b.arg(&**counter),
                            None => b.arg(&no_counter),
                        };
                        b.arg(&items.mode);
                        (items.runs.min(grid.0 as usize).max(1) as u32, 1, 1)
                    }
                    None => grid,
                };
                b.arg(&tq_i).arg(&tk_i).arg(&nh_i).arg(&nkv_i).arg(&scale);
                if tma.is_some() {
                    b.arg(&items.splits);
                }
                b.arg(&items.split_tiles);
                if tma.is_some() {
                    b.arg(&items.lo).arg(&items.hi).arg(&busy_i);
                }
                let cfg =
                    LaunchConfig { grid_dim: grid, block_dim: (threads as u32, 1, 1), shared_mem_bytes: smem as u32 };
                // SAFETY: argument types and order match the kernel (the TMA kernels take the three
                // tensor maps first, describing the q, k and v buffers passed after them; after the
                // tile summaries the query blocks' order, the zeroed item counter — null, and never
                // read, when the launch does not claim — and the mode (claim, order); the split count
                // before the split length; then the range of items to run and the busy query blocks,
                // a prefix of the order); `out` and `lse` hold one [tq, nh, d] / [tq, nh] partial per
                // split, or for a tail launch (`_tail_`) one [block rows, d] / [block rows] partial
                // per piece; the grid covers every query row and key tile (the TMA kernels' blocks
                // take every item or piece of their range: the items before the main launch's are
                // the tail's, and after it only those of query blocks that see no key, when
                // folding), and the dynamic shared memory is set. A folding launch (`_acc_`, one
                // split) reads and writes `out` and `lse` in place, this handle's own buffers of the
                // running partial of exactly these rows, each (row, head) by one item.
                unsafe { b.launch(cfg) }.map_err(cuda_err("launch flash_fwd"))?;
                Ok(())
            };
        if let (Some(t), Some((_, (_, order), _))) = (tail, &tma) {
            // The tail's pieces (dealt: they are equal), then their merge into the output.
            let rows = kernel.block_rows(d);
            let mut parts = self.alloc(GpuDType::F32, &[t.items * t.pieces, rows, d])?;
            let mut part_lse = self.alloc(GpuDType::F32, &[t.items * t.pieces, rows])?;
            let pieces = ItemRange {
                lo: 0,
                hi: t.items as i32,
                runs: t.items * t.pieces,
                splits: t.pieces as i32,
                split_tiles: t.tiles as i32,
                mode: mode & 2,
                counter: None,
            };
            let tail_name =
                name.replacen(if folds { "_acc_" } else { "_f32_" }, "_tail_", 1).replacen("_b16_", "_tail_", 1);
            launch(&tail_name, &mut parts, &mut part_lse, &pieces)?;
            let f = self.kernels.get(&format!("merge_tail_{}", if folds { "acc" } else { out_dtype.tag() }))?;
            let (pieces_i, rows_i, n_tail_i, d_i, kv_major_i) =
                (t.pieces as i32, rows as i32, t.items as i32, d as i32, i32::from(kv_major));
            let mut b = self.stream.launch_builder(f);
            b.arg(&*parts).arg(&*part_lse).arg(&pieces_i).arg(&rows_i).arg(&n_tail_i);
            b.arg(&mut *out).arg(&mut *lse).arg(&tq_i).arg(&nh_i).arg(&d_i);
            b.arg(order).arg(&busy_i).arg(&kv_major_i).arg(&nkv_i);
            // SAFETY: `parts` and `part_lse` hold `n_tail * pieces` f32 partials of `rows` rows
            // (the launch above wrote them, item t's pieces at t * pieces..); the kernel decodes
            // each tail item's query block (through `order`, that launch's) and head as the prefill
            // kernel numbered them, and writes (or, folding, merges in place) its rows below `tq`
            // of `out` [tq, nh, d] in the output dtype (f32 when folding) and `lse` [tq, nh].
            unsafe { b.launch(elementwise(t.items * rows * d / 4)) }.map_err(cuda_err("launch merge_tail"))?;
        }
        let main = ItemRange {
            lo: item_lo as i32,
            hi: item_hi as i32,
            runs: item_hi - item_lo,
            splits: splits_i,
            split_tiles,
            mode,
            counter: tma.as_ref().and_then(|(_, _, counter)| counter.as_ref()),
        };
        if item_hi == item_lo {
            // Nothing else to run (a fold whose queries see none of these keys, or all in the tail).
            return Ok(Partial {
                out: out.into_tensor(out_dtype, vec![tq, nh, d]),
                lse: lse.into_tensor(GpuDType::F32, vec![tq, nh]),
            });
        }
        if splits == 1 {
            launch(&name, &mut out, &mut lse, &main)?;
        } else {
            // Flash-decoding for prefill: each split writes an f32 partial over its key tiles,
            // and one strided N-way merge combines them into the output dtype.
            let f32_name = name.replacen("_b16_", "_f32_", 1);
            let mut part_out = self.alloc(GpuDType::F32, &[splits, tq, nh, d])?;
            let mut part_lse = self.alloc(GpuDType::F32, &[splits, tq, nh])?;
            launch(&f32_name, &mut part_out, &mut part_lse, &main)?;
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

    /// How many splits of its key range a prefill launch of `kernel` over `tq` query and `tk` key
    /// rows with `n_heads` query heads of `head_dim` takes on this handle: [`kv_splits`] over
    /// its multiprocessors ([`CudaAttention::prefill_sms`]) when `split_kv` is on, else 1.
    pub fn prefill_splits(
        &self,
        kernel: PrefillKernel,
        tq: usize,
        tk: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> usize {
        if !self.split_kv {
            return 1;
        }
        let blocks = tq.div_ceil(kernel.block_rows(head_dim)) * n_heads;
        kv_splits(blocks, tk.div_ceil(kernel.key_tile()), self.prefill_sms(kernel))
    }

    /// The query blocks of `block_rows` rows (128 or 192) of `ql` heaviest first, on the host and
    /// on the device (computed once per layout and block size).
    fn block_order<'a>(&self, ql: &'a DeviceLayout, block_rows: usize) -> Result<&'a (Vec<i32>, CudaSlice<i32>)> {
        let cell = &ql.block_order[usize::from(block_rows == 192)];
        if let Some(order) = cell.get() {
            return Ok(order);
        }
        self.refuse_upload_while_capturing("a query block order")?;
        let tiles_per_block = block_rows / super::layout::TILE;
        let order = heavy_first_blocks(&ql.summaries, tiles_per_block);
        let uploaded = self.stream.clone_htod(&order).map_err(cuda_err("cuMemcpyHtoD(block order)"))?;
        Ok(cell.get_or_init(|| (order, uploaded)))
    }

    /// For a launch of the TMA `kernel` over one split: how many query blocks see some key and
    /// come first in the items' numbering (else all count), and the tail split it runs, if any
    /// (v6.7; see [`TailMode`], [`tail_plan`]).
    fn busy_and_tail(
        &self,
        kernel: PrefillKernel,
        ql: &DeviceLayout,
        kl: &DeviceLayout,
        nh: usize,
        d: usize,
    ) -> Result<(usize, Option<TailPlan>)> {
        let rows = kernel.block_rows(d);
        let (order, _) = self.block_order(ql, rows)?;
        let (busy, tiles) = busy_blocks(&ql.summaries, &kl.summaries, order, rows, kernel.key_tile());
        let tail = tiles.and_then(|tiles| tail_plan(busy * nh, self.prefill_sms(kernel), tiles, self.tail_mode));
        Ok((busy, tail))
    }

    /// The prefill kernel a launch over the queries of `q_layout` at `head_dim` runs on this
    /// handle's settings ([`PrefillKernel::for_queries`]: at head dim 64, 128-row blocks where
    /// 192-row ones would straddle more sequence boundaries), as reports name it.
    pub fn prefill_kernel_for(&self, q_layout: &cp_shard::Layout, head_dim: usize) -> Result<PrefillKernel> {
        let ql = self.device_layout(q_layout)?;
        Ok(self.prefill.for_queries(&ql, head_dim))
    }

    /// The tail split (v6.7) a prefill of `q_layout` against `kv_layout` with `n_heads` query
    /// heads of `head_dim` runs on this handle's settings (the TMA kernel over one split only):
    /// what a check reports beside its case.
    pub fn prefill_tail(
        &self,
        q_layout: &cp_shard::Layout,
        kv_layout: &cp_shard::Layout,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<Option<TailPlan>> {
        let (tq, tk) = (q_layout.len(), kv_layout.len());
        if !matches!(self.prefill, PrefillKernel::Tma { .. }) || tq == 0 || tk == 0 || !self.kernels.wgmma {
            return Ok(None);
        }
        let (ql, kl) = (self.device_layout(q_layout)?, self.device_layout(kv_layout)?);
        let kernel = self.prefill.for_queries(&ql, head_dim);
        if self.prefill_splits(kernel, tq, tk, n_heads, head_dim) > 1 {
            return Ok(None);
        }
        Ok(self.busy_and_tail(kernel, &ql, &kl, n_heads, head_dim)?.1)
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

/// A TMA launch's share of the work items: items `lo..hi` of the numbering (`tma_item_coords` in
/// the kernel), each whole, or in `splits` pieces of `split_tiles` key tiles for a tail launch;
/// `runs` of them (items or pieces) for the grid to walk.
struct ItemRange<'a> {
    lo: i32,
    hi: i32,
    runs: usize,
    splits: i32,
    split_tiles: i32,
    /// The kernel's mode (bit 0 claims from `counter`, bit 1 numbers KV head first).
    mode: i32,
    counter: Option<&'a super::tensor::DeviceBuffer>,
}

/// Whether a TMA launch whose busy query blocks' items are equal runs the items of its short
/// last round as pieces of their key range (v6.7's tail split; [`CudaAttention::tail_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailMode {
    /// Never.
    Off,
    /// Where the cost model says it gains 0.5% or more ([`tail_plan`]).
    Auto,
    /// Whenever the last round is short and the items have two key tiles or more, however
    /// little it gains (for the checks: small launches on a few multiprocessors).
    Always,
}

/// The tail split of a launch: its first `items` items (in the numbering; any of equal items)
/// run as `pieces` pieces of `tiles` visible key tiles each (the last piece the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailPlan {
    /// Items cut into pieces.
    pub items: usize,
    /// Pieces per item.
    pub pieces: usize,
    /// Key tiles per piece.
    pub tiles: usize,
}

/// Whether and how to cut the short last round of `items` equal work items of `key_tiles`
/// visible key tiles each on a persistent grid of `grid` blocks: with r items in the last round,
/// each is cut into pieces of its visible key tiles (at most grid / r of them, at least 2 tiles
/// each; the kernel counts the tiles as it walks them, the last piece takes what remains) that run in a
/// launch of their own before the others, whose partials a merge combines. Counted in tile
/// times (~1.8 µs on an H100 at head dim 128), with 2 per item or piece for its prologue and
/// epilogue and 8 for the second launch and the merge; taken for a gain of 0.5% or more (a
/// ring step at 128K on 4 ranks gains 1.4–3%). None when the rounds are full, when there is
/// only one (`kv_splits` splits those), or when pieces would be too short. [`TailMode::Always`]
/// cuts any short last round into at least 2 pieces of at least one tile.
pub fn tail_plan(items: usize, grid: usize, key_tiles: usize, mode: TailMode) -> Option<TailPlan> {
    let r = items.checked_rem(grid)?;
    if mode == TailMode::Off || r == 0 || key_tiles < 2 {
        return None;
    }
    let plan = |pieces_wanted: usize| {
        let tiles = key_tiles.div_ceil(pieces_wanted);
        TailPlan { items: r, pieces: key_tiles.div_ceil(tiles), tiles }
    };
    if mode == TailMode::Always {
        return Some(plan((grid / r).clamp(2, key_tiles)));
    }
    let pieces_wanted = (grid / r).min(key_tiles / 2);
    if items < grid || pieces_wanted < 2 {
        return None;
    }
    let t = plan(pieces_wanted);
    let rounds = (items / grid) as f64;
    let whole = (rounds + 1.0) * (key_tiles as f64 + 2.0);
    let cut = rounds * (key_tiles as f64 + 2.0) + t.tiles as f64 + 2.0 + 8.0;
    (cut <= 0.995 * whole).then_some(t)
}

/// For a TMA launch of query blocks of `block_rows` rows (64-row tile summaries `q_summaries`,
/// in the heavy-first `order`) over key tiles of `key_tile` rows (`k_summaries`): how many
/// blocks see some key, when they are the first of `order` (else every block counts), and the
/// number of key tiles each sees if that number is the same for all of them (and not 0).
fn busy_blocks(
    q_summaries: &[i32],
    k_summaries: &[i32],
    order: &[i32],
    block_rows: usize,
    key_tile: usize,
) -> (usize, Option<usize>) {
    let tile = super::layout::TILE;
    let work = visible_key_tiles(q_summaries, block_rows / tile, k_summaries, key_tile / tile);
    let busy = order.iter().take_while(|&&b| work[b as usize] > 0).count();
    if order[busy..].iter().any(|&b| work[b as usize] > 0) {
        return (order.len(), None);
    }
    let equal = order
        .first()
        .map(|&b| work[b as usize])
        .filter(|&w| w > 0 && order[..busy].iter().all(|&b| work[b as usize] == w));
    (busy, equal)
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
    use super::{ItemSchedule, TailMode, TailPlan, TensorMap, busy_blocks, kv_splits, tail_plan};
    use crate::AttentionError;
    use crate::cuda::GpuDType;
    use crate::cuda::layout::{TILE, heavy_first_blocks, tile_summaries_of_runs};
    use cp_shard::{Layout, PrefillShards};

    #[test]
    fn only_a_short_last_round_of_long_items_is_cut() {
        let auto = |items, grid, tiles| tail_plan(items, grid, tiles, TailMode::Auto);
        // 16K x 16K off-diagonal, 32 heads: 4096 items of 128 tiles on 132 blocks, 31 full rounds
        // and 4 items: those 4 in 32 pieces of 4 tiles (128 pieces for 132 blocks).
        assert_eq!(auto(4096, 132, 128), Some(TailPlan { items: 4, pieces: 32, tiles: 4 }));
        // A ring step at 128K on 4 ranks: 4096 items of 256 tiles, or 8192 of 128 (62 rounds + 8).
        assert_eq!(auto(4096, 132, 256), Some(TailPlan { items: 4, pieces: 32, tiles: 8 }));
        assert_eq!(auto(8192, 132, 128), Some(TailPlan { items: 8, pieces: 16, tiles: 8 }));
        // The pieces of a cut fit one round and cover the key range.
        for (items, grid, tiles) in [(4096, 132, 128), (1000, 132, 256), (8300, 132, 64), (500, 100, 40)] {
            if let Some(t) = auto(items, grid, tiles) {
                assert!(t.items * t.pieces <= grid && (items - t.items) % grid == 0, "{items} {t:?}");
                assert!(
                    t.pieces >= 2 && t.tiles >= 2 && t.pieces * t.tiles >= tiles && (t.pieces - 1) * t.tiles < tiles
                );
            }
        }
        // Full rounds, a single round, short items, a nearly full last round, very many rounds
        // (the tail a small share), no grid, or off: not cut.
        assert_eq!(auto(4224, 132, 128), None);
        assert_eq!(auto(100, 132, 128), None);
        assert_eq!(auto(4096, 132, 3), None);
        assert_eq!(auto(4096 + 127, 132, 128), None);
        assert_eq!(auto(132 * 300 + 4, 132, 128), None);
        assert_eq!(auto(10, 0, 128), None);
        assert_eq!(tail_plan(4096, 132, 128, TailMode::Off), None);
        // Always: any short last round, in at least 2 pieces of at least a tile.
        assert_eq!(tail_plan(8, 3, 3, TailMode::Always), Some(TailPlan { items: 2, pieces: 2, tiles: 2 }));
        assert_eq!(tail_plan(16, 3, 3, TailMode::Always), Some(TailPlan { items: 1, pieces: 3, tiles: 1 }));
        assert_eq!(tail_plan(8, 132, 2, TailMode::Always), Some(TailPlan { items: 8, pieces: 2, tiles: 1 }));
        assert_eq!(tail_plan(8, 132, 1, TailMode::Always), None);
        assert_eq!(tail_plan(9, 3, 5, TailMode::Always), None);
    }

    #[test]
    fn busy_blocks_are_those_seeing_keys_first_in_the_order() {
        let busy = |q: &Layout, k: &Layout, rows: usize| {
            let qs = tile_summaries_of_runs(q, TILE);
            let order = heavy_first_blocks(&qs, rows / TILE);
            busy_blocks(&qs, &tile_summaries_of_runs(k, TILE), &order, rows, 128)
        };
        let run = |seq, start, len| Layout::from_runs(&[(Some(seq), start, len)]);
        // A 128K ring step on 4 ranks: rank 0 (chunks 0 and 7 of 16K) against rank 1's keys
        // (chunks 1 and 6): chunk 0's 128 blocks see nothing, chunk 7's see all 256 key tiles.
        let shards = PrefillShards::new(4, 0, 131_072).unwrap();
        let (q, k) = (shards.q_layout(0, 0).unwrap(), shards.q_layout(0, 1).unwrap());
        assert_eq!(busy(&q, &k, 128), (128, Some(256)));
        // Rank 1 against rank 0's keys: every block sees one chunk (128 tiles).
        assert_eq!(busy(&k, &q, 128), (256, Some(128)));
        // The causal diagonal: all busy, unequal.
        assert_eq!(busy(&q, &q, 128), (256, None));
        // An off-diagonal block: all busy, equal (3 tiles: 260 keys).
        assert_eq!(busy(&run(0, 300, 200), &run(0, 0, 260), 128), (2, Some(3)));
        // Nothing visible at all.
        assert_eq!(busy(&run(0, 0, 200), &run(0, 300, 100), 128), (0, None));
        // A block of another sequence seeing nothing ahead of a busy one in the order (its
        // positions are later): all count.
        let packed = Layout::from_runs(&[(Some(1), 500, 128), (Some(0), 0, 128)]);
        assert_eq!(busy(&packed, &run(0, 0, 128), 128), (2, None));
        // Behind it: the busy one first.
        let packed = Layout::from_runs(&[(Some(1), 0, 128), (Some(0), 0, 128)]);
        assert_eq!(busy(&packed, &run(0, 0, 128), 128), (1, Some(1)));
    }

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
