//! The GPU path: our kernels, compiled at run time by NVRTC, launched through cudarc.
//!
//! - Fused flash-style prefill kernels writing O and LSE: on Hopper (sm_90a) with warpgroup
//!   MMA (`wgmma`, operands in 128-byte-swizzled shared memory, a 3-stage `cp.async` ring, the
//!   softmax of one key tile overlapping the P V product of the previous one); elsewhere with
//!   `mma.sync` m16n8k16 (`ldmatrix` from swizzled shared memory, double-buffered K/V tiles).
//!   bf16/fp16 inputs, f32 accumulation. Masks come from the rows' global (sequence, position), summarised per tile so
//!   that fully masked tiles are skipped and fully visible ones need no mask work. GQA by head
//!   index; head dims 64 and 128; any lengths.
//! - A split-KV decode kernel (flash-decoding) for a few query rows against per-sequence
//!   caches: the query heads of a KV head are the rows of one tensor-core tile, so each key is
//!   read once for all of them, streamed through per-warp `cp.async` rings; and its combine.
//! - The merge: an in-place online fold and an N-way merge; `-inf` safe.
//!
//! [`CudaAttention`] implements [`cp_ring::AttentionOps`] on [`GpuTensor`]s, so the ring
//! algorithms run on the GPU unchanged. Partials are f32 by default.

mod compile;
mod decode;
mod fill;
mod layout;
mod merge;
mod ops;
mod prefill;
mod table;
mod tensor;

pub use compile::{SOURCE, compile, cubin, nvrtc_available};
pub use decode::{BoundDecode, DecodeArgs, DecodeBindings, DecodeKernel};
pub use layout::DeviceLayout;
pub use ops::{CudaAttention, Pinned};
pub use prefill::{ItemSchedule, PrefillKernel, TailMode, TailPlan, kv_splits, tail_plan};
pub use table::{KernelEntry, kernel_table};
pub use tensor::{BufferPool, GpuDType, GpuTensor};

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_available() -> bool {
    #[cfg(feature = "cuda-linked")]
    return true; // linked into the binary (feature `cuda-linked`)
    // SAFETY: only tries to open the library; calls nothing in it.
    #[cfg(not(feature = "cuda-linked"))]
    unsafe {
        cudarc::driver::sys::is_culib_present()
    }
}

pub(crate) fn cuda_err(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> crate::AttentionError {
    move |e| crate::AttentionError::Cuda { op, code: format!("{e:?}") }
}
