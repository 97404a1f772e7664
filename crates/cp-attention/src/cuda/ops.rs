//! Kernel launches, and the `AttentionOps` implementation on device tensors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cp_ring::{AttentionOps, Partial};
use cp_shard::Layout;
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use super::layout::{DeviceLayout, Q_TILE};
use super::{GpuDType, GpuTensor, cubin, cuda_err, driver_available};
use crate::{AttentionError, Result};

/// Dynamic shared memory of the prefill kernel: a Q tile and two K and two V tiles.
fn flash_smem(head_dim: usize) -> usize {
    (Q_TILE + 4 * super::layout::K_TILE) * head_dim * 2
}

/// The compiled module's functions by name.
struct Kernels {
    functions: HashMap<String, CudaFunction>,
}

impl Kernels {
    fn load(ctx: &Arc<CudaContext>, arch: &str) -> Result<Kernels> {
        let module = ctx.load_module(Ptx::from_binary(cubin(arch)?)).map_err(cuda_err("cuModuleLoadData"))?;
        let mut names: Vec<String> = Vec::new();
        for d in [64, 128] {
            for t in ["bf16", "f16"] {
                names.extend(["f32", "b16"].map(|o| format!("flash_fwd_d{d}_{t}_{o}")));
                names.extend([1, 4, 8].map(|g| format!("decode_d{d}_{t}_g{g}")));
            }
        }
        names.extend(["merge_fold_f32", "merge_fold_bf16", "merge_fold_f16"].map(String::from));
        names.extend(["merge_all_f32", "merge_all_bf16", "merge_all_f16"].map(String::from));
        let mut functions = HashMap::new();
        for name in names {
            let f = module.load_function(&name).map_err(cuda_err("cuModuleGetFunction"))?;
            if let Some(d) = name.strip_prefix("flash_fwd_d").and_then(|r| r.split('_').next()) {
                let d: usize = d.parse().unwrap_or(128);
                f.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    flash_smem(d) as i32,
                )
                .map_err(cuda_err("cuFuncSetAttribute(max dynamic shared memory)"))?;
            }
            functions.insert(name, f);
        }
        Ok(Kernels { functions })
    }

    fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| AttentionError::Unsupported(format!("no kernel {name}")))
    }
}

/// Partial attention and merges on one CUDA stream.
pub struct CudaAttention {
    stream: Arc<CudaStream>,
    kernels: Arc<Kernels>,
    sm_count: usize,
    layouts: Mutex<HashMap<Layout, Arc<DeviceLayout>>>,
    /// Softmax scale; `None` means `1 / sqrt(DH)`.
    pub scale: Option<f64>,
    /// dtype of the partial outputs of the prefill kernel (f32 by default, for exact merges).
    pub partial_dtype: GpuDType,
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
            return Err(AttentionError::Unsupported(format!(
                "compute capability {major}.{minor}: the kernels need 8.0 or newer (mma.sync bf16, cp.async)"
            )));
        }
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda_err("cuDeviceGetAttribute"))? as usize;
        let kernels = Arc::new(Kernels::load(&ctx, &format!("sm_{major}{minor}"))?);
        let stream = ctx.new_stream().map_err(cuda_err("cuStreamCreate"))?;
        Ok(CudaAttention {
            stream,
            kernels,
            sm_count,
            layouts: Mutex::default(),
            scale: None,
            partial_dtype: GpuDType::F32,
        })
    }

    /// The same kernels on another stream of the same context (one per rank on a shared GPU).
    pub fn with_stream(&self, stream: Arc<CudaStream>) -> CudaAttention {
        CudaAttention {
            stream,
            kernels: self.kernels.clone(),
            sm_count: self.sm_count,
            layouts: Mutex::default(),
            scale: self.scale,
            partial_dtype: self.partial_dtype,
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

    /// The device copy of `layout`, uploaded once and cached.
    pub fn device_layout(&self, layout: &Layout) -> Result<Arc<DeviceLayout>> {
        let mut cache = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = cache.get(layout) {
            return Ok(found.clone());
        }
        let uploaded = Arc::new(DeviceLayout::new(&self.stream, layout)?);
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert(layout.clone(), uploaded.clone());
        Ok(uploaded)
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
        if nkv == 0 || nh % nkv != 0 {
            return Err(AttentionError::Heads { n_heads: nh, n_kv_heads: nkv });
        }
        if d != 64 && d != 128 {
            return Err(AttentionError::Unsupported(format!("head dim {d} (the kernels support 64 and 128)")));
        }
        if q.dtype() == GpuDType::F32 || k.dtype() != q.dtype() || v.dtype() != q.dtype() {
            return Err(AttentionError::Unsupported(format!(
                "dtypes q {:?}, k {:?}, v {:?}: inputs must all be bf16 or all f16",
                q.dtype(),
                k.dtype(),
                v.dtype()
            )));
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
            return Err(AttentionError::Unsupported(format!("output dtype {out_dtype:?} for {:?} inputs", q.dtype())));
        }
        let name =
            format!("flash_fwd_d{d}_{}_{}", q.dtype().tag(), if out_dtype == GpuDType::F32 { "f32" } else { "b16" });
        let f = self.kernels.get(&name)?;
        let mut out = GpuTensor::alloc(&self.stream, out_dtype, &[tq, nh, d])?;
        let mut lse = GpuTensor::alloc(&self.stream, GpuDType::F32, &[tq, nh])?;
        if tq > 0 {
            let (tq_i, tk_i, nh_i, nkv_i) = (tq as i32, tk as i32, nh as i32, nkv as i32);
            let scale = self.scale_log2(d);
            let cfg = LaunchConfig {
                grid_dim: (tq.div_ceil(Q_TILE) as u32, nh as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: flash_smem(d) as u32,
            };
            let mut b = self.stream.launch_builder(f);
            b.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(&mut out).arg(&mut lse);
            b.arg(&ql.seq).arg(&ql.pos).arg(&kl.seq).arg(&kl.pos).arg(&ql.q_tiles).arg(&kl.k_tiles);
            b.arg(&tq_i).arg(&tk_i).arg(&nh_i).arg(&nkv_i).arg(&scale);
            // SAFETY: argument types and order match the kernel; buffers hold the shapes checked
            // above; the grid covers every query row and the dynamic shared memory is set.
            unsafe { b.launch(cfg) }.map_err(cuda_err("launch flash_fwd"))?;
        }
        Ok(Partial {
            out: GpuTensor::from_parts(out, out_dtype, vec![tq, nh, d]),
            lse: GpuTensor::from_parts(lse, GpuDType::F32, vec![tq, nh]),
        })
    }

    /// For each query row, the contiguous kv row range of its sequence, if the layouts allow
    /// the decode kernel (every sequence's keys contiguous).
    fn decode_ranges(q: &DeviceLayout, kv: &DeviceLayout) -> Option<(Vec<i32>, Vec<i32>, Vec<i32>)> {
        let mut ranges: HashMap<usize, (usize, usize, usize)> = HashMap::new(); // seq -> (first, last, count)
        for (row, t) in kv.tokens.iter().enumerate() {
            if let Some(t) = t {
                let e = ranges.entry(t.seq).or_insert((row, row, 0));
                e.1 = row;
                e.2 += 1;
            }
        }
        if ranges.values().any(|&(first, last, count)| last + 1 - first != count) {
            return None;
        }
        let (mut start, mut len, mut pos) = (Vec::new(), Vec::new(), Vec::new());
        for t in &q.tokens {
            let (s, l, p) = match t.and_then(|t| ranges.get(&t.seq).map(|r| (r, t.pos))) {
                Some((&(first, last, _), p)) => (first as i32, (last + 1 - first) as i32, p as i32),
                None => (0, 0, 0),
            };
            start.push(s);
            len.push(l);
            pos.push(p);
        }
        Some((start, len, pos))
    }

    /// Split-KV decode of a few query rows (one per sequence) against their sequences' keys;
    /// `None` when the layouts or head ratio do not suit the decode kernel.
    pub fn decode(
        &self,
        q: &GpuTensor,
        ql: &DeviceLayout,
        k: &GpuTensor,
        v: &GpuTensor,
        kl: &DeviceLayout,
    ) -> Result<Option<Partial<GpuTensor>>> {
        let (bq, _tk, nh, nkv, d) = self.check(q, ql.rows, k, v, kl.rows)?;
        let group = nh / nkv;
        if ![1, 4, 8].contains(&group) || bq == 0 {
            return Ok(None);
        }
        let Some((start, len, pos)) = Self::decode_ranges(ql, kl) else { return Ok(None) };
        let max_len = len.iter().copied().max().unwrap_or(0).max(1) as usize;
        let target_blocks = 4 * self.sm_count;
        let splits = target_blocks.div_ceil(nkv * bq).clamp(1, max_len.div_ceil(256));
        let split_len = max_len.div_ceil(splits).div_ceil(64) * 64;
        let splits = max_len.div_ceil(split_len);
        let rows = bq * nh;
        let up = |v: &[i32]| self.stream.clone_htod(v).map_err(cuda_err("cuMemcpyHtoD(decode ranges)"));
        let (start, len, pos) = (up(&start)?, up(&len)?, up(&pos)?);
        let mut part_out = GpuTensor::alloc(&self.stream, GpuDType::F32, &[splits, rows, d])?;
        let mut part_lse = GpuTensor::alloc(&self.stream, GpuDType::F32, &[splits, rows])?;
        let f = self.kernels.get(&format!("decode_d{d}_{}_g{group}", q.dtype().tag()))?;
        let (bq_i, nh_i, nkv_i, split_i) = (bq as i32, nh as i32, nkv as i32, split_len as i32);
        let scale = self.scale_log2(d);
        let cfg = LaunchConfig {
            grid_dim: (splits as u32, nkv as u32, bq as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(&start).arg(&len).arg(&pos).arg(&kl.pos);
        b.arg(&mut part_out).arg(&mut part_lse).arg(&bq_i).arg(&nh_i).arg(&nkv_i).arg(&split_i).arg(&scale);
        // SAFETY: argument types and order match the kernel; every row range lies inside k/v.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch decode"))?;
        let out_f32 = [splits * rows * d * 4, splits * rows * 4];
        let parts: Vec<(u64, u64)> = {
            let (po, _g1) = part_out.device_ptr(&self.stream);
            let (pl, _g2) = part_lse.device_ptr(&self.stream);
            (0..splits).map(|s| (po + (s * rows * d * 4) as u64, pl + (s * rows * 4) as u64)).collect()
        };
        debug_assert!(out_f32[0] > 0);
        let merged = self.merge_pointers(&parts, rows, d, GpuDType::F32)?;
        // The partial buffers must live until the merge kernel has read them; the stream
        // orders the merge after the decode, and the drop below is stream-ordered too.
        drop((part_out, part_lse));
        Ok(Some(Partial {
            out: GpuTensor::from_parts(merged.0, GpuDType::F32, vec![bq, nh, d]),
            lse: GpuTensor::from_parts(merged.1, GpuDType::F32, vec![bq, nh]),
        }))
    }

    /// N-way merge of f32 partials given by device pointers `(out, lse)`, each `rows x d`.
    fn merge_pointers(
        &self,
        parts: &[(u64, u64)],
        rows: usize,
        d: usize,
        out_dtype: GpuDType,
    ) -> Result<(CudaSlice<u8>, CudaSlice<u8>)> {
        let outs: Vec<u64> = parts.iter().map(|p| p.0).collect();
        let lses: Vec<u64> = parts.iter().map(|p| p.1).collect();
        let outs = self.stream.clone_htod(&outs).map_err(cuda_err("cuMemcpyHtoD(pointers)"))?;
        let lses = self.stream.clone_htod(&lses).map_err(cuda_err("cuMemcpyHtoD(pointers)"))?;
        let mut out = GpuTensor::alloc(&self.stream, out_dtype, &[rows, d])?;
        let mut lse = GpuTensor::alloc(&self.stream, GpuDType::F32, &[rows])?;
        let f = self.kernels.get(&format!("merge_all_{}", out_dtype.tag()))?;
        let (n, rows_l, d_i) = (parts.len() as i32, rows as i64, d as i32);
        let threads = rows * d / 4;
        let cfg = LaunchConfig {
            grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(&outs).arg(&lses).arg(&n).arg(&mut out).arg(&mut lse).arg(&rows_l).arg(&d_i);
        // SAFETY: every pointer addresses `rows * d` f32 outputs and `rows` LSEs alive until
        // this stream reaches the kernel; `d` is a multiple of 4.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch merge_all"))?;
        Ok((out, lse))
    }

    /// N-way merge of partials of the same queries (f32 outputs), into `out_dtype`.
    pub fn merge_many(&self, parts: &[Partial<GpuTensor>], out_dtype: GpuDType) -> Result<Partial<GpuTensor>> {
        let first = parts.first().ok_or(AttentionError::NothingToMerge)?;
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
        if d % 4 != 0 {
            return Err(AttentionError::Unsupported(format!("head dim {d} not a multiple of 4 in merge")));
        }
        let mut guards = Vec::new();
        let mut ptrs = Vec::new();
        for p in parts {
            let (o, go) = p.out.slice().device_ptr(&self.stream);
            let (l, gl) = p.lse.slice().device_ptr(&self.stream);
            ptrs.push((o, l));
            guards.push((go, gl));
        }
        let (out, lse) = self.merge_pointers(&ptrs, rows, d, out_dtype)?;
        drop(guards);
        Ok(Partial {
            out: GpuTensor::from_parts(out, out_dtype, shape),
            lse: GpuTensor::from_parts(lse, GpuDType::F32, first.lse.shape().to_vec()),
        })
    }

    /// Folds `part` into `acc` in place (online Eq. 4). `acc` must be f32; it is copied first
    /// if its buffer is shared.
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
        if d % 4 != 0 {
            return Err(AttentionError::Unsupported(format!("head dim {d} not a multiple of 4 in merge")));
        }
        let rows = acc.lse.elem_count();
        let (out_shape, lse_shape) = (acc.out.shape().to_vec(), acc.lse.shape().to_vec());
        let own = |t: GpuTensor| -> Result<CudaSlice<u8>> {
            Arc::try_unwrap(t.buf).or_else(|shared| self.stream.clone_dtod(&*shared).map_err(cuda_err("cuMemcpyDtoD")))
        };
        let mut acc_out = own(acc.out)?;
        let mut acc_lse = own(acc.lse)?;
        let f = self.kernels.get(&format!("merge_fold_{}", part.out.dtype().tag()))?;
        let (rows_l, d_i) = (rows as i64, d as i32);
        let threads = rows * d / 4;
        let cfg = LaunchConfig {
            grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut acc_out).arg(&mut acc_lse).arg(part.out.slice()).arg(part.lse.slice()).arg(&rows_l).arg(&d_i);
        // SAFETY: shapes checked equal above; `d` is a multiple of 4.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch merge_fold"))?;
        Ok(Partial {
            out: GpuTensor::from_parts(acc_out, GpuDType::F32, out_shape),
            lse: GpuTensor::from_parts(acc_lse, GpuDType::F32, lse_shape),
        })
    }

    /// Waits until every launch on the stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize"))
    }
}

/// Query rows up to which a partial attention takes the split-KV decode kernel.
const DECODE_MAX_ROWS: usize = 16;

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
        let ql = self.device_layout(q_layout)?;
        let kl = self.device_layout(kv_layout)?;
        if q_layout.len() <= DECODE_MAX_ROWS {
            if let Some(p) = self.decode(q, &ql, k, v, &kl)? {
                return Ok(p);
            }
        }
        self.flash(q, &ql, k, v, &kl, self.partial_dtype)
    }

    fn merge(&self, acc: Partial<GpuTensor>, next: Partial<GpuTensor>) -> Result<Partial<GpuTensor>> {
        self.merge_into(acc, &next)
    }

    fn merge_all(&self, parts: Vec<Partial<GpuTensor>>) -> Result<Partial<GpuTensor>> {
        self.merge_many(&parts, GpuDType::F32)
    }
}
