//! Kernel launches, and the `AttentionOps` implementation on device tensors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cp_ring::{AttentionOps, Partial};
use cp_shard::Layout;
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use super::layout::DeviceLayout;
use super::{GpuDType, GpuTensor, cubin, cuda_err, driver_available};
use crate::{AttentionError, Result};

/// Dynamic shared memory of the `mma.sync` prefill kernel with `warps` warps of `m_tiles`
/// 16-row m-tiles: the Q tile and two K and two V tiles of 64 rows.
fn flash_smem(head_dim: usize, warps: usize, m_tiles: usize) -> usize {
    (16 * warps * m_tiles + 4 * super::layout::TILE) * head_dim * 2
}

/// Dynamic shared memory of the wgmma prefill kernel: a 128-row Q tile and three stages of
/// 128-row K and V tiles, 1024 bytes of alignment slack and one scratch word.
fn flash_wg_smem(head_dim: usize) -> usize {
    1024 + (128 + 3 * 2 * 128) * head_dim * 2 + 16
}

/// Dynamic shared memory of the tensor-core decode kernel: 4 warps x 3 stages of 16 keys' K and V.
fn decode_mma_smem(head_dim: usize) -> usize {
    4 * 3 * 2 * 16 * head_dim * 2
}

/// The `mma.sync` prefill kernel variants: (warps, 16-row m-tiles per warp, name suffix).
const FLASH_VARIANTS: [(usize, usize, &str); 3] = [(8, 1, "w8"), (4, 1, "w4"), (4, 2, "w4m2")];

/// Which prefill (and off-diagonal) kernel [`CudaAttention::flash`] launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillKernel {
    /// Hopper's warpgroup MMA (`wgmma`, sm_90a only): two warpgroups of 64 query rows sharing
    /// 128-key tiles from a 3-stage ring, the softmax of one tile overlapping the P V product of
    /// the previous one. The default on H100/H200.
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

impl std::fmt::Display for PrefillKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrefillKernel::Wgmma => write!(f, "wgmma 2x64 rows"),
            PrefillKernel::Mma { warps, m_tiles } => write!(f, "mma.sync {warps}w x {m_tiles}m"),
        }
    }
}

/// Which split-KV decode kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeKernel {
    /// The query heads of a KV head as the rows of an `mma.sync` tile, per-warp cp.async rings
    /// (any head ratio up to 16). The default.
    TensorCore,
    /// CUDA cores, a group of lanes per key (head ratios 1, 4 and 8).
    Simt,
}

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

/// One thread per four elements (the merge kernels), 256 threads a block.
fn elementwise(threads: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Up to 16 partials' pointers, passed to the merge kernel by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct Parts {
    out: [u64; 16],
    lse: [u64; 16],
}

// SAFETY: plain old data with the layout of the kernel's `struct Parts`.
unsafe impl cudarc::driver::DeviceRepr for Parts {}

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
type DecodeKey = (DecodeKernel, Layout, Layout);

/// One kernel of the module: its entry point and the dynamic shared memory it is launched with
/// (0: the 48 KB default suffices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelEntry {
    /// The `extern "C"` entry point.
    pub name: String,
    /// Bytes of dynamic shared memory.
    pub dynamic_smem: usize,
}

/// Every kernel the GPU path launches — the one list that loading uses and that CI checks the
/// compiled module against; the wgmma ones only where `wgmma` (sm_90a).
pub fn kernel_table(wgmma: bool) -> Vec<KernelEntry> {
    let entry = |name: String, dynamic_smem: usize| KernelEntry { name, dynamic_smem };
    let mut all = Vec::new();
    for d in [64, 128] {
        for t in ["bf16", "f16"] {
            for o in ["f32", "b16"] {
                all.extend(
                    FLASH_VARIANTS
                        .map(|(w, m, suffix)| entry(format!("flash_fwd_d{d}_{t}_{o}_{suffix}"), flash_smem(d, w, m))),
                );
                if wgmma {
                    all.push(entry(format!("flash_fwd_d{d}_{t}_{o}_wg"), flash_wg_smem(d)));
                }
            }
            all.extend([1, 4, 8].map(|g| entry(format!("decode_d{d}_{t}_g{g}"), 0)));
            all.push(entry(format!("decode_mma_d{d}_{t}"), decode_mma_smem(d)));
        }
    }
    if wgmma {
        all.push(entry("wg_selftest".into(), flash_wg_smem(128)));
    }
    for family in ["merge_fold", "merge_all", "merge_strided"] {
        all.extend(["f32", "bf16", "f16"].map(|t| entry(format!("{family}_{t}"), 0)));
    }
    all.extend(["fill_rows_bf16", "fill_rows_f16"].map(|n| entry(n.into(), 0)));
    all
}

/// The compiled module's functions by name.
struct Kernels {
    functions: HashMap<String, CudaFunction>,
    /// Whether the wgmma kernels were built (sm_90a).
    wgmma: bool,
}

impl Kernels {
    /// Loads the kernels compiled for `arch`; the wgmma ones only where `wgmma` (sm_90a).
    fn load(ctx: &Arc<CudaContext>, arch: &str, wgmma: bool) -> Result<Kernels> {
        let module = ctx.load_module(Ptx::from_binary(cubin(arch)?)).map_err(cuda_err("cuModuleLoadData"))?;
        let mut functions = HashMap::new();
        for k in kernel_table(wgmma) {
            let f = module.load_function(&k.name).map_err(cuda_err("cuModuleGetFunction"))?;
            if k.dynamic_smem > 0 {
                f.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    k.dynamic_smem as i32,
                )
                .map_err(cuda_err("cuFuncSetAttribute(max dynamic shared memory)"))?;
            }
            functions.insert(k.name, f);
        }
        Ok(Kernels { functions, wgmma })
    }

    fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| AttentionError::KernelMissing { name: name.to_string() })
    }
}

/// Partial attention and merges on one CUDA stream.
pub struct CudaAttention {
    stream: Arc<CudaStream>,
    kernels: Arc<Kernels>,
    sm_count: usize,
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
    /// Whether a prefill launch that under-fills the GPU splits its key range ([`kv_splits`]);
    /// on by default.
    pub split_kv: bool,
    /// When on, every output buffer is first filled with 0xFF bytes (NaN in f32, bf16 and f16),
    /// so a check can prove every element was written. Off by default (a memset per output).
    pub poison_outputs: bool,
    decode_args: Arc<Mutex<HashMap<DecodeKey, Arc<DecodeArgs>>>>,
}

impl std::fmt::Debug for CudaAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaAttention")
            .field("sm_count", &self.sm_count)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

impl CudaAttention {
    /// Opens GPU `ordinal`, compiles (or loads from the cache) the kernels for its
    /// architecture, and creates a stream. Missing libraries and devices are errors.
    pub fn new(ordinal: usize) -> Result<CudaAttention> {
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
            stream,
            kernels,
            sm_count,
            layouts: Arc::default(),
            scale: None,
            partial_dtype: GpuDType::F32,
            prefill: if wgmma { PrefillKernel::Wgmma } else { PrefillKernel::Mma { warps: 4, m_tiles: 2 } },
            decode_kernel: DecodeKernel::TensorCore,
            split_kv: true,
            poison_outputs: false,
            decode_args: Arc::default(),
        })
    }

    /// The same kernels on another stream of the same context (one per rank on a shared GPU).
    pub fn with_stream(&self, stream: Arc<CudaStream>) -> CudaAttention {
        CudaAttention {
            stream,
            kernels: self.kernels.clone(),
            sm_count: self.sm_count,
            layouts: self.layouts.clone(),
            scale: self.scale,
            partial_dtype: self.partial_dtype,
            prefill: self.prefill,
            decode_kernel: self.decode_kernel,
            split_kv: self.split_kv,
            poison_outputs: self.poison_outputs,
            decode_args: self.decode_args.clone(),
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

    /// The prefill kernels this device can run, the default first.
    pub fn prefill_kernels(&self) -> Vec<PrefillKernel> {
        let mut all: Vec<PrefillKernel> =
            FLASH_VARIANTS.iter().map(|&(warps, m_tiles, _)| PrefillKernel::Mma { warps, m_tiles }).rev().collect();
        if self.kernels.wgmma {
            all.insert(0, PrefillKernel::Wgmma);
        }
        all
    }

    /// The device copy of `layout`, uploaded once and cached (shared with the other streams'
    /// clones: uploading on every call would put host work between a rank's launches).
    pub fn device_layout(&self, layout: &Layout) -> Result<Arc<DeviceLayout>> {
        let mut cache = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = cache.get(layout) {
            return Ok(found.clone());
        }
        let uploaded = Arc::new(DeviceLayout::new(&self.stream, layout)?);
        // Other streams may read it next: finish the copies first.
        self.synchronize()?;
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert(layout.clone(), uploaded.clone());
        Ok(uploaded)
    }

    /// Device memory for an output of `dtype` and `shape` on this stream (poisoned when
    /// [`CudaAttention::poison_outputs`] is on).
    fn alloc(&self, dtype: GpuDType, shape: &[usize]) -> Result<CudaSlice<u8>> {
        let buf = GpuTensor::alloc(&self.stream, dtype, shape)?;
        if self.poison_outputs {
            let (ptr, _guard) = buf.device_ptr(&self.stream);
            // SAFETY: `ptr` addresses the `buf.len()` bytes just allocated on this stream.
            unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xff, buf.len(), self.stream.cu_stream()) }
                .map_err(cuda_err("cuMemsetD8Async(poison)"))?;
        }
        Ok(buf)
    }

    /// Forgets every uploaded layout and prepared decode argument (shared with the other
    /// streams' clones): the next launch of each layout uploads it again, as a new layout
    /// would (a benchmark of steps whose layouts all differ, say).
    pub fn forget_layouts(&self) {
        self.layouts.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.decode_args.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn check(
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
        if nkv == 0 || !nh.is_multiple_of(nkv) {
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

    fn scale_log2(&self, d: usize) -> f32 {
        (self.scale.unwrap_or(1.0 / (d as f64).sqrt()) * std::f64::consts::LOG2_E) as f32
    }

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
        let (tq, tk, nh, nkv, d) = self.check(q, ql.rows, k, v, kl.rows)?;
        if out_dtype != GpuDType::F32 && out_dtype != q.dtype() {
            return Err(AttentionError::GpuDtype {
                what: "prefill output",
                got: format!("{out_dtype:?} for {:?} inputs", q.dtype()),
                supported: "f32 or the input dtype",
            });
        }
        let out_tag = if out_dtype == GpuDType::F32 { "f32" } else { "b16" };
        let prefix = format!("flash_fwd_d{d}_{}_{out_tag}", q.dtype().tag());
        let (name, rows_per_block, threads, smem) = match self.prefill {
            PrefillKernel::Wgmma if self.kernels.wgmma => (format!("{prefix}_wg"), 128, 256, flash_wg_smem(d)),
            PrefillKernel::Wgmma => {
                return Err(AttentionError::KernelMissing { name: format!("{prefix}_wg (wgmma: sm_90a only)") });
            }
            PrefillKernel::Mma { warps, m_tiles } => {
                let Some(&(_, _, suffix)) = FLASH_VARIANTS.iter().find(|v| v.0 == warps && v.1 == m_tiles) else {
                    return Err(AttentionError::KernelMissing {
                        name: format!("mma.sync prefill with {warps} warps x {m_tiles} m-tiles (have 8x1, 4x1, 4x2)"),
                    });
                };
                (format!("{prefix}_{suffix}"), 16 * warps * m_tiles, 32 * warps, flash_smem(d, warps, m_tiles))
            }
        };
        let blocks = tq.div_ceil(rows_per_block);
        let key_tile = if self.prefill == PrefillKernel::Wgmma { 128 } else { super::layout::TILE };
        let key_tiles = tk.div_ceil(key_tile);
        let splits = if self.split_kv { kv_splits(blocks * nh, key_tiles, self.sm_count) } else { 1 };
        let mut out = self.alloc(out_dtype, &[tq, nh, d])?;
        let mut lse = self.alloc(GpuDType::F32, &[tq, nh])?;
        if tq == 0 {
            return Ok(Partial {
                out: GpuTensor::from_parts(out, out_dtype, vec![tq, nh, d]),
                lse: GpuTensor::from_parts(lse, GpuDType::F32, vec![tq, nh]),
            });
        }
        // The wgmma kernel takes (heads, query blocks, splits); the mma.sync ones (query blocks,
        // heads, splits).
        let (x, y) = if self.prefill == PrefillKernel::Wgmma { (nh, blocks) } else { (blocks, nh) };
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
        let cfg = LaunchConfig {
            grid_dim: (x as u32, y as u32, splits as u32),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let (tq_i, tk_i, nh_i, nkv_i) = (tq as i32, tk as i32, nh as i32, nkv as i32);
        let split_tiles = key_tiles.div_ceil(splits).max(1) as i32;
        let scale = self.scale_log2(d);
        let launch = |name: &str, out: &mut CudaSlice<u8>, lse: &mut CudaSlice<u8>| -> Result<()> {
            let f = self.kernels.get(name)?;
            let mut b = self.stream.launch_builder(f);
            b.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(out).arg(lse);
            b.arg(&ql.seq).arg(&ql.pos).arg(&kl.seq).arg(&kl.pos).arg(&ql.tiles).arg(&kl.tiles);
            b.arg(&tq_i).arg(&tk_i).arg(&nh_i).arg(&nkv_i).arg(&scale).arg(&split_tiles);
            // SAFETY: argument types and order match the kernel; `out` and `lse` hold one
            // [tq, nh, d] / [tq, nh] partial per split (grid z); the grid covers every query
            // row and key tile, and the dynamic shared memory is set.
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
            b.arg(&part_out).arg(&part_lse).arg(&n).arg(&mut out).arg(&mut lse).arg(&rows_l).arg(&d_i);
            // SAFETY: `splits` contiguous partials of `tq * nh` rows of `d` f32 and their LSEs;
            // `out` holds `tq * nh * d` elements of `out_dtype`, `lse` `tq * nh` f32.
            unsafe { b.launch(elementwise(tq * nh * d / 4)) }.map_err(cuda_err("launch merge_strided"))?;
        }
        Ok(Partial {
            out: GpuTensor::from_parts(out, out_dtype, vec![tq, nh, d]),
            lse: GpuTensor::from_parts(lse, GpuDType::F32, vec![tq, nh]),
        })
    }

    /// A tensor `[rows, heads, head_dim]` for the rows of `layout`, drawn on the device: element
    /// `c` of the row of token `(seq, pos)` is [`crate::hashed_value`]`(seed, seq, pos, c)`
    /// rounded to `dtype`, the same on every rank and in every layout; padding rows hold `pad`
    /// (NaN, say, to check that padding never reaches a result).
    pub fn random_rows(
        &self,
        layout: &Layout,
        heads: usize,
        head_dim: usize,
        dtype: GpuDType,
        seed: u64,
        pad: f32,
    ) -> Result<GpuTensor> {
        let name = match dtype {
            GpuDType::Bf16 => "fill_rows_bf16",
            GpuDType::F16 => "fill_rows_f16",
            GpuDType::F32 => {
                return Err(AttentionError::GpuDtype {
                    what: "random_rows",
                    got: "F32".into(),
                    supported: "bf16 or f16",
                });
            }
        };
        let dl = self.device_layout(layout)?;
        let width = heads.checked_mul(head_dim).filter(|&w| w > 0 && w <= i32::MAX as usize).ok_or(
            AttentionError::TooLarge {
                what: "row width (heads x head dim, at least 1)",
                value: heads.saturating_mul(head_dim),
                max: i32::MAX as usize,
            },
        )?;
        let mut t = self.alloc(dtype, &[layout.len(), heads, head_dim])?;
        let pad_bits = u32::from(match dtype {
            GpuDType::Bf16 => half::bf16::from_f32(pad).to_bits(),
            _ => half::f16::from_f32(pad).to_bits(),
        });
        let (rows_l, width_i) = (layout.len() as i64, width as i32);
        let f = self.kernels.get(name)?;
        let cfg = LaunchConfig {
            grid_dim: ((layout.len() * width).div_ceil(256).clamp(1, 8 * 1024) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut t).arg(&dl.seq).arg(&dl.pos).arg(&rows_l).arg(&width_i).arg(&seed).arg(&pad_bits);
        // SAFETY: `t` holds rows x width 16-bit values; `dl` has one (seq, pos) per row (a
        // padding entry for an empty layout, which the kernel does not read).
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch fill_rows"))?;
        Ok(GpuTensor::from_parts(t, dtype, vec![layout.len(), heads, head_dim]))
    }

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
        for t in &ql.tokens {
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
        b.arg(&mut part_out).arg(&mut part_lse).arg(&bq_i).arg(&nh_i).arg(&nkv_i).arg(&split_i).arg(&scale);
        // SAFETY: argument types and order match the kernel; every row range lies inside k/v.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch decode"))?;

        let mut out = self.alloc(GpuDType::F32, &[bq, nh, d])?;
        let mut lse = self.alloc(GpuDType::F32, &[bq, nh])?;
        let f = self.kernels.get("merge_strided_f32")?;
        let (n, rows_l, d_i) = (splits as i32, rows as i64, d as i32);
        let cfg = elementwise(rows * d / 4);
        let mut b = self.stream.launch_builder(f);
        b.arg(&part_out).arg(&part_lse).arg(&n).arg(&mut out).arg(&mut lse).arg(&rows_l).arg(&d_i);
        // SAFETY: the split partials are `splits` contiguous blocks of `rows x d` and `rows`.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch merge_strided"))?;
        Ok(Partial {
            out: GpuTensor::from_parts(out, GpuDType::F32, vec![bq, nh, d]),
            lse: GpuTensor::from_parts(lse, GpuDType::F32, vec![bq, nh]),
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
                let Some(args) = self.prepare_decode(&ql, &kl, nh, nkv)? else { return Ok(None) };
                // Shared with the other streams' clones: finish the uploads first.
                self.synchronize()?;
                let args = Arc::new(args);
                let mut cache = self.decode_args.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() > 64 {
                    cache.clear();
                }
                cache.insert(key, args.clone());
                args
            }
        };
        self.decode_with(&args, q, &ql, k, v, &kl).map(Some)
    }

    /// N-way merge of partials of the same queries (f32 outputs), into `out_dtype`. Up to 16
    /// partials in one launch; more are merged in groups of 16.
    pub fn merge_many(&self, parts: &[Partial<GpuTensor>], out_dtype: GpuDType) -> Result<Partial<GpuTensor>> {
        let first = parts.first().ok_or(AttentionError::NothingToMerge)?;
        if parts.len() > 16 {
            let groups = parts.chunks(16).map(|g| self.merge_many(g, GpuDType::F32)).collect::<Result<Vec<_>>>()?;
            return self.merge_many(&groups, out_dtype);
        }
        let shape = first.out.shape().to_vec();
        let d = *shape.last().unwrap_or(&0);
        let rows = first.lse.elem_count();
        for p in parts {
            if p.out.shape() != shape.as_slice() || p.lse.elem_count() != rows || p.out.dtype() != GpuDType::F32 {
                return Err(AttentionError::Shape {
                    what: "partial to merge (f32)",
                    expected: format!("{shape:?} f32"),
                    actual: p.out.shape().to_vec(),
                });
            }
        }
        if !d.is_multiple_of(4) {
            return Err(AttentionError::HeadDim { head_dim: d, supported: "multiples of 4 in the merges" });
        }
        let mut ptrs = Parts { out: [0; 16], lse: [0; 16] };
        let mut guards = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let (o, go) = p.out.slice().device_ptr(&self.stream);
            let (l, gl) = p.lse.slice().device_ptr(&self.stream);
            (ptrs.out[i], ptrs.lse[i]) = (o, l);
            guards.push((go, gl));
        }
        let mut out = self.alloc(out_dtype, &[rows, d])?;
        let mut lse = self.alloc(GpuDType::F32, &[rows])?;
        let f = self.kernels.get(&format!("merge_all_{}", out_dtype.tag()))?;
        let (n, rows_l, d_i) = (parts.len() as i32, rows as i64, d as i32);
        let cfg = elementwise(rows * d / 4);
        let mut b = self.stream.launch_builder(f);
        b.arg(&ptrs).arg(&n).arg(&mut out).arg(&mut lse).arg(&rows_l).arg(&d_i);
        // SAFETY: every pointer addresses `rows * d` f32 outputs and `rows` LSEs, kept alive by
        // `parts` and ordered by the read events the guards record on this stream.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch merge_all"))?;
        drop(guards);
        Ok(Partial {
            out: GpuTensor::from_parts(out, out_dtype, shape),
            lse: GpuTensor::from_parts(lse, GpuDType::F32, first.lse.shape().to_vec()),
        })
    }

    /// Folds `part` into `acc` (online Eq. 4): the output in place (copied first if its buffer
    /// is shared), the LSE into a new buffer. `acc` must be f32.
    pub fn merge_into(&self, acc: Partial<GpuTensor>, part: &Partial<GpuTensor>) -> Result<Partial<GpuTensor>> {
        if acc.out.shape() != part.out.shape()
            || acc.lse.shape() != part.lse.shape()
            || acc.out.dtype() != GpuDType::F32
        {
            return Err(AttentionError::Shape {
                what: "partial to fold",
                expected: format!("{:?} with an f32 accumulator", acc.out.shape()),
                actual: part.out.shape().to_vec(),
            });
        }
        let d = *acc.out.shape().last().unwrap_or(&0);
        if !d.is_multiple_of(4) {
            return Err(AttentionError::HeadDim { head_dim: d, supported: "multiples of 4 in the merges" });
        }
        let rows = acc.lse.elem_count();
        let (out_shape, lse_shape) = (acc.out.shape().to_vec(), acc.lse.shape().to_vec());
        let own = |t: GpuTensor| -> Result<CudaSlice<u8>> {
            Arc::try_unwrap(t.buf).or_else(|shared| self.stream.clone_dtod(&*shared).map_err(cuda_err("cuMemcpyDtoD")))
        };
        let mut acc_out = own(acc.out)?;
        let mut new_lse = self.alloc(GpuDType::F32, &lse_shape)?;
        let f = self.kernels.get(&format!("merge_fold_{}", part.out.dtype().tag()))?;
        let (rows_l, d_i) = (rows as i64, d as i32);
        let cfg = elementwise(rows * d / 4);
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut acc_out).arg(acc.lse.slice()).arg(part.out.slice()).arg(part.lse.slice()).arg(&mut new_lse);
        b.arg(&rows_l).arg(&d_i);
        // SAFETY: shapes checked equal above; `d` is a multiple of 4.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch merge_fold"))?;
        Ok(Partial {
            out: GpuTensor::from_parts(acc_out, GpuDType::F32, out_shape),
            lse: GpuTensor::from_parts(new_lse, GpuDType::F32, lse_shape),
        })
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
        b.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(&mut s_out).arg(&mut o_out);
        // SAFETY: shapes checked above; the kernel reads 64 + 2 x 128 rows of 128 bf16 and
        // writes 2 x 64 x 128 f32.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch wg_selftest"))?;
        Ok((
            GpuTensor::from_parts(s_out, GpuDType::F32, vec![64, 128]),
            GpuTensor::from_parts(o_out, GpuDType::F32, vec![64, 128]),
        ))
    }

    /// Waits until every launch on the stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize"))
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

/// Query rows up to which a partial attention takes the split-KV decode kernel whatever the
/// rows hold.
const DECODE_MAX_ROWS: usize = 16;

/// Query rows up to which a batch of one query per sequence (a decode step) takes it.
const DECODE_MAX_BATCH: usize = 4096;

/// Whether the split-KV decode kernel suits these query rows: a few rows, or one row per
/// sequence (a decode batch). The decode kernel reads each row's keys once per row, so many rows
/// of one sequence (a prefill chunk) go to the prefill kernel, which reads them once per block.
fn decode_shaped(q_layout: &Layout) -> bool {
    if q_layout.len() <= DECODE_MAX_ROWS {
        return true;
    }
    if q_layout.len() > DECODE_MAX_BATCH {
        return false;
    }
    let mut seen = std::collections::HashSet::new();
    q_layout.rows().flatten().all(|t| seen.insert(t.seq))
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
        let ql = self.device_layout(q_layout)?;
        let kl = self.device_layout(kv_layout)?;
        self.flash(q, &ql, k, v, &kl, self.partial_dtype)
    }

    fn merge(&self, acc: Partial<GpuTensor>, next: Partial<GpuTensor>) -> Result<Partial<GpuTensor>> {
        self.merge_into(acc, &next)
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
        Ok(GpuTensor::from_parts(out, first.dtype(), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::kv_splits;

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
