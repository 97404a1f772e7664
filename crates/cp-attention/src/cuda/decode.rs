//! Decode launches: the split-KV decode kernels (tensor-core and SIMT), their per-layout
//! arguments, and when a partial attention takes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cp_ring::Partial;
use cp_shard::{Layout, Run};
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};

use super::layout::DeviceLayout;
use super::merge::elementwise;
use super::ops::CudaAttention;
use super::table::decode_mma_smem;
use super::{GpuDType, GpuTensor, cuda_err};
use crate::{AttentionError, Result};

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
    /// Arguments of a captured step ([`CudaAttention::record_decode_bindings`]): the key
    /// positions are their own copy, and every array is rewritten in place for the next token.
    bound: Option<Bound>,
}

/// The private state of bound decode arguments.
#[derive(Debug)]
struct Bound {
    /// The key positions the kernel reads (instead of the key layout's).
    key_pos: CudaSlice<i32>,
    /// What the device arrays hold now (the query rows' arguments, and the key layout whose
    /// positions `key_pos` holds), so a rebind writes only what changed.
    mirror: Mutex<(HostArgs, Layout)>,
}

/// The decode kernel's per-query-row arguments on the host: its sequence's key range and its
/// position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct HostArgs {
    start: Vec<i32>,
    len: Vec<i32>,
    pos: Vec<i32>,
}

impl HostArgs {
    /// The query rows' arguments for `q_layout` against keys whose sequences span `ranges`.
    fn rows(q_layout: &Layout, ranges: &HashMap<usize, (usize, usize)>) -> HostArgs {
        let mut a = HostArgs::default();
        for t in q_layout.rows() {
            let (s, l, p) = match t.and_then(|t| ranges.get(&t.seq).map(|r| (*r, t.pos))) {
                Some(((first, count), p)) => (first as i32, count as i32, p as i32),
                None => (0, 0, 0),
            };
            a.start.push(s);
            a.len.push(l);
            a.pos.push(p);
        }
        a
    }

    /// The longest key range of a query row (at least 1).
    fn max_len(&self) -> usize {
        self.len.iter().copied().max().unwrap_or(0).max(1) as usize
    }
}

/// The key positions of a layout's rows `rows` as the kernels see them (padding rows: 0), as
/// `expand_runs` writes them; walks the runs, not every row.
fn row_positions(layout: &Layout, rows: std::ops::Range<usize>) -> Vec<i32> {
    let mut out = Vec::with_capacity(rows.len());
    let mut first = 0;
    for run in layout.runs() {
        let (lo, hi) = (first.max(rows.start), (first + run.len()).min(rows.end));
        if lo < hi {
            match *run {
                Run::Padding { .. } => out.extend(std::iter::repeat_n(0, hi - lo)),
                Run::Tokens { span, .. } => out.extend((lo - first..hi - first).map(|i| (span.start + i) as i32)),
            }
        }
        first += run.len();
        if first >= rows.end {
            break;
        }
    }
    out
}

/// The ranges of rows whose key position or sequence differs between two layouts of the same
/// rows, in order, found from their runs (a token appended to a region changes one row,
/// whatever the region's size). Ranges closer than `gap` rows are joined (one copy instead of
/// two tiny ones); every range starts and ends on a row that differs.
fn changed_rows(old: &Layout, new: &Layout, gap: usize) -> Vec<std::ops::Range<usize>> {
    // Per run: (first row, rows, Some((seq, first position)) or None for padding).
    let spans = |l: &Layout| {
        let mut first = 0;
        l.runs()
            .iter()
            .map(|r| {
                let key = match *r {
                    Run::Tokens { seq, span } => Some((seq, span.start)),
                    Run::Padding { .. } => None,
                };
                let item = (first, r.len(), key);
                first += r.len();
                item
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (spans(old), spans(new));
    let (mut i, mut j) = (0, 0);
    let mut changed: Vec<std::ops::Range<usize>> = Vec::new();
    // Walk both run lists over their overlapping row segments: a segment is unchanged when both
    // are padding, or tokens of one sequence whose positions agree at its first row.
    while i < a.len() && j < b.len() {
        let ((a0, alen, akey), (b0, blen, bkey)) = (a[i], b[j]);
        let (lo, hi) = (a0.max(b0), (a0 + alen).min(b0 + blen));
        if lo < hi {
            let same = match (akey, bkey) {
                (None, None) => true,
                (Some((sa, pa)), Some((sb, pb))) => sa == sb && pa + (lo - a0) == pb + (lo - b0),
                _ => false,
            };
            if !same {
                // Segments come in increasing row order.
                match changed.last_mut() {
                    Some(last) if lo <= last.end + gap => last.end = hi,
                    _ => changed.push(lo..hi),
                }
            }
        }
        if a0 + alen <= b0 + blen {
            i += 1;
        } else {
            j += 1;
        }
    }
    changed
}

/// `(split_len, splits)` for keys of at most `max_len` rows per query row. Many small splits
/// (at most 256 of them): a grid of many waves has no half-empty last wave (576 blocks on 528
/// slots ran at half speed). The tensor-core kernel takes longer splits (2048 keys: 32 per
/// warp-chunk ring pass) to amortise filling its rings.
fn split_plan(kernel: DecodeKernel, max_len: usize) -> (usize, usize) {
    let min_split = match kernel {
        DecodeKernel::TensorCore => 2048,
        DecodeKernel::Simt => 1024,
    };
    let split_len = max_len.div_ceil(256).max(min_split).div_ceil(64) * 64;
    (split_len, max_len.div_ceil(split_len))
}

/// One decode launch of a captured step, bound to buffers of its own so that the step's graph
/// can serve the next token of the same shape ([`CudaAttention::rebind_decode`]).
#[derive(Debug)]
pub struct BoundDecode {
    /// The addresses of the query and key layouts the launch was given (the ring's runner maps
    /// them back to its `RingLayouts`; they are not dereferenced).
    pub layout_addrs: (usize, usize),
    q_layout: Layout,
    kv_layout: Layout,
    args: Arc<DecodeArgs>,
}

/// The decode launches a captured step made, in order, or why its graph cannot be rebound.
#[derive(Debug, Default)]
pub struct DecodeBindings {
    /// One per decode launch.
    pub slots: Vec<Arc<BoundDecode>>,
    /// Set when some partial attention of the step did not run the decode kernel (its layouts
    /// are in the graph as uploaded), or the capture's calls did not match the warm-up's.
    pub unbindable: Option<&'static str>,
}

/// The binding state of a handle: recording during a capture's warm-up run, then handing the
/// recorded slots out in the same order to the capture itself.
#[derive(Debug, Default)]
pub(super) struct Binding {
    recorded: DecodeBindings,
    /// `Some(next slot)` once the capture run reuses the slots.
    reuse: Option<usize>,
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
        self.prepare_decode_as(ql, kl, nh, nkv, false)
    }

    /// [`CudaAttention::prepare_decode`]; `bound`: arguments of their own for a captured step,
    /// with spare key splits for the sequences to grow into before a rebind must refuse.
    fn prepare_decode_as(
        &self,
        ql: &DeviceLayout,
        kl: &DeviceLayout,
        nh: usize,
        nkv: usize,
        bound: bool,
    ) -> Result<Option<DecodeArgs>> {
        let Some(ranges) = &kl.seq_ranges else { return Ok(None) };
        if !self.decode_takes(ql, kl, nh, nkv) {
            return Ok(None);
        }
        let kernel = self.decode_kernel;
        let host = HostArgs::rows(&ql.layout, ranges);
        // A bound launch serves later tokens whose query rows may belong to any sequence of the
        // keys (the placement moves them between ranks; a block of padding now may hold a
        // token next): split for the longest sequence of the keys, not only of these rows.
        let longest =
            if bound { ranges.values().map(|r| r.1).max().unwrap_or(0).max(host.max_len()) } else { host.max_len() };
        let (split_len, mut splits) = split_plan(kernel, longest);
        if bound {
            // Room to grow without a new capture: an eighth more splits and one (a sequence of
            // 64K keys here may reach 75K), never more than the key buffer's rows need. Each
            // spare split costs its blocks an early exit and the merge one more partial.
            splits = (splits + splits.div_ceil(8) + 1).min(kl.rows.div_ceil(split_len)).max(splits);
        }
        let up = |v: &[i32]| self.stream.clone_htod(v).map_err(cuda_err("cuMemcpyHtoD(decode ranges)"));
        let (start, len, pos) = (up(&host.start)?, up(&host.len)?, up(&host.pos)?);
        let bound = if bound {
            let positions = row_positions(&kl.layout, 0..kl.rows);
            let key_pos = if positions.is_empty() { up(&[0])? } else { up(&positions)? };
            Some(Bound { key_pos, mirror: Mutex::new((host.clone(), kl.layout.clone())) })
        } else {
            None
        };
        Ok(Some(DecodeArgs { kernel, start, len, pos, splits, split_len, bound }))
    }

    /// Whether the decode kernel takes these layouts and heads: every sequence's keys contiguous,
    /// a head ratio the kernel has (at most 16 for the tensor-core kernel; 1, 4 or 8 for the
    /// SIMT one), some query rows. Otherwise the prefill kernel serves.
    fn decode_takes(&self, ql: &DeviceLayout, kl: &DeviceLayout, nh: usize, nkv: usize) -> bool {
        let group_ok = match self.decode_kernel {
            DecodeKernel::TensorCore => (1..=16).contains(&(nh / nkv.max(1))),
            DecodeKernel::Simt => [1, 4, 8].contains(&(nh / nkv.max(1))),
        };
        kl.seq_ranges.is_some() && nkv > 0 && group_ok && ql.rows > 0
    }

    /// Starts recording the decode launches of a step about to be captured: from now until
    /// [`CudaAttention::take_decode_bindings`], each decode launch prepares arguments of its own
    /// (not shared through the cache) and records them; [`CudaAttention::reuse_decode_bindings`]
    /// then hands them to the capture run in the same order.
    pub fn record_decode_bindings(&self) {
        *self.binding.lock().unwrap_or_else(|p| p.into_inner()) = Some(Binding::default());
    }

    /// The capture run that follows the recorded warm-up takes the recorded arguments, launch
    /// by launch (and uploads nothing).
    pub fn reuse_decode_bindings(&self) {
        if let Some(b) = self.binding.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            b.reuse = Some(0);
        }
    }

    /// Ends the recording; returns what was recorded (`None` if nothing was being recorded).
    pub fn take_decode_bindings(&self) -> Option<DecodeBindings> {
        let b = self.binding.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        let mut recorded = b.recorded;
        if b.reuse.is_some_and(|next| next != recorded.slots.len()) && recorded.unbindable.is_none() {
            recorded.unbindable = Some("the capture made fewer decode launches than its warm-up run");
        }
        Some(recorded)
    }

    /// Notes, while recording, that a partial attention took the prefill kernel: the step's
    /// graph reads that launch's layouts as uploaded and cannot be rebound.
    pub(super) fn note_unbindable(&self, why: &'static str) {
        if let Some(b) = self.binding.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            b.recorded.unbindable.get_or_insert(why);
        }
    }

    /// Rewrites a bound decode launch's arguments for the next token: `q_layout` and
    /// `kv_layout` must have the rows of the captured ones (same shape), every sequence's keys
    /// contiguous, and no key range longer than the captured split covers (the longest sequence
    /// of the keys at capture and about an eighth more; past it, capture anew). Writes, on this
    /// handle's stream, only the elements that changed; the graph replayed after it on this
    /// stream reads the new values. The previous replay must be over (a replay is waited for
    /// before it returns).
    pub fn rebind_decode(&self, slot: &BoundDecode, q_layout: &Layout, kv_layout: &Layout) -> Result<()> {
        let args = &slot.args;
        let Some(bound) = &args.bound else {
            return Err(AttentionError::Cuda {
                op: "rebind_decode",
                code: "these decode arguments were not prepared for a captured step".into(),
            });
        };
        for (what, got, captured) in [
            ("the captured step's query block", q_layout.len(), slot.q_layout.len()),
            ("the captured step's key block", kv_layout.len(), slot.kv_layout.len()),
        ] {
            if got != captured {
                return Err(AttentionError::LayoutRows { what, rows: captured, layout_rows: got });
            }
        }
        if !decode_shaped(q_layout) {
            return Err(AttentionError::Cuda {
                op: "rebind_decode",
                code: "the query rows are no decode batch any more (more than 16 rows, a sequence twice)".into(),
            });
        }
        let ranges = super::layout::seq_ranges(kv_layout).ok_or(AttentionError::Cuda {
            op: "rebind_decode",
            code: "a sequence's keys are not contiguous in the key layout (the decode kernel needs one range per sequence)"
                .into(),
        })?;
        let host = HostArgs::rows(q_layout, &ranges);
        if host.max_len() > args.splits * args.split_len {
            return Err(AttentionError::TooLarge {
                what: "the keys of one sequence, against the captured step's key split",
                value: host.max_len(),
                max: args.splits * args.split_len,
            });
        }
        let last_pos = |l: &Layout| {
            l.runs()
                .iter()
                .filter_map(|r| match *r {
                    Run::Tokens { span, .. } => Some(span.end() - 1),
                    Run::Padding { .. } => None,
                })
                .max()
        };
        if let Some(p) = last_pos(q_layout).into_iter().chain(last_pos(kv_layout)).find(|&p| p > i32::MAX as usize) {
            return Err(AttentionError::TooLarge { what: "a position", value: p, max: i32::MAX as usize });
        }
        let mut mirror = bound.mirror.lock().unwrap_or_else(|p| p.into_inner());
        let (old, old_keys) = &*mirror;
        for (dst, old, new) in
            [(&args.start, &old.start, &host.start), (&args.len, &old.len, &host.len), (&args.pos, &old.pos, &host.pos)]
        {
            let first = old.iter().zip(new).position(|(a, b)| a != b);
            if let Some(first) = first {
                let last = old.iter().zip(new).rposition(|(a, b)| a != b).unwrap_or(first);
                self.write_rows(dst, first, &new[first..=last])?;
            }
        }
        // A batch's tokens land in several regions of a rank: one small copy per region.
        for rows in changed_rows(old_keys, kv_layout, 1024) {
            self.write_rows(&bound.key_pos, rows.start, &row_positions(kv_layout, rows))?;
        }
        *mirror = (host, kv_layout.clone());
        Ok(())
    }

    /// Whether a bound launch's device arguments hold exactly what its last rebind (or its
    /// capture) computed for its layouts: every array downloaded (waits for this stream) and
    /// compared element by element. For checks: a rebind writes only what changed, and this
    /// proves the rest was right already.
    pub fn bound_decode_matches(&self, slot: &BoundDecode) -> Result<bool> {
        let args = &slot.args;
        let Some(bound) = &args.bound else { return Ok(false) };
        let down = |d: &CudaSlice<i32>| self.stream.clone_dtoh(d).map_err(cuda_err("cuMemcpyDtoH(decode check)"));
        let mirror = bound.mirror.lock().unwrap_or_else(|p| p.into_inner());
        let (host, keys) = &*mirror;
        let mut key_pos = down(&bound.key_pos)?;
        key_pos.truncate(keys.len());
        Ok(down(&args.start)? == host.start
            && down(&args.len)? == host.len
            && down(&args.pos)? == host.pos
            && key_pos == row_positions(keys, 0..keys.len()))
    }

    /// Copies `values` into `dst` from element `first` on, on this handle's stream.
    fn write_rows(&self, dst: &CudaSlice<i32>, first: usize, values: &[i32]) -> Result<()> {
        if first + values.len() > dst.len() {
            return Err(AttentionError::TooLarge {
                what: "the elements a decode rebind writes",
                value: first + values.len(),
                max: dst.len(),
            });
        }
        let (ptr, _record) = dst.device_ptr(&self.stream);
        let offset = (first * std::mem::size_of::<i32>()) as u64;
        // SAFETY: `first..first + values.len()` lies inside `dst` (checked above). From pageable
        // host memory the copy is staged before the call returns, so `values` may go right after.
        unsafe { cudarc::driver::result::memcpy_htod_async(ptr + offset, values, self.stream.cu_stream()) }
            .map_err(cuda_err("cuMemcpyHtoDAsync(decode rebind)"))
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
        let key_pos = args.bound.as_ref().map_or(&kl.pos, |b| &b.key_pos);
        b.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(&args.start).arg(&args.len).arg(&args.pos).arg(key_pos);
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

    /// While a step is being captured ([`CudaAttention::record_decode_bindings`]): the warm-up
    /// run's launch prepares and records arguments of its own, the capture run's takes the one
    /// recorded at its place (checked to be for the same layouts). `Ok(None)` when nothing is
    /// being recorded. The caller has checked that the decode kernel takes these layouts
    /// ([`CudaAttention::decode_takes`]): a declined launch takes no slot.
    fn bound_decode(
        &self,
        q_layout: &Layout,
        ql: &DeviceLayout,
        kv_layout: &Layout,
        kl: &DeviceLayout,
        nh: usize,
        nkv: usize,
    ) -> Result<Option<Arc<DecodeArgs>>> {
        let mut guard = self.binding.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = guard.as_mut() else { return Ok(None) };
        let addrs = (q_layout as *const Layout as usize, kv_layout as *const Layout as usize);
        if let Some(next) = b.reuse.as_mut() {
            let slot = b.recorded.slots.get(*next).cloned();
            let Some(slot) = slot.filter(|s| s.q_layout == *q_layout && s.kv_layout == *kv_layout) else {
                b.recorded.unbindable.get_or_insert("the capture's decode launches differ from its warm-up run's");
                return Err(AttentionError::Cuda {
                    op: "decode during a CUDA graph capture",
                    code: "the launch differs from the warm-up run's at the same place (no arguments uploaded for it)"
                        .into(),
                });
            };
            *next += 1;
            self.pin(slot.args.clone());
            return Ok(Some(slot.args.clone()));
        }
        drop(guard);
        let Some(args) = self.prepare_decode_as(ql, kl, nh, nkv, true)? else { return Ok(None) };
        let args = Arc::new(args);
        let slot = BoundDecode {
            layout_addrs: addrs,
            q_layout: q_layout.clone(),
            kv_layout: kv_layout.clone(),
            args: args.clone(),
        };
        if let Some(b) = self.binding.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            b.recorded.slots.push(Arc::new(slot));
        }
        self.pin(args.clone());
        Ok(Some(args))
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
        // Declined launches go to the prefill kernel before any cache or binding is consulted
        // (during a capture, a cache miss would be refused as an upload).
        if !self.decode_takes(&ql, &kl, nh, nkv) {
            return Ok(None);
        }
        if let Some(args) = self.bound_decode(q_layout, &ql, kv_layout, &kl, nh, nkv)? {
            return self.decode_with(&args, q, &ql, k, v, &kl).map(Some);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use cp_shard::Span;

    /// Row by row: (sequence or none, position as the kernels see it).
    fn rows(l: &Layout) -> Vec<(Option<usize>, i32)> {
        l.rows().map(|t| t.map_or((None, 0), |t| (Some(t.seq), t.pos as i32))).collect()
    }

    #[test]
    fn key_positions_of_a_row_range_follow_the_runs() {
        let mut l = Layout::new();
        l.push_tokens(0, Span::new(5, 3));
        l.push_padding(2);
        l.push_tokens(1, Span::new(0, 4));
        let all: Vec<i32> = rows(&l).into_iter().map(|r| r.1).collect();
        assert_eq!(all, [5, 6, 7, 0, 0, 0, 1, 2, 3]);
        for a in 0..=l.len() {
            for b in a..=l.len() {
                assert_eq!(row_positions(&l, a..b), all[a..b], "rows {a}..{b}");
            }
        }
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // a list of row ranges that holds one range
    fn changed_rows_cover_every_row_that_differs_and_only_runs_around_them() {
        // Regions of 40 rows for three sequences, tokens appended one at a time (what a decode
        // token does to a rank's cache), and random layouts of equal rows against each other.
        let region = |lens: [usize; 3]| {
            let mut l = Layout::new();
            for (seq, &n) in lens.iter().enumerate() {
                let start = l.len();
                if n > 0 {
                    l.push_tokens(seq, Span::new(0, n));
                }
                l.pad_to(start + 40);
            }
            l
        };
        let (old, new) = (region([10, 0, 30]), region([11, 0, 30]));
        assert_eq!(changed_rows(&old, &new, 0), [10..11], "one appended token: one row");
        assert!(changed_rows(&new, &new, 0).is_empty());
        assert_eq!(changed_rows(&region([10, 0, 30]), &region([10, 1, 30]), 0), [40..41]);
        let (old, new) = (region([10, 0, 30]), region([11, 0, 31]));
        assert_eq!(changed_rows(&old, &new, 0), [10..11, 110..111], "tokens in two regions: two rows");
        assert_eq!(changed_rows(&old, &new, 100), [10..111], "joined within the gap");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % m as u64) as usize
        };
        for _ in 0..300 {
            let mut make = || {
                let mut l = Layout::new();
                while l.len() < 60 {
                    match next(3) {
                        0 => l.push_padding(1 + next(8)),
                        _ => l.push_tokens(next(2), Span::new(next(50), 1 + next(12))),
                    }
                }
                let mut cut = Layout::new();
                for (seq_pos, _) in l.rows().zip(0..60) {
                    match seq_pos {
                        Some(t) => cut.push_tokens(t.seq, Span::new(t.pos, 1)),
                        None => cut.push_padding(1),
                    }
                }
                cut
            };
            let (a, b) = (make(), make());
            let (ra, rb) = (rows(&a), rows(&b));
            let differ: Vec<usize> = (0..60).filter(|&i| ra[i] != rb[i]).collect();
            // Without joining: exactly the rows that differ.
            let exact: Vec<usize> = changed_rows(&a, &b, 0).into_iter().flatten().collect();
            assert_eq!(exact, differ, "{a:?} {b:?}");
            // Joined: a cover of them, each range starting and ending on a differing row.
            let gap = next(10);
            for r in changed_rows(&a, &b, gap) {
                assert!(differ.contains(&r.start) && differ.contains(&(r.end - 1)), "{r:?} {a:?} {b:?}");
            }
            let cover: Vec<usize> = changed_rows(&a, &b, gap).into_iter().flatten().collect();
            assert!(differ.iter().all(|d| cover.contains(d)), "{a:?} {b:?}");
        }
    }
}
