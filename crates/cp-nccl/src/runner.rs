//! Running a `cp-ring` algorithm on GPU ranks: one thread per rank, each with its own streams.

use std::time::Duration;

use cp_attention::Partial;
use cp_attention::cuda::{CudaAttention, GpuTensor};
use cp_ring::{Algorithm, Local, RingError, RingLayouts, RingTransport, run};

use crate::error::cuda;
use crate::{CudaProbe, GpuRingError, NcclTransport, PhaseTimes, Result, SameGpuTransport};

/// Which transport joins the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// All ranks on the GPU of `ops`, device-to-device copies.
    SameGpu,
    /// NCCL; on one GPU only a world of one rank (NCCL refuses two ranks on one device).
    Nccl,
}

/// A rank's own tensors (see `cp_ring::Local`).
#[derive(Clone, Debug)]
pub struct RankInputs {
    /// Queries `[q_rows, NH, DH]`.
    pub q: GpuTensor,
    /// Keys `[kv_rows, NKV, DH]`.
    pub k: GpuTensor,
    /// Values `[kv_rows, NKV, DH]`.
    pub v: GpuTensor,
}

/// A rank's merged output and the GPU time of its phases.
#[derive(Debug)]
pub struct RankOutput {
    /// Output and LSE of this rank's queries over every key of the ring.
    pub partial: Partial<GpuTensor>,
    /// Phase times measured with CUDA events (`None` if they could not be read).
    pub times: Option<PhaseTimes>,
}

/// Runs `algorithm` on `layouts.world_size()` ranks, each on a fresh compute stream of the
/// GPU of `ops`, over `kind`. Returns each rank's output, or the error that started a failure.
pub fn run_ring(
    ops: &CudaAttention,
    kind: TransportKind,
    algorithm: Algorithm,
    layouts: &RingLayouts,
    inputs: &[RankInputs],
    timeout: Duration,
) -> Result<Vec<RankOutput>> {
    let n = layouts.world_size();
    if inputs.len() != n {
        return Err(GpuRingError::Message {
            rank: 0,
            op: "run_ring",
            reason: format!("{} inputs for {n} ranks", inputs.len()),
        });
    }
    let ctx = ops.stream().context().clone();
    // Inputs were written on `ops`'s stream; make them visible before other streams read.
    ops.synchronize()?;
    let streams = (0..n).map(|r| ctx.new_stream().map_err(cuda(r, "cuStreamCreate"))).collect::<Result<Vec<_>>>()?;
    let transports: Vec<Box<dyn RingTransport<GpuTensor, Error = GpuRingError> + Send>> = match kind {
        TransportKind::SameGpu => SameGpuTransport::ring(streams.clone(), timeout)?
            .into_iter()
            .map(|t| Box::new(t) as Box<dyn RingTransport<GpuTensor, Error = GpuRingError> + Send>)
            .collect(),
        TransportKind::Nccl if n == 1 => {
            return run_ring_per_device(std::slice::from_ref(ops), algorithm, layouts, inputs, timeout);
        }
        TransportKind::Nccl => {
            return Err(GpuRingError::Message {
                rank: 0,
                op: "run_ring",
                reason: format!(
                    "NCCL needs one GPU per rank; {n} ranks on one GPU need the same-GPU transport (or run_ring_per_device)"
                ),
            });
        }
    };
    let results: Vec<Result<RankOutput>> = std::thread::scope(|scope| {
        let handles: Vec<_> = transports
            .into_iter()
            .zip(&streams)
            .zip(inputs)
            .map(|((mut transport, stream), input)| {
                let rank_ops = ops.with_stream(stream.clone());
                scope.spawn(move || -> Result<RankOutput> {
                    ctx_bind(&rank_ops)?;
                    let mut probe = CudaProbe::new(stream.clone());
                    let local = Local { q: &input.q, k: &input.k, v: &input.v };
                    let partial = run(algorithm, &rank_ops, &mut transport, layouts, local, &mut probe)?;
                    rank_ops.synchronize()?;
                    Ok(RankOutput { partial, times: probe.times() })
                })
            })
            .collect();
        join_ranks(handles)
    });
    first_root_cause(results)
}

/// Runs `algorithm` over NCCL with one GPU per rank, driven by this process: a thread per GPU,
/// each owning its communicator. `ops[r]` is rank `r`'s device (`CudaAttention::new(r)`), and
/// `inputs[r]` must live on it. All communicators are created together (NCCL requires every
/// rank to join), then each thread runs its rank.
pub fn run_ring_per_device(
    ops: &[CudaAttention],
    algorithm: Algorithm,
    layouts: &RingLayouts,
    inputs: &[RankInputs],
    timeout: Duration,
) -> Result<Vec<RankOutput>> {
    let n = layouts.world_size();
    if ops.len() != n || inputs.len() != n {
        return Err(GpuRingError::Message {
            rank: 0,
            op: "run_ring_per_device",
            reason: format!("{} devices and {} inputs for {n} ranks", ops.len(), inputs.len()),
        });
    }
    let id = NcclTransport::unique_id()?;
    let results: Vec<Result<RankOutput>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ops
            .iter()
            .zip(inputs)
            .enumerate()
            .map(|(rank, (rank_ops, input))| {
                scope.spawn(move || -> Result<RankOutput> {
                    ctx_bind(rank_ops)?;
                    rank_ops.synchronize()?;
                    let stream = rank_ops.stream().clone();
                    let mut transport = NcclTransport::init_rank(stream.clone(), rank, n, id, timeout)?;
                    let mut probe = CudaProbe::new(stream);
                    let local = Local { q: &input.q, k: &input.k, v: &input.v };
                    let partial = run(algorithm, rank_ops, &mut transport, layouts, local, &mut probe)?;
                    rank_ops.synchronize()?;
                    Ok(RankOutput { partial, times: probe.times() })
                })
            })
            .collect();
        join_ranks(handles)
    });
    first_root_cause(results)
}

/// Joins the rank threads in rank order; a panicking rank becomes [`GpuRingError::RankPanicked`]
/// with its message.
fn join_ranks(handles: Vec<std::thread::ScopedJoinHandle<'_, Result<RankOutput>>>) -> Vec<Result<RankOutput>> {
    handles
        .into_iter()
        .enumerate()
        .map(|(rank, h)| {
            h.join().unwrap_or_else(|p| Err(GpuRingError::RankPanicked { rank, message: cp_ring::panic_message(&*p) }))
        })
        .collect()
}

/// All ranks' outputs, or the error that started the failure (a rank's own failure rather than
/// a peer's report that it went away).
fn first_root_cause(results: Vec<Result<RankOutput>>) -> Result<Vec<RankOutput>> {
    if results.iter().any(|r| r.is_err()) {
        let mut errors: Vec<GpuRingError> = results.into_iter().filter_map(|r| r.err()).collect();
        let echo = |e: &GpuRingError| matches!(e, GpuRingError::Ring(RingError::Transport { .. }));
        let at = errors.iter().position(|e| !echo(e)).unwrap_or(0);
        return Err(errors.swap_remove(at));
    }
    Ok(results.into_iter().filter_map(|r| r.ok()).collect())
}

fn ctx_bind(ops: &CudaAttention) -> Result<()> {
    ops.stream().context().bind_to_thread().map_err(cuda(0, "cuCtxSetCurrent"))
}
