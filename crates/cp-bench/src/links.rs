//! The links between ranks, measured through the ring's own transport: a ring shift's
//! bandwidth and latency, and the all-to-all of given sizes (the anchor pass-Q's all-to-all is
//! compared with). GPU-event times on each rank's compute stream; the slowest rank's median.

use cp_attention::cuda::{GpuDType, GpuTensor};
use cp_nccl::{GpuRank, GpuRing, GpuRingError};
use cp_ring::RingTransport;
use cudarc::driver::sys::CUevent_flags;
use serde::Serialize;

use crate::stats::median;

/// A message of `bytes` bytes (rounded up to an even count) on this rank's device.
fn message(rank: &GpuRank, bytes: usize) -> cp_nccl::Result<GpuTensor> {
    let s = rank.ops.stream();
    let elems = bytes.div_ceil(2).max(1);
    let buf = s.alloc_zeros::<u8>(2 * elems).map_err(|e| GpuRingError::Cuda {
        rank: rank.rank,
        op: "alloc",
        code: format!("{e:?}"),
    })?;
    Ok(GpuTensor::from_buffer(buf, GpuDType::Bf16, vec![elems])?)
}

/// GPU time (ms) of `op` on this rank's compute stream: an event before, one after (the compute
/// stream waits for the transfer), everything in flight drained.
fn timed(rank: &mut GpuRank, op: impl FnOnce(&mut GpuRank) -> cp_nccl::Result<()>) -> cp_nccl::Result<f64> {
    let cuda = |e: cudarc::driver::DriverError| GpuRingError::Cuda { rank: 0, op: "event", code: format!("{e:?}") };
    let s = rank.ops.stream().clone();
    let start = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda)?;
    op(rank)?;
    let end = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda)?;
    rank.transport.drain()?;
    rank.ops.synchronize()?;
    Ok(f64::from(start.elapsed_ms(&end).map_err(cuda)?))
}

/// The slowest rank's median GPU time (ms) of a ring shift of `bytes` bytes (`reps` timed after
/// 3 warm-ups).
pub fn shift_ms(ring: &GpuRing, bytes: usize, reps: usize) -> anyhow::Result<f64> {
    let per_rank = ring.run(move |rank| {
        let msg = message(rank, bytes)?;
        let mut times = Vec::new();
        for i in 0..reps + 3 {
            let m = msg.clone();
            let ms = timed(rank, move |r| {
                r.transport.start_shift(std::slice::from_ref(&m))?;
                r.transport.finish_shift().map(|_| ())
            })?;
            if i >= 3 {
                times.push(ms);
            }
        }
        Ok(median(&times))
    })?;
    Ok(per_rank.into_iter().fold(0.0, f64::max))
}

/// The slowest rank's median GPU time (ms) of an all-to-all sending `bytes_per_peer` bytes to
/// every rank (itself included, as pass-Q's all-to-all does).
pub fn all_to_all_ms(ring: &GpuRing, bytes_per_peer: usize, reps: usize) -> anyhow::Result<f64> {
    let per_rank = ring.run(move |rank| {
        let msg = message(rank, bytes_per_peer)?;
        let n = rank.transport.world_size();
        let mut times = Vec::new();
        for i in 0..reps + 3 {
            let msgs: Vec<Vec<GpuTensor>> = (0..n).map(|_| vec![msg.clone()]).collect();
            let ms = timed(rank, move |r| r.transport.all_to_all(msgs).map(|_| ()))?;
            if i >= 3 {
                times.push(ms);
            }
        }
        Ok(median(&times))
    })?;
    Ok(per_rank.into_iter().fold(0.0, f64::max))
}

/// What the heuristic needs of the link, and the all-to-all anchors.
#[derive(Clone, Debug, Serialize)]
pub struct LinkReport {
    /// Ranks.
    pub world_size: usize,
    /// Bytes a rank sends per second in a ring shift of 256 MiB.
    pub shift_bytes_per_s: f64,
    /// GPU time of a ring shift of 8 KiB, microseconds: the fixed cost of a message.
    pub shift_latency_us: f64,
    /// All-to-all GPU times: (bytes per peer, milliseconds).
    pub all_to_all: Vec<(usize, f64)>,
}

/// Measures the ring's link: a 256 MiB and an 8 KiB shift, and all-to-alls of the given sizes.
pub fn measure(ring: &GpuRing, all_to_all_sizes: &[usize]) -> anyhow::Result<LinkReport> {
    let big = 256usize << 20;
    let shift_bytes_per_s =
        if ring.world_size() > 1 { big as f64 / (shift_ms(ring, big, 5)? / 1e3) } else { f64::INFINITY };
    let shift_latency_us = if ring.world_size() > 1 { shift_ms(ring, 8 << 10, 20)? * 1e3 } else { 0.0 };
    let mut all_to_all = Vec::new();
    for &b in all_to_all_sizes {
        all_to_all.push((b, all_to_all_ms(ring, b, 10)?));
    }
    Ok(LinkReport { world_size: ring.world_size(), shift_bytes_per_s, shift_latency_us, all_to_all })
}
