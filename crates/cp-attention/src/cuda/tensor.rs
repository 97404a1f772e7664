//! Device tensors: an immutable, shareable buffer with a dtype and a shape.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use cudarc::driver::{CudaSlice, CudaStream};

use super::cuda_err;
use crate::{AttentionError, Result};

/// Element types of device tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GpuDType {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// f32 (partials, LSE).
    F32,
}

impl GpuDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            GpuDType::Bf16 | GpuDType::F16 => 2,
            GpuDType::F32 => 4,
        }
    }

    pub(crate) fn tag(self) -> &'static str {
        match self {
            GpuDType::Bf16 => "bf16",
            GpuDType::F16 => "f16",
            GpuDType::F32 => "f32",
        }
    }
}

/// A tensor in device memory. Cloning shares the buffer; kernels write fresh buffers (or, for
/// the in-place merge, a buffer they own alone).
#[derive(Clone)]
pub struct GpuTensor {
    pub(crate) buf: Arc<CudaSlice<u8>>,
    dtype: GpuDType,
    shape: Vec<usize>,
}

impl std::fmt::Debug for GpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTensor").field("dtype", &self.dtype).field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl GpuTensor {
    pub(crate) fn from_parts(buf: CudaSlice<u8>, dtype: GpuDType, shape: Vec<usize>) -> GpuTensor {
        GpuTensor { buf: Arc::new(buf), dtype, shape }
    }

    /// The same buffer seen with another shape of no more bytes (a view of its first rows).
    pub(crate) fn with_shape(&self, shape: Vec<usize>) -> GpuTensor {
        GpuTensor { buf: self.buf.clone(), dtype: self.dtype, shape }
    }

    /// Wraps a device buffer of at least `shape`'s bytes (for transports that receive into
    /// their own buffers).
    pub fn from_buffer(buf: CudaSlice<u8>, dtype: GpuDType, shape: Vec<usize>) -> Result<GpuTensor> {
        let need = shape.iter().product::<usize>() * dtype.size();
        if buf.len() < need {
            return Err(AttentionError::Shape {
                what: "device buffer",
                expected: format!("{need} bytes"),
                actual: vec![buf.len()],
            });
        }
        Ok(GpuTensor::from_parts(buf, dtype, shape))
    }

    /// Uninitialised device memory for a tensor of `dtype` and `shape` (at least one element).
    pub fn alloc_buffer(stream: &Arc<CudaStream>, dtype: GpuDType, shape: &[usize]) -> Result<CudaSlice<u8>> {
        GpuTensor::alloc(stream, dtype, shape)
    }

    /// Uninitialised device memory for a tensor (the kernels write every element).
    pub(crate) fn alloc(stream: &Arc<CudaStream>, dtype: GpuDType, shape: &[usize]) -> Result<CudaSlice<u8>> {
        let bytes = shape.iter().product::<usize>().max(1) * dtype.size();
        // SAFETY: the memory is only read after a kernel or a copy has written it.
        let buf = unsafe { stream.alloc::<u8>(bytes) }.map_err(cuda_err("cuMemAlloc"))?;
        Ok(buf)
    }

    /// Uploads f32 values, converting to `dtype`.
    pub fn upload(stream: &Arc<CudaStream>, values: &[f32], shape: &[usize], dtype: GpuDType) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(AttentionError::Shape {
                what: "upload",
                expected: format!("{n} values"),
                actual: shape.to_vec(),
            });
        }
        let bytes: Vec<u8> = match dtype {
            GpuDType::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
            GpuDType::Bf16 => values.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect(),
            GpuDType::F16 => values.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect(),
        };
        let bytes = if bytes.is_empty() { vec![0u8; dtype.size()] } else { bytes };
        let buf = stream.clone_htod(&bytes).map_err(cuda_err("cuMemcpyHtoD"))?;
        Ok(GpuTensor::from_parts(buf, dtype, shape.to_vec()))
    }

    /// Uploads a candle CPU tensor of dtype bf16, f16 or f32 (others are an error).
    pub fn from_candle(stream: &Arc<CudaStream>, t: &Tensor) -> Result<GpuTensor> {
        let dtype = match t.dtype() {
            DType::BF16 => GpuDType::Bf16,
            DType::F16 => GpuDType::F16,
            DType::F32 => GpuDType::F32,
            dtype => return Err(AttentionError::Dtype { what: "GPU tensor", dtype }),
        };
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        GpuTensor::upload(stream, &values, t.dims(), dtype)
    }

    /// Downloads as f32 values (waits for the stream).
    pub fn download(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>> {
        let bytes = stream.clone_dtoh(&*self.buf).map_err(cuda_err("cuMemcpyDtoH"))?;
        let n = self.elem_count();
        let bytes = &bytes[..n * self.dtype.size()];
        Ok(match self.dtype {
            GpuDType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            GpuDType::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            GpuDType::F16 => {
                bytes.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
            }
        })
    }

    /// Downloads into a candle CPU tensor of f32.
    pub fn to_candle(&self, stream: &Arc<CudaStream>) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.download(stream)?, self.shape.as_slice(), &Device::Cpu)?)
    }

    /// Element type.
    pub fn dtype(&self) -> GpuDType {
        self.dtype
    }

    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The device buffer.
    pub fn slice(&self) -> &CudaSlice<u8> {
        &self.buf
    }
}
