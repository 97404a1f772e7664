//! Without a GPU or without NCCL, the GPU ring reports a clear error instead of panicking.
//! (On a GPU machine these skip; `cp-ring-bench check` verifies the ring there.)

use cp_attention::cuda::{CudaAttention, driver_available};
use cp_nccl::{GpuRingError, NcclTransport, nccl_available};

#[test]
fn no_driver_is_a_clear_error() {
    if driver_available() {
        eprintln!("no_driver_is_a_clear_error: SKIPPED: a CUDA driver is present here");
        return;
    }
    let err = CudaAttention::new(0).unwrap_err().to_string();
    assert!(err.contains("libcuda could not be loaded"), "{err}");
}

#[test]
fn no_nccl_is_a_clear_error() {
    if nccl_available() {
        eprintln!("no_nccl_is_a_clear_error: SKIPPED: libnccl is present here");
        return;
    }
    let err = NcclTransport::unique_id().unwrap_err();
    assert!(matches!(err, GpuRingError::MissingLibrary { library: "libnccl", .. }), "{err}");
}
