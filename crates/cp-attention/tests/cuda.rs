//! The GPU path without a GPU: the kernels compile with NVRTC for the H100 (sm_90a, with the
//! wgmma kernels; sm_90 and sm_80 without them), and asking
//! for a device on a machine without one is a clear error, not a panic.
//!
//! These run with `--features cuda`. Where NVRTC is not installed they say so and pass, unless
//! `CP_REQUIRE_NVRTC=1` (set by CI, which installs it) makes a missing NVRTC a failure. The
//! numerical checks of the kernels run on a GPU machine: `cp-gpu-bench check`.
#![cfg(feature = "cuda")]

use cp_attention::AttentionError;
use cp_attention::cuda::{CudaAttention, compile, driver_available, kernel_table, nvrtc_available};

fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc_available() {
        return true;
    }
    assert!(
        std::env::var_os("CP_REQUIRE_NVRTC").is_none(),
        "{test}: CP_REQUIRE_NVRTC is set but libnvrtc cannot be loaded"
    );
    eprintln!("{test}: SKIPPED: libnvrtc not found (install nvidia-cuda-nvrtc and put its lib on LD_LIBRARY_PATH)");
    false
}

#[test]
fn kernels_compile_to_a_cubin_for_sm_90() {
    if !nvrtc_or_skip("kernels_compile_to_a_cubin_for_sm_90") {
        return;
    }
    for arch in ["sm_90a", "sm_90", "sm_80"] {
        let cubin = compile(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(&cubin[..4], b"\x7fELF", "{arch}: not an ELF cubin");
        // The table loading uses: every kernel the GPU path launches is in the module.
        let table = kernel_table(arch == "sm_90a");
        assert!(table.len() > 40, "{arch}: only {} kernels listed", table.len());
        for k in table {
            let name = k.name.as_bytes();
            assert!(cubin.windows(name.len()).any(|w| w == name), "{arch}: kernel {} missing", k.name);
        }
    }
}

#[test]
fn no_gpu_is_a_clear_error() {
    if driver_available() {
        eprintln!("no_gpu_is_a_clear_error: SKIPPED: a CUDA driver is present here");
        return;
    }
    let err = CudaAttention::new(0).unwrap_err();
    assert!(matches!(err, AttentionError::MissingLibrary { library: "libcuda", .. }), "{err}");
    assert!(err.to_string().contains("no NVIDIA driver"), "{err}");
}
