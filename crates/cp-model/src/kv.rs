//! What a KV cache that owns its tensors needs from a device, beyond attention.

use candle_core::Tensor;
use cp_attention::{AttentionError, CpuAttention};
use cp_ring::AttentionOps;

/// Buffers a rank's KV cache keeps on a device: allocated once per growth, written in place,
/// read through views. Implemented for the CPU ([`CpuAttention`], candle tensors) and, with the
/// `cuda` feature, for the GPU (`CudaAttention`, device buffers).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use cp_attention::CpuAttention;
/// use cp_model::KvOps;
///
/// let ops = CpuAttention::default();
/// let rows = Tensor::ones((3, 2, 4), DType::F32, &Device::Cpu)?;
/// let mut buf = ops.alloc_rows(&rows, 8)?; // 8 rows of [2, 4], zeros
/// ops.copy_rows(&mut buf, 5, &rows, 1, 2)?; // rows 1..3 of `rows` into rows 5..7
/// let view = ops.first_rows(&buf, 7)?; // no copy
/// assert_eq!(view.sum_all()?.to_scalar::<f32>()?, 16.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait KvOps: AttentionOps {
    /// A buffer of `rows` rows shaped and typed like `like` past its first dimension.
    fn alloc_rows(&self, like: &Self::Tensor, rows: usize) -> Result<Self::Tensor, Self::Error>;

    /// Copies rows `from..from + count` of `src` into rows `at..at + count` of `dst`, in place.
    /// Shapes past the first dimension and dtypes must agree.
    fn copy_rows(
        &self,
        dst: &mut Self::Tensor,
        at: usize,
        src: &Self::Tensor,
        from: usize,
        count: usize,
    ) -> Result<(), Self::Error>;

    /// The first `rows` rows of `t`, sharing its memory (no copy).
    fn first_rows(&self, t: &Self::Tensor, rows: usize) -> Result<Self::Tensor, Self::Error>;
}

impl KvOps for CpuAttention {
    fn alloc_rows(&self, like: &Tensor, rows: usize) -> Result<Tensor, AttentionError> {
        let mut dims = like.dims().to_vec();
        if dims.is_empty() {
            return Err(AttentionError::Shape { what: "cached rows", expected: "[rows, ...]".into(), actual: dims });
        }
        dims[0] = rows;
        Ok(Tensor::zeros(dims, like.dtype(), like.device())?)
    }

    fn copy_rows(
        &self,
        dst: &mut Tensor,
        at: usize,
        src: &Tensor,
        from: usize,
        count: usize,
    ) -> Result<(), AttentionError> {
        if count == 0 {
            return Ok(());
        }
        // slice_set writes into dst's storage (shared with its views) and needs a contiguous source.
        let rows = src.narrow(0, from, count)?.contiguous()?;
        Ok(dst.slice_set(&rows, 0, at)?)
    }

    fn first_rows(&self, t: &Tensor, rows: usize) -> Result<Tensor, AttentionError> {
        Ok(t.narrow(0, 0, rows)?)
    }
}
