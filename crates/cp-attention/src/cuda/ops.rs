//! The device: [`CudaAttention`] (stream, kernels, caches, shape checks) and its
//! `AttentionOps` implementation, which routes each partial attention to the decode or the
//! prefill launch (`decode.rs`, `prefill.rs`) and each merge to `merge.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cp_ring::{AttentionOps, Partial};
use cp_shard::Layout;
use cudarc::driver::{CudaContext, CudaStream, DevicePtr};

use super::decode::{Binding, DecodeArgs, DecodeKernel, DecodeKey, decode_shaped};
use super::layout::DeviceLayout;
use super::prefill::{ItemSchedule, PrefillKernel, TailMode};
use super::table::{FLASH_VARIANTS, Kernels};
use super::tensor::{DeviceBuffer, capturing};
use super::{BufferPool, GpuDType, GpuTensor, cuda_err, driver_available};
use crate::{AttentionError, Result};

/// Makes the device's default memory pool keep what is freed instead of returning it to the
/// driver at every synchronisation (its default release threshold is 0). Tensors are allocated
/// stream-ordered from that pool on every call (outputs, receive buffers, split partials); with
/// the default, each step after a synchronisation maps fresh physical memory, which costs
/// milliseconds for the hundred-megabyte buffers of a ring step.
fn keep_freed_memory(ctx: &Arc<CudaContext>) -> Result<()> {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: writes one pool handle for a valid device of a live context.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .map_err(cuda_err("cuDeviceGetDefaultMemPool"))?;
    let mut threshold: u64 = u64::MAX;
    // SAFETY: the release threshold attribute takes a pointer to a u64, read during the call.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .result()
    .map_err(cuda_err("cuMemPoolSetAttribute(release threshold)"))
}

/// Partial attention and merges on one CUDA stream.
pub struct CudaAttention {
    pub(super) stream: Arc<CudaStream>,
    pub(super) kernels: Arc<Kernels>,
    pub(super) sm_count: usize,
    /// Multiprocessors the persistent prefill grid leaves free ([`CudaAttention::reserve_sms`]).
    pub(super) reserved_sms: usize,
    /// Uploaded layouts, shared by the clones of [`CudaAttention::with_stream`] (an entry is
    /// complete before it is shared: its upload stream is synchronised first).
    layouts: Arc<Mutex<HashMap<Layout, Arc<DeviceLayout>>>>,
    /// Softmax scale; `None` means `1 / sqrt(DH)`.
    pub scale: Option<f64>,
    /// dtype of the partial outputs of the prefill kernel (f32 by default, for exact merges).
    pub partial_dtype: GpuDType,
    /// The prefill kernel: wgmma where the device has it (sm_90), else FlashAttention-2's
    /// `mma.sync` layout.
    pub prefill: PrefillKernel,
    /// The split-KV decode kernel.
    pub decode_kernel: DecodeKernel,
    /// Whether a prefill launch that under-fills the GPU splits its key range ([`kv_splits`](super::kv_splits));
    /// on by default.
    pub split_kv: bool,
    /// Whether a TMA launch of equal items runs its short last round as pieces ([`TailMode`]);
    /// [`TailMode::Auto`] by default.
    pub tail_mode: TailMode,
    /// When on, every output buffer is first filled with 0xFF bytes (NaN in f32, bf16 and f16),
    /// so a check can prove every element was written. Off by default (a memset per output).
    pub poison_outputs: bool,
    pub(super) decode_args: Arc<Mutex<HashMap<DecodeKey, Arc<DecodeArgs>>>>,
    /// Decode launches being recorded for a capture (this handle's own, never shared).
    pub(super) binding: Arc<Mutex<Option<Binding>>>,
    /// Buffers of this stream kept for reuse (explicit-sync handles only).
    pool: Option<Arc<BufferPool>>,
    /// While pinning ([`CudaAttention::pin_uploads`]): every uploaded layout and decode argument
    /// handed to a launch, kept alive past any cache eviction.
    pinned: Arc<Mutex<Option<Vec<Pinned>>>>,
}

/// Device data a captured graph reads and must outlive it.
pub type Pinned = Arc<dyn std::any::Any + Send + Sync>;

impl std::fmt::Debug for CudaAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaAttention")
            .field("sm_count", &self.sm_count)
            .field("reserved_sms", &self.reserved_sms)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

impl CudaAttention {
    /// Opens GPU `ordinal`, compiles (or loads from the cache) the kernels for its
    /// architecture, and creates a stream. Missing libraries and devices are errors.
    ///
    /// Every buffer tracks its uses with CUDA events (cudarc's default), so buffers may be
    /// shared between streams (clones made by [`CudaAttention::with_stream`], transports'
    /// copy streams) with no ordering by the caller. That costs a few driver calls per buffer
    /// a launch touches and per allocation — tens of microseconds a decode step, which is all
    /// of a short step's budget; [`CudaAttention::new_explicit_sync`] drops it.
    pub fn new(ordinal: usize) -> Result<CudaAttention> {
        CudaAttention::open(ordinal, true)
    }

    /// [`CudaAttention::new`] with cudarc's per-buffer event tracking off for this handle's
    /// context: a launch is one driver call, an allocation and a free one each.
    ///
    /// The caller orders every use of a buffer on another stream than the one it was
    /// allocated on: a stream reading it waits for an event recorded after it was written, and
    /// its owner's stream waits for that reader before the buffer is dropped (its memory goes
    /// back to the pool in the owner's stream order). Everything this crate launches runs on
    /// the handle's own stream, so a handle whose buffers never leave that stream needs
    /// nothing; cp-nccl's NCCL transport orders its communication stream with events. A clone
    /// made by [`CudaAttention::with_stream`] on another stream uploads layouts of its own (the
    /// tracked handles' clones share them: tracking orders the readers).
    pub fn new_explicit_sync(ordinal: usize) -> Result<CudaAttention> {
        CudaAttention::open(ordinal, false)
    }

    fn open(ordinal: usize, event_tracking: bool) -> Result<CudaAttention> {
        if !driver_available() {
            return Err(AttentionError::MissingLibrary {
                library: "libcuda",
                hint: "no NVIDIA driver on this machine (the GPU path needs one; the CPU path does not)",
            });
        }
        let count = CudaContext::device_count().map_err(cuda_err("cuDeviceGetCount"))? as usize;
        if ordinal >= count {
            return Err(AttentionError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("cuCtxCreate"))?;
        if !event_tracking {
            // SAFETY: set before this context allocates anything, so no buffer of it tracks
            // uses; the ordering contract moves to the caller (see `new_explicit_sync`).
            unsafe { ctx.disable_event_tracking() };
        }
        let (major, minor) = ctx.compute_capability().map_err(cuda_err("cuDeviceGetAttribute"))?;
        if major < 8 {
            return Err(AttentionError::ComputeCapability {
                major,
                minor,
                what: "the kernels (mma.sync bf16, cp.async)",
                needs: "8.0 or newer",
            });
        }
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda_err("cuDeviceGetAttribute"))? as usize;
        // Hopper's wgmma needs the architecture-specific target sm_90a.
        let wgmma = (major, minor) == (9, 0);
        let arch = if wgmma { "sm_90a".to_string() } else { format!("sm_{major}{minor}") };
        let kernels = Arc::new(Kernels::load(&ctx, &arch, wgmma)?);
        keep_freed_memory(&ctx)?;
        let stream = ctx.new_stream().map_err(cuda_err("cuStreamCreate"))?;
        Ok(CudaAttention {
            kernels,
            sm_count,
            reserved_sms: 0,
            layouts: Arc::default(),
            scale: None,
            partial_dtype: GpuDType::F32,
            prefill: if wgmma {
                PrefillKernel::Tma { pingpong: false, schedule: ItemSchedule::ByKvHead, wide: true }
            } else {
                PrefillKernel::Mma { warps: 4, m_tiles: 2 }
            },
            decode_kernel: DecodeKernel::TensorCore,
            split_kv: true,
            tail_mode: TailMode::Auto,
            poison_outputs: false,
            decode_args: Arc::default(),
            binding: Arc::default(),
            pool: BufferPool::new(&stream),
            pinned: Arc::default(),
            stream,
        })
    }

    /// The same kernels on another stream of the same context (one per rank on a shared GPU).
    pub fn with_stream(&self, stream: Arc<CudaStream>) -> CudaAttention {
        // Uploads are shared between streams only where event tracking orders their readers
        // after them; an explicit-sync clone on another stream uploads its own.
        let share = self.pool.is_none() || Arc::ptr_eq(&stream, &self.stream);
        CudaAttention {
            kernels: self.kernels.clone(),
            sm_count: self.sm_count,
            reserved_sms: self.reserved_sms,
            layouts: if share { self.layouts.clone() } else { Arc::default() },
            scale: self.scale,
            partial_dtype: self.partial_dtype,
            prefill: self.prefill,
            decode_kernel: self.decode_kernel,
            split_kv: self.split_kv,
            tail_mode: self.tail_mode,
            poison_outputs: self.poison_outputs,
            decode_args: if share { self.decode_args.clone() } else { Arc::default() },
            binding: Arc::default(),
            pool: BufferPool::new(&stream),
            pinned: Arc::default(),
            stream,
        }
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Multiprocessors of the device.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// Leaves `n` multiprocessors to kernels that run beside this handle's prefill (NCCL's
    /// transfer kernels on a ring): the persistent TMA kernel's grid takes at most
    /// `sm_count - n` of them and splits key ranges for that many. A persistent grid that holds
    /// every multiprocessor delays any concurrent kernel until it ends, which serialises a ring
    /// step's transfer behind its compute; grids of the other kernels are not persistent (their
    /// blocks leave multiprocessors as they finish) and are not changed. `n` must leave at least
    /// one multiprocessor.
    pub fn reserve_sms(&mut self, n: usize) -> Result<()> {
        if n >= self.sm_count {
            return Err(AttentionError::TooLarge {
                what: "the multiprocessors reserved beside the prefill kernel",
                value: n,
                max: self.sm_count - 1,
            });
        }
        self.reserved_sms = n;
        Ok(())
    }

    /// Multiprocessors left to concurrent kernels ([`CudaAttention::reserve_sms`]); 0 by default.
    pub fn reserved_sms(&self) -> usize {
        self.reserved_sms
    }

    /// The prefill kernels this device can run, the default first.
    pub fn prefill_kernels(&self) -> Vec<PrefillKernel> {
        let mut all: Vec<PrefillKernel> =
            FLASH_VARIANTS.iter().map(|&(warps, m_tiles, _)| PrefillKernel::Mma { warps, m_tiles }).rev().collect();
        if self.kernels.wgmma {
            let tma = |pingpong, schedule, wide| PrefillKernel::Tma { pingpong, schedule, wide };
            let (by_kv, by_range, zigzag, claimed) =
                (ItemSchedule::ByKvHead, ItemSchedule::ByKeyRange, ItemSchedule::Zigzag, ItemSchedule::Claimed);
            all.splice(
                0..0,
                [
                    tma(false, by_kv, true),
                    tma(false, by_kv, false),
                    tma(false, by_range, true),
                    tma(false, zigzag, true),
                    tma(false, claimed, true),
                    tma(true, by_kv, true),
                    tma(true, by_kv, false),
                    tma(true, by_range, true),
                    tma(true, zigzag, true),
                    tma(true, claimed, true),
                    PrefillKernel::Wgmma,
                ],
            );
        }
        // The default first.
        if let Some(i) = all.iter().position(|&k| k == self.prefill) {
            all[..=i].rotate_right(1);
        }
        all
    }

    /// The device copy of `layout`, uploaded once and cached (shared with the other streams'
    /// clones: uploading on every call would put host work between a rank's launches).
    pub fn device_layout(&self, layout: &Layout) -> Result<Arc<DeviceLayout>> {
        let mut cache = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = cache.get(layout) {
            self.pin(found.clone());
            return Ok(found.clone());
        }
        self.refuse_upload_while_capturing("a layout")?;
        let uploaded = Arc::new(DeviceLayout::new(self, layout)?);
        // No host wait here (a new key layout every decode step made this a host wait per step).
        // Clones on other streams share the cache only with event tracking on, which orders
        // their launches after the upload; explicit-sync clones have caches of their own.
        if cache.len() > 64 && !self.pinning() {
            cache.clear();
        }
        cache.insert(layout.clone(), uploaded.clone());
        self.pin(uploaded.clone());
        Ok(uploaded)
    }

    /// From now until [`CudaAttention::unpin_uploads`], every uploaded layout and decode
    /// argument a launch reads is kept (what a CUDA graph captured meanwhile reads at replay,
    /// whatever the caches evict).
    pub fn pin_uploads(&self) {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Vec::new);
    }

    /// Ends [`CudaAttention::pin_uploads`]; returns what was pinned.
    pub fn unpin_uploads(&self) -> Vec<Pinned> {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default()
    }

    /// Whether uploads are being pinned (and the caches must evict nothing).
    pub(super) fn pinning(&self) -> bool {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// An upload (a host copy and an allocation) inside a CUDA graph capture would be recorded
    /// as a copy from host memory that is gone at replay: an error instead. A capture must
    /// follow an uncaptured run of the same step, which uploads everything it needs.
    pub(super) fn refuse_upload_while_capturing(&self, what: &'static str) -> Result<()> {
        if !capturing(&self.stream)? {
            return Ok(());
        }
        Err(AttentionError::Cuda {
            op: "upload during a CUDA graph capture",
            code: format!("{what} was not uploaded by the uncaptured run before the capture"),
        })
    }

    pub(super) fn pin(&self, data: Pinned) {
        if let Some(pinned) = self.pinned.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            pinned.push(data);
        }
    }

    /// Device memory for an output of `dtype` and `shape` on this stream (poisoned when
    /// [`CudaAttention::poison_outputs`] is on).
    /// Temporaries go back to the pool when dropped, like tensors.
    pub(super) fn alloc(&self, dtype: GpuDType, shape: &[usize]) -> Result<DeviceBuffer> {
        let buf = GpuTensor::alloc_buffer_in(&self.stream, self.pool.as_ref(), dtype, shape)?;
        let buf = DeviceBuffer::new(buf, self.pool.as_ref());
        if self.poison_outputs {
            let (ptr, _guard) = buf.device_ptr(&self.stream);
            // SAFETY: `ptr` addresses the `buf.len()` bytes just allocated on this stream.
            unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xff, buf.len(), self.stream.cu_stream()) }
                .map_err(cuda_err("cuMemsetD8Async(poison)"))?;
        }
        Ok(buf)
    }

    /// The device layouts of a step's prefill launch, noted as one a rebound graph cannot rebind.
    fn prefill_layouts(&self, q_layout: &Layout, kv_layout: &Layout) -> Result<(Arc<DeviceLayout>, Arc<DeviceLayout>)> {
        self.note_unbindable("a partial attention of the step ran the prefill kernel (its layouts are in the graph)");
        Ok((self.device_layout(q_layout)?, self.device_layout(kv_layout)?))
    }

    /// The buffer of `t` to write in place: its own when no other tensor shares it, else a copy.
    pub(super) fn owned(&self, t: GpuTensor) -> Result<DeviceBuffer> {
        let (dtype, shape) = (t.dtype(), t.shape().to_vec());
        match Arc::try_unwrap(t.buf) {
            Ok(own) => Ok(own),
            Err(shared) => {
                let mut copy = self.alloc(dtype, &shape)?;
                self.stream.memcpy_dtod(&**shared, &mut *copy).map_err(cuda_err("cuMemcpyDtoD"))?;
                Ok(copy)
            }
        }
    }

    /// Buffers of this handle's stream kept for reuse: `Some` for explicit-sync handles
    /// ([`CudaAttention::new_explicit_sync`]), whose transports may allocate from it too.
    pub fn pool(&self) -> Option<&Arc<BufferPool>> {
        self.pool.as_ref()
    }

    /// Forgets every uploaded layout and prepared decode argument (shared with the clones that
    /// share this handle's caches, see [`CudaAttention::with_stream`]): the next launch of each
    /// layout uploads it again, as a new layout would (a benchmark of steps whose layouts all
    /// differ, say).
    pub fn forget_layouts(&self) {
        self.layouts.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.decode_args.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub(super) fn check(
        &self,
        q: &GpuTensor,
        ql: usize,
        k: &GpuTensor,
        v: &GpuTensor,
        kl: usize,
    ) -> Result<(usize, usize, usize, usize, usize)> {
        let dims3 = |t: &GpuTensor, what: &'static str| match *t.shape() {
            [a, b, c] => Ok((a, b, c)),
            _ => Err(AttentionError::Shape { what, expected: "3 dimensions".into(), actual: t.shape().to_vec() }),
        };
        let (tq, nh, d) = dims3(q, "q")?;
        let (tk, nkv, dk) = dims3(k, "k")?;
        if v.shape() != k.shape() {
            return Err(AttentionError::Shape {
                what: "v",
                expected: format!("{:?}", k.shape()),
                actual: v.shape().to_vec(),
            });
        }
        if dk != d {
            return Err(AttentionError::Shape {
                what: "k",
                expected: format!("[Tk, NKV, {d}]"),
                actual: k.shape().to_vec(),
            });
        }
        if nkv == 0 || nh == 0 || !nh.is_multiple_of(nkv) {
            return Err(AttentionError::Heads { n_heads: nh, n_kv_heads: nkv });
        }
        if d != 64 && d != 128 {
            return Err(AttentionError::HeadDim { head_dim: d, supported: "64 and 128" });
        }
        if q.dtype() == GpuDType::F32 || k.dtype() != q.dtype() || v.dtype() != q.dtype() {
            return Err(AttentionError::GpuDtype {
                what: "attention inputs",
                got: format!("q {:?}, k {:?}, v {:?}", q.dtype(), k.dtype(), v.dtype()),
                supported: "all bf16 or all f16",
            });
        }
        for (what, rows, layout_rows) in [("q", tq, ql), ("k", tk, kl)] {
            if rows != layout_rows {
                return Err(AttentionError::LayoutRows { what, rows, layout_rows });
            }
        }
        Ok((tq, tk, nh, nkv, d))
    }

    pub(super) fn scale_log2(&self, d: usize) -> f32 {
        (self.scale.unwrap_or(1.0 / (d as f64).sqrt()) * std::f64::consts::LOG2_E) as f32
    }

    /// Waits until every launch on the stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize"))
    }
}

impl AttentionOps for CudaAttention {
    type Tensor = GpuTensor;
    type Error = AttentionError;

    fn rows(&self, t: &GpuTensor) -> Result<usize> {
        Ok(t.shape().first().copied().unwrap_or(0))
    }

    fn partial(
        &self,
        q: &GpuTensor,
        q_layout: &Layout,
        k: &GpuTensor,
        v: &GpuTensor,
        kv_layout: &Layout,
    ) -> Result<Partial<GpuTensor>> {
        if decode_shaped(q_layout)
            && let Some(p) = self.decode(q, q_layout, k, v, kv_layout)?
        {
            return Ok(p);
        }
        let (ql, kl) = self.prefill_layouts(q_layout, kv_layout)?;
        self.flash(q, &ql, k, v, &kl, self.partial_dtype)
    }

    fn merge(&self, acc: Partial<GpuTensor>, next: Partial<GpuTensor>) -> Result<Partial<GpuTensor>> {
        self.merge_into(acc, &next)
    }

    fn partial_into(
        &self,
        acc: Partial<GpuTensor>,
        q: &GpuTensor,
        q_layout: &Layout,
        k: &GpuTensor,
        v: &GpuTensor,
        kv_layout: &Layout,
    ) -> Result<Partial<GpuTensor>> {
        if decode_shaped(q_layout) {
            let part = self.partial(q, q_layout, k, v, kv_layout)?;
            return self.merge_into(acc, &part);
        }
        let (ql, kl) = self.prefill_layouts(q_layout, kv_layout)?;
        self.flash_into(acc, q, &ql, k, v, &kl)
    }

    fn merge_all(&self, parts: Vec<Partial<GpuTensor>>) -> Result<Partial<GpuTensor>> {
        self.merge_many(&parts, GpuDType::F32)
    }

    fn concat(&self, parts: &[GpuTensor]) -> Result<GpuTensor> {
        let first = parts.first().ok_or(AttentionError::NothingToMerge)?;
        let tail = first.shape().get(1..).unwrap_or(&[]).to_vec();
        let mut rows = 0;
        for p in parts {
            if p.dtype() != first.dtype() || p.shape().get(1..).unwrap_or(&[]) != tail.as_slice() {
                return Err(AttentionError::Shape {
                    what: "tensor to concatenate",
                    expected: format!("[_, {tail:?}] {:?}", first.dtype()),
                    actual: p.shape().to_vec(),
                });
            }
            rows += p.shape().first().copied().unwrap_or(0);
        }
        let mut shape = vec![rows];
        shape.extend(&tail);
        let mut out = self.alloc(first.dtype(), &shape)?;
        let mut at = 0;
        for p in parts {
            let bytes = p.elem_count() * p.dtype().size();
            if bytes > 0 {
                let mut dst = out.slice_mut(at..at + bytes);
                self.stream
                    .memcpy_dtod(&p.slice().slice(0..bytes), &mut dst)
                    .map_err(cuda_err("cuMemcpyDtoDAsync(concat)"))?;
            }
            at += bytes;
        }
        Ok(out.into_tensor(first.dtype(), shape))
    }
}

/// The KV cache's buffers in device memory: allocated on this stream, rows copied in place by
/// device-to-device copies on it, views sharing the buffer (a shorter shape over the same
/// memory). Rows are written in place even while a peer still holds a message sent from the
/// buffer: the cache writes only rows past every token such a message held (its padding).
impl cp_ring::KvOps for CudaAttention {
    fn alloc_rows(&self, like: &GpuTensor, rows: usize) -> Result<GpuTensor> {
        let mut shape = like.shape().to_vec();
        if shape.is_empty() {
            return Err(AttentionError::Shape { what: "cached rows", expected: "[rows, ...]".into(), actual: shape });
        }
        shape[0] = rows;
        let buf = self.alloc(like.dtype(), &shape)?;
        Ok(buf.into_tensor(like.dtype(), shape))
    }

    fn copy_rows(&self, dst: &mut GpuTensor, at: usize, src: &GpuTensor, from: usize, count: usize) -> Result<()> {
        let tail = |t: &GpuTensor| t.shape().get(1..).unwrap_or(&[]).to_vec();
        if dst.dtype() != src.dtype() || tail(dst) != tail(src) || dst.shape().is_empty() {
            return Err(AttentionError::Shape {
                what: "rows to copy into the cache",
                expected: format!("[_, {:?}] {:?}", tail(dst), dst.dtype()),
                actual: src.shape().to_vec(),
            });
        }
        let (dst_rows, src_rows) = (dst.shape()[0], src.shape()[0]);
        if from + count > src_rows || at + count > dst_rows {
            return Err(AttentionError::Shape {
                what: "row range to copy",
                expected: format!(
                    "rows {from}..{} of {src_rows} into {at}..{} of {dst_rows}",
                    from + count,
                    at + count
                ),
                actual: vec![count],
            });
        }
        if count == 0 {
            return Ok(());
        }
        let row = tail(dst).iter().product::<usize>() * dst.dtype().size();
        let src_rows = src.slice().slice(from * row..(from + count) * row);
        if let Some(buf) = std::sync::Arc::get_mut(&mut dst.buf) {
            let mut out = buf.slice_mut(at * row..(at + count) * row);
            return self.stream.memcpy_dtod(&src_rows, &mut out).map_err(cuda_err("cuMemcpyDtoDAsync(cache rows)"));
        }
        // Another tensor still holds the buffer: a peer that has not yet released a message this
        // rank sent from it (it pulls on its own schedule). The rows written here are past every
        // row any sent message held a token in — padding to its readers — so writing them while
        // a reader may still copy the buffer changes nothing it uses.
        let (dst_ptr, _w) = dst.buf.device_ptr(&self.stream);
        let (src_ptr, _r) = src_rows.device_ptr(&self.stream);
        // SAFETY: both ranges lie inside live allocations (checked above); the copy is ordered on
        // this stream after everything this stream did with either buffer.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst_ptr + (at * row) as u64,
                src_ptr,
                count * row,
                self.stream.cu_stream(),
            )
        }
        .map_err(cuda_err("cuMemcpyDtoDAsync(cache rows, shared buffer)"))
    }

    fn first_rows(&self, t: &GpuTensor, rows: usize) -> Result<GpuTensor> {
        let mut shape = t.shape().to_vec();
        match shape.first_mut() {
            Some(r) if *r >= rows => *r = rows,
            _ => {
                return Err(AttentionError::Shape {
                    what: "view of the first rows",
                    expected: format!("at least {rows} rows"),
                    actual: t.shape().to_vec(),
                });
            }
        }
        Ok(t.with_shape(shape))
    }
}
