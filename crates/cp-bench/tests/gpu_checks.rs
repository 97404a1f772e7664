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

#[test]
fn the_model_api_matches_the_oracle_on_every_placement() {
    if !gpu_or_skip("the_model_api_matches_the_oracle_on_every_placement") {
        return;
    }
    use cp_ring::Algorithm::{GatherKv, GatherQ, PassKv, PassQ};
    let gpus = device_count();
    let mut placements: Vec<(cp_nccl::Placement, String)> =
        (1..=4).map(|n| (cp_nccl::Placement::SameGpu { device: 0, world_size: n }, "same-GPU".to_string())).collect();
    if gpus >= 2 {
        placements.push((cp_nccl::Placement::Gpus((0..gpus).collect()), format!("NCCL {gpus} GPUs")));
        placements.push((cp_nccl::Placement::Peer((0..gpus).collect()), format!("peer {gpus} GPUs")));
    }
    let seed = 0x3d31 ^ u64::from(std::process::id());
    let mut all_ok = true;
    for (placement, name) in placements {
        let ring = cp_nccl::GpuRing::new(placement, Duration::from_secs(60)).expect("ring");
        let cases = [(PassKv, PassQ, 2), (PassQ, GatherQ, 2), (GatherKv, GatherQ, 2), (PassKv, GatherQ, 1)];
        for (prefill, decode, layers) in cases {
            let lines = cp_bench::model_check::check_model(&ring, &name, seed, prefill, decode, layers);
            for line in lines.expect("model check ran") {
                println!("  {} {}", if line.ok { "[ok]    " } else { "[FAILED]" }, line.line);
                all_ok &= line.ok;
            }
        }
    }
    assert!(all_ok, "some model checks FAILED (see the lines above)");
}

/// A decode step through the model API at two cache sizes: it writes one row (no copy of the
/// cache), and its time is printed (attention itself reads the whole cache).
#[test]
fn a_model_decode_step_copies_only_its_row() {
    if !gpu_or_skip("a_model_decode_step_copies_only_its_row") {
        return;
    }
    let ops = CudaAttention::new(0).expect("GPU 0");
    let rows = cp_bench::model_check::decode_cost(&ops, &[8000, 131_000], 50).expect("decode cost ran");
    for r in &rows {
        println!(
            "  model decode step, context {}: step p50 {:.3} ms, attend p50 {:.3} ms, raw kernel p50 {:.3} ms, rows written per step {}",
            r.context, r.step_ms, r.attend_ms, r.kernel_ms, r.rows_written
        );
        assert_eq!(r.rows_written, 1.0, "context {}: a decode step copied cache rows", r.context);
    }
}

/// Ring steps captured as CUDA graphs and replayed with new inputs each time, against the
/// oracle; and a placement that cannot be captured says so instead of recording garbage.
#[test]
fn graph_replays_match_the_oracle() {
    if !gpu_or_skip("graph_replays_match_the_oracle") {
        return;
    }
    use cp_nccl::{GpuRing, Placement};
    let gpus = device_count();
    let mut placements = vec![
        (Placement::SameGpu { device: 0, world_size: 1 }, "ring of one".to_string()),
        (Placement::Gpus(vec![0]), "NCCL".to_string()),
    ];
    if gpus >= 2 {
        placements.push((Placement::Gpus((0..gpus).collect()), format!("NCCL {gpus} GPUs")));
    }
    let seed = 0x9a4f ^ u64::from(std::process::id());
    let mut all_ok = true;
    for (placement, name) in placements {
        let ring = GpuRing::new(placement, Duration::from_secs(60)).expect("ring");
        let mut lines = check::check_graphs(&ring, &name, seed, 3).expect("graph check ran");
        // One graph per shape: rebound token after token, the placement wrapping twice.
        let tokens = 2 * ring.world_size() + 2;
        lines.extend(check::check_rebound(&ring, &name, seed, tokens).expect("rebound graph check ran"));
        for line in lines {
            println!("  {} {}", if line.ok { "[ok]    " } else { "[FAILED]" }, line.line);
            all_ok &= line.ok;
        }
    }
    // Ranks sharing a GPU hand buffers between threads at run time: refused, by name.
    let shared = GpuRing::new(Placement::SameGpu { device: 0, world_size: 2 }, Duration::from_secs(60)).expect("ring");
    let err =
        check::check_graphs(&shared, "same-GPU", seed, 1).expect_err("capture on shared-GPU ranks must be refused");
    assert!(format!("{err:#}").contains("NCCL transport"), "unexpected error: {err:#}");
    assert!(all_ok, "some graph replays FAILED (see the lines above)");
}

/// An explicit-sync handle's buffer pool: a freed buffer comes back for the next allocation of
/// its size and of no other; a holding pool reuses nothing until released and kept; a tracked
/// handle has no pool (its buffers' frees wait for other streams, which a pool would skip).
#[test]
fn buffer_pools_reuse_only_what_they_may() {
    if !gpu_or_skip("buffer_pools_reuse_only_what_they_may") {
        return;
    }
    use cp_attention::cuda::GpuDType;
    use cudarc::driver::DevicePtr;
    assert!(CudaAttention::new(0).expect("GPU 0").pool().is_none(), "a tracked handle must not pool");
    let ops = CudaAttention::new_explicit_sync(0).expect("GPU 0");
    let pool = ops.pool().expect("an explicit-sync handle pools").clone();
    let s = ops.stream().clone();
    let addr = |t: &cp_attention::cuda::GpuTensor| t.slice().device_ptr(&s).0;
    let fresh = |elems: usize| {
        let buf = pool.alloc(GpuDType::F32, &[elems]).expect("alloc");
        cp_attention::cuda::GpuTensor::from_buffer_in(buf, Some(&pool), GpuDType::F32, vec![elems]).expect("tensor")
    };
    let first = fresh(1000);
    let a = addr(&first);
    drop(first);
    let again = fresh(1000);
    assert_eq!(addr(&again), a, "a freed buffer of the same size must be reused");
    let other = fresh(999);
    assert_ne!(addr(&other), a, "a buffer of another size must not be handed out");
    pool.hold();
    drop(again);
    let while_held = fresh(1000);
    assert_ne!(addr(&while_held), a, "a holding pool must not reuse what was given back");
    let held = pool.release_held();
    assert_eq!(held.len(), 1, "the buffer given back while holding is held");
    pool.keep(held);
    let kept = fresh(1000);
    assert_eq!(addr(&kept), a, "a kept buffer is reused");
    ops.synchronize().expect("stream");
}

/// A rank whose peer never replays its graph ends with an error within its timeout, and the
/// ring then goes away: no hang, with graphs alive. (With the first failure path — graphs
/// destroyed, then the communicator aborted — this hung on 4 x H100: NCCL's clean-up waits until
/// no graph holds the communicator's transfers. Abort first, then destroy: 2 x H100, session 6,
/// the replay ended after 3.0 s with its 3 s timeout and the ring dropped in 1.0 s.)
#[test]
fn a_peer_that_never_replays_ends_the_replay_with_an_error() {
    if !gpu_or_skip("a_peer_that_never_replays_ends_the_replay_with_an_error") {
        return;
    }
    if device_count() < 2 {
        eprintln!("a_peer_that_never_replays_ends_the_replay_with_an_error: SKIPPED: needs two GPUs");
        return;
    }
    use cp_attention::reference::Heads;
    use std::sync::Arc;
    use std::time::Instant;
    let ring = cp_nccl::GpuRing::new(cp_nccl::Placement::Gpus(vec![0, 1]), Duration::from_secs(3)).expect("ring");
    let (_, plan) = cp_bench::workload::decode_plan(2, 1, 4096, 0).expect("plan");
    let layouts = Arc::new(plan.layouts().clone());
    let heads = Heads { n_heads: 8, n_kv_heads: 2, head_dim: 128 };
    let inputs = cp_bench::workload::draw_all(&ring, &layouts, heads, 5).expect("inputs");
    let index = ring.capture(cp_ring::Algorithm::GatherQ, layouts, inputs).expect("capture");
    let started = Instant::now();
    println!("  replaying on rank 0 only");
    let replayed = ring.run(move |rank| if rank.rank == 0 { rank.replay(index).map(|_| ()) } else { Ok(()) });
    let waited = started.elapsed();
    let err = replayed.expect_err("a replay whose peer never replays must fail");
    println!("  lone replay ended after {waited:.1?}: {err}");
    assert!(waited < Duration::from_secs(30), "the lone replay took {waited:?}");
    let started = Instant::now();
    println!("  dropping the ring");
    drop(ring);
    println!("  dropped in {:.1?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(30), "dropping the ring took {:?}", started.elapsed());
}
