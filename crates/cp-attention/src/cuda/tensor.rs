//! Device tensors: an immutable, shareable buffer with a dtype and a shape; and the pools that
//! recycle their buffers on explicitly synchronised streams.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

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

/// Buffers larger than this are never kept by a [`BufferPool`] (their kernels dwarf an
/// allocation's cost).
const POOL_MAX_BUFFER: usize = 64 << 20;
/// Bytes a [`BufferPool`] keeps at most; a buffer given back past it is freed.
const POOL_MAX_BYTES: usize = 256 << 20;

/// Device buffers of one stream kept for reuse, so that a step of many small tensors (a decode
/// step allocates a dozen) costs no driver call per allocation and free: a freed buffer returns
/// here, and the next allocation of the same size on the stream takes it back.
///
/// Only for streams whose context does not track buffer uses with events
/// (`CudaAttention::new_explicit_sync`): reuse is ordered by the stream (work enqueued after the
/// reuse runs after everything enqueued before the free), and the explicit-sync contract makes
/// any other stream that used the buffer finish before its last owner dropped it. Keeps at most
/// 256 MiB, in buffers of at most 64 MiB; exact sizes only.
pub struct BufferPool {
    stream: Arc<CudaStream>,
    free: Mutex<Kept>,
}

/// A pool's state.
#[derive(Default)]
struct Kept {
    /// Buffers ready for reuse, by size in bytes.
    by_size: HashMap<usize, Vec<CudaSlice<u8>>>,
    /// Their total bytes.
    bytes: usize,
    /// While holding ([`BufferPool::hold`]): buffers given back, not to be reused.
    held: Option<Vec<CudaSlice<u8>>>,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.free.lock().map(|g| g.bytes).unwrap_or(0);
        f.debug_struct("BufferPool").field("bytes_kept", &kept).finish_non_exhaustive()
    }
}

impl BufferPool {
    /// A pool for `stream`, or `None` when its context tracks buffer uses with events (the
    /// tracked buffers' frees wait for other streams; a pool would skip that).
    pub fn new(stream: &Arc<CudaStream>) -> Option<Arc<BufferPool>> {
        if stream.context().is_event_tracking() {
            return None;
        }
        Some(Arc::new(BufferPool { stream: stream.clone(), free: Mutex::new(Kept::default()) }))
    }

    /// The stream the pool's buffers are ordered on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Uninitialised memory for a tensor of `dtype` and `shape` on the pool's stream: a kept
    /// buffer of exactly that size, else a new one.
    pub fn alloc(&self, dtype: GpuDType, shape: &[usize]) -> Result<CudaSlice<u8>> {
        let bytes = GpuTensor::bytes_for(dtype, shape);
        {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(buf) = free.by_size.get_mut(&bytes).and_then(Vec::pop) {
                free.bytes -= bytes;
                return Ok(buf);
            }
        }
        // Memory allocated inside a CUDA graph capture belongs to the graph (mapped only while
        // it runs); kept in the pool, it would be handed out to work outside the graph.
        if capturing(&self.stream)? {
            return Err(AttentionError::Cuda {
                op: "BufferPool::alloc",
                code: format!(
                    "a buffer of {bytes} bytes was not in the pool while the stream was being captured (a graph must \
                     be captured after an uncaptured run of the same step)"
                ),
            });
        }
        GpuTensor::alloc(&self.stream, dtype, shape)
    }

    fn give_back(&self, buf: CudaSlice<u8>) {
        let bytes = buf.len();
        // A buffer of another stream is freed in its own stream's order.
        if !Arc::ptr_eq(buf.stream(), &self.stream) {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = &mut free.held {
            held.push(buf);
        } else if bytes <= POOL_MAX_BUFFER && free.bytes + bytes <= POOL_MAX_BYTES {
            free.bytes += bytes;
            free.by_size.entry(bytes).or_default().push(buf);
        }
    }

    /// From now until [`BufferPool::release_held`], buffers given back are held aside (of any
    /// size), not reused: a step run so allocates one buffer per allocation it makes, and a step
    /// captured so leaves every buffer its graph uses out of the pool.
    pub fn hold(&self) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).held.get_or_insert_with(Vec::new);
    }

    /// Ends [`BufferPool::hold`]; returns the buffers held.
    pub fn release_held(&self) -> Vec<CudaSlice<u8>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).held.take().unwrap_or_default()
    }

    /// Keeps `bufs` (of this pool's stream) for reuse, whatever their size or the pool's
    /// bound: what a step about to be captured needs must all be here.
    pub fn keep(&self, bufs: Vec<CudaSlice<u8>>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for buf in bufs.into_iter().filter(|b| Arc::ptr_eq(b.stream(), &self.stream)) {
            free.bytes += buf.len();
            free.by_size.entry(buf.len()).or_default().push(buf);
        }
    }
}

/// Whether `stream` is being captured into a CUDA graph (where an allocation or an upload would
/// be recorded into the graph instead of done).
pub(crate) fn capturing(stream: &CudaStream) -> Result<bool> {
    let status = stream.capture_status().map_err(cuda_err("cuStreamIsCapturing"))?;
    Ok(status != cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
}

/// A tensor's device memory: freed when dropped, or given back to the pool it came from.
pub(crate) struct DeviceBuffer {
    slice: ManuallyDrop<CudaSlice<u8>>,
    pool: Option<Arc<BufferPool>>,
}

impl DeviceBuffer {
    /// `slice`, given back to `pool` (if any) when dropped.
    pub(crate) fn new(slice: CudaSlice<u8>, pool: Option<&Arc<BufferPool>>) -> DeviceBuffer {
        DeviceBuffer { slice: ManuallyDrop::new(slice), pool: pool.cloned() }
    }

    /// A tensor of this buffer (which returns to its pool, if any, when the last clone is dropped).
    pub(crate) fn into_tensor(self, dtype: GpuDType, shape: Vec<usize>) -> GpuTensor {
        GpuTensor { buf: Arc::new(self), dtype, shape }
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: taken once, here; the field is not used again.
        let slice = unsafe { ManuallyDrop::take(&mut self.slice) };
        match &self.pool {
            Some(pool) => pool.give_back(slice),
            None => drop(slice),
        }
    }
}

impl Deref for DeviceBuffer {
    type Target = CudaSlice<u8>;
    fn deref(&self) -> &CudaSlice<u8> {
        &self.slice
    }
}

impl DerefMut for DeviceBuffer {
    fn deref_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.slice
    }
}

/// A tensor in device memory. Cloning shares the buffer; kernels write fresh buffers (or, for
/// the in-place merge, a buffer they own alone).
#[derive(Clone)]
pub struct GpuTensor {
    pub(crate) buf: Arc<DeviceBuffer>,
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
        DeviceBuffer::new(buf, None).into_tensor(dtype, shape)
    }

    /// Bytes of a buffer for `dtype` and `shape` (at least one element).
    fn bytes_for(dtype: GpuDType, shape: &[usize]) -> usize {
        shape.iter().product::<usize>().max(1) * dtype.size()
    }

    /// The same buffer seen with another shape of no more bytes (a view of its first rows).
    pub(crate) fn with_shape(&self, shape: Vec<usize>) -> GpuTensor {
        GpuTensor { buf: self.buf.clone(), dtype: self.dtype, shape }
    }

    /// Wraps a device buffer of at least `shape`'s bytes (for transports that receive into
    /// their own buffers).
    pub fn from_buffer(buf: CudaSlice<u8>, dtype: GpuDType, shape: Vec<usize>) -> Result<GpuTensor> {
        GpuTensor::from_buffer_in(buf, None, dtype, shape)
    }

    /// [`GpuTensor::from_buffer`] for a buffer from [`GpuTensor::alloc_buffer_in`]: it returns to
    /// `pool` (if any) when the tensor's last clone is dropped.
    pub fn from_buffer_in(
        buf: CudaSlice<u8>,
        pool: Option<&Arc<BufferPool>>,
        dtype: GpuDType,
        shape: Vec<usize>,
    ) -> Result<GpuTensor> {
        let need = shape.iter().product::<usize>() * dtype.size();
        if buf.len() < need {
            return Err(AttentionError::Shape {
                what: "device buffer",
                expected: format!("{need} bytes"),
                actual: vec![buf.len()],
            });
        }
        Ok(DeviceBuffer::new(buf, pool).into_tensor(dtype, shape))
    }

    /// Uninitialised device memory for a tensor of `dtype` and `shape` (at least one element).
    pub fn alloc_buffer(stream: &Arc<CudaStream>, dtype: GpuDType, shape: &[usize]) -> Result<CudaSlice<u8>> {
        GpuTensor::alloc(stream, dtype, shape)
    }

    /// [`GpuTensor::alloc_buffer`] from `pool` where there is one (it orders its buffers on its
    /// own stream), else on `stream`.
    pub fn alloc_buffer_in(
        stream: &Arc<CudaStream>,
        pool: Option<&Arc<BufferPool>>,
        dtype: GpuDType,
        shape: &[usize],
    ) -> Result<CudaSlice<u8>> {
        match pool {
            Some(pool) => pool.alloc(dtype, shape),
            None => GpuTensor::alloc(stream, dtype, shape),
        }
    }

    /// Uninitialised device memory for a tensor (the kernels write every element).
    pub(crate) fn alloc(stream: &Arc<CudaStream>, dtype: GpuDType, shape: &[usize]) -> Result<CudaSlice<u8>> {
        let bytes = GpuTensor::bytes_for(dtype, shape);
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
        let bytes = stream.clone_dtoh(self.slice()).map_err(cuda_err("cuMemcpyDtoH"))?;
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
