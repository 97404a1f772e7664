//! The GPU path: our kernels, compiled at run time by NVRTC, launched through cudarc.
//!
//! - A fused flash-style prefill kernel (`mma.sync` m16n8k16 on bf16/fp16, f32 accumulation,
//!   `ldmatrix` from swizzled shared memory, K/V tiles double-buffered with `cp.async`) writing
//!   O and LSE. Masks come from the rows' global (sequence, position), summarised per tile so
//!   that fully masked tiles are skipped and fully visible ones need no mask work. GQA by head
//!   index; head dims 64 and 128; any lengths.
//! - A split-KV decode kernel (flash-decoding) for a few query rows against per-sequence
//!   caches, the query heads of a KV head sharing each K/V load, and its combine.
//! - The merge: an in-place online fold and an N-way merge; `-inf` safe.
//!
//! [`CudaAttention`] implements [`cp_ring::AttentionOps`] on [`GpuTensor`]s, so the ring
//! algorithms run on the GPU unchanged. Partials are f32 by default.

mod compile;
mod layout;
mod ops;
mod tensor;

pub use compile::{SOURCE, compile, cubin, nvrtc_available};
pub use layout::DeviceLayout;
pub use ops::{CudaAttention, DecodeArgs};
pub use tensor::{GpuDType, GpuTensor, set_poison};

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_available() -> bool {
    // SAFETY: only tries to open the library; calls nothing in it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub(crate) fn cuda_err(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> crate::AttentionError {
    move |e| crate::AttentionError::Cuda { op, code: format!("{e:?}") }
}
