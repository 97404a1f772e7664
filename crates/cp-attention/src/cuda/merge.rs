//! Merge launches: the in-place online fold and the N-way merge of partials (Eq. 4).

use cp_ring::Partial;
use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};

use super::ops::CudaAttention;
use super::{GpuDType, GpuTensor, cuda_err};
use crate::{AttentionError, Result};

/// One thread per four elements (the merge kernels), 256 threads a block.
pub(super) fn elementwise(threads: usize) -> LaunchConfig {
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

impl CudaAttention {
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
        b.arg(&ptrs).arg(&n).arg(&mut *out).arg(&mut *lse).arg(&rows_l).arg(&d_i);
        // SAFETY: every pointer addresses `rows * d` f32 outputs and `rows` LSEs, kept alive by
        // `parts` and ordered by the read events the guards record on this stream.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch merge_all"))?;
        drop(guards);
        Ok(Partial {
            out: out.into_tensor(out_dtype, shape),
            lse: lse.into_tensor(GpuDType::F32, first.lse.shape().to_vec()),
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
        let mut acc_out = self.owned(acc.out)?;
        let mut new_lse = self.alloc(GpuDType::F32, &lse_shape)?;
        let f = self.kernels.get(&format!("merge_fold_{}", part.out.dtype().tag()))?;
        let (rows_l, d_i) = (rows as i64, d as i32);
        let cfg = elementwise(rows * d / 4);
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut *acc_out).arg(acc.lse.slice()).arg(part.out.slice()).arg(part.lse.slice()).arg(&mut *new_lse);
        b.arg(&rows_l).arg(&d_i);
        // SAFETY: shapes checked equal above; `d` is a multiple of 4.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch merge_fold"))?;
        Ok(Partial {
            out: acc_out.into_tensor(GpuDType::F32, out_shape),
            lse: new_lse.into_tensor(GpuDType::F32, lse_shape),
        })
    }
}
