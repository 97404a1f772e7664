//! The GPU checks as tests: every kernel against the f64 oracle, the wgmma building blocks, and
//! every ring algorithm on every placement this machine has (1..8 ranks on one GPU, NCCL and
//! peer copies on every GPU). They run wherever a GPU is present — build them with
//! `cargo test -p cp-bench --no-run` and run the test binary on the GPU machine — and on a
//! machine without one each says, by name, that it was skipped.

use std::time::Duration;

use cp_attention::cuda::CudaAttention;
use cp_bench::{check, device_count, kernels};

/// Whether the test can run here; says so by name when it cannot.
fn gpu_or_skip(test: &str) -> bool {
    if device_count() == 0 {
        eprintln!("{test}: SKIPPED: no NVIDIA GPU on this machine");
        return false;
    }
    true
}

#[test]
fn every_kernel_matches_the_oracle() {
    if !gpu_or_skip("every_kernel_matches_the_oracle") {
        return;
    }
    let mut ops = CudaAttention::new(0).expect("GPU 0");
    assert!(kernels::check(&mut ops).expect("kernel check ran"), "some kernel checks FAILED (see the lines above)");
}

#[test]
fn the_wgmma_building_blocks_compute_exact_products() {
    if !gpu_or_skip("the_wgmma_building_blocks_compute_exact_products") {
        return;
    }
    let ops = CudaAttention::new(0).expect("GPU 0");
    match kernels::selftest(&ops) {
        Ok(pass) => assert!(pass, "the wgmma self-test FAILED"),
        Err(e) => eprintln!("the_wgmma_building_blocks_compute_exact_products: SKIPPED: {e}"),
    }
}

#[test]
fn every_ring_algorithm_matches_the_oracle_on_every_placement() {
    if !gpu_or_skip("every_ring_algorithm_matches_the_oracle_on_every_placement") {
        return;
    }
    let ok = check::check_all(device_count(), Duration::from_secs(60)).expect("ring check ran");
    assert!(ok, "some ring checks FAILED (see the lines above)");
}
