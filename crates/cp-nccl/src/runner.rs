//! A ring of GPU ranks built once and run many times: one thread per rank, each owning its
//! device handle, streams and end of the ring (an NCCL communicator, connected to every peer,
//! or a same-GPU transport).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cp_attention::Partial;
use cp_attention::cuda::{BoundDecode, BufferPool, CudaAttention, DecodeBindings, GpuTensor};
use cp_ring::{Algorithm, Local, PoolError, RankPool, RingError, RingLayouts, RingTransport, run};
use cudarc::driver::CudaEvent;
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};

use crate::error::cuda;
use crate::{
    CudaProbe, GpuRingError, GroupLaunch, NcclSetup, NcclTransport, PeerTransport, PhaseTimes, Result, WaitMode,
};

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

/// A rank's end of the ring: NCCL, or direct device copies within this process.
#[derive(Debug)]
pub enum RankTransport {
    /// One GPU per rank over NCCL.
    Nccl(NcclTransport),
    /// Direct device copies: ranks sharing one GPU, or one GPU each with peer access.
    Peer(PeerTransport),
}

impl RankTransport {
    /// Waits (bounded by the transport's timeout) for every transfer still in flight.
    pub fn drain(&mut self) -> Result<()> {
        match self {
            RankTransport::Nccl(t) => t.drain(),
            RankTransport::Peer(t) => t.drain(),
        }
    }
}

impl RingTransport<GpuTensor> for RankTransport {
    type Error = GpuRingError;

    fn rank(&self) -> usize {
        match self {
            RankTransport::Nccl(t) => t.rank(),
            RankTransport::Peer(t) => t.rank(),
        }
    }

    fn world_size(&self) -> usize {
        match self {
            RankTransport::Nccl(t) => t.world_size(),
            RankTransport::Peer(t) => t.world_size(),
        }
    }

    fn start_shift(&mut self, msg: &[GpuTensor]) -> Result<()> {
        match self {
            RankTransport::Nccl(t) => t.start_shift(msg),
            RankTransport::Peer(t) => t.start_shift(msg),
        }
    }

    fn finish_shift(&mut self) -> Result<Vec<GpuTensor>> {
        match self {
            RankTransport::Nccl(t) => t.finish_shift(),
            RankTransport::Peer(t) => t.finish_shift(),
        }
    }

    fn all_to_all(&mut self, msgs: Vec<Vec<GpuTensor>>) -> Result<Vec<Vec<GpuTensor>>> {
        match self {
            RankTransport::Nccl(t) => t.all_to_all(msgs),
            RankTransport::Peer(t) => t.all_to_all(msgs),
        }
    }

    fn drain(&mut self) -> Result<()> {
        RankTransport::drain(self)
    }
}

/// One rank of a [`GpuRing`], as a job sees it.
#[derive(Debug)]
pub struct GpuRank {
    /// This rank.
    pub rank: usize,
    /// Steps captured as CUDA graphs ([`GpuRank::capture`]), by index. Declared (so dropped)
    /// before the transport: NCCL's clean-up in the last abort of the process (which a
    /// transport's drop may be) waits until no graph holds a transfer of its communicators.
    captured: Vec<CapturedStep>,
    /// Its kernels, on its compute stream.
    pub ops: CudaAttention,
    /// Its end of the ring.
    pub transport: RankTransport,
    /// Timing events of the last probe, recorded again by the next.
    probe_events: Vec<CudaEvent>,
}

/// A ring step captured as one CUDA graph on a rank ([`GpuRank::capture`]): replayed, it runs
/// the whole step — every kernel and every NCCL transfer — with one launch. It reads the inputs
/// it was captured with and writes the output it was captured with, in place: write a new step's
/// inputs into [`CapturedStep::inputs`]' buffers (e.g. with `cp_ring::KvOps::copy_rows`) before
/// a replay, and read [`CapturedStep::output`] after it.
#[derive(Debug)]
pub struct CapturedStep {
    // Dropped first: nothing below may be freed while the graph could still run (a replay is
    // waited for before `replay` returns).
    graph: GraphExec,
    inputs: RankInputs,
    output: Partial<GpuTensor>,
    start: CudaEvent,
    end: CudaEvent,
    /// The graph's own intermediate buffers (held out of the pools while capturing).
    _held: Vec<cudarc::driver::CudaSlice<u8>>,
    /// The uploaded layouts and decode arguments the graph reads.
    _pinned: Vec<cp_attention::cuda::Pinned>,
    /// Rows of every rank's query and key blocks at capture: the shape a rebind must keep.
    shape: (Vec<usize>, Vec<usize>),
    /// Each decode launch with the indices (in `RingLayouts::q` and `::kv`) of the layouts it
    /// was given, or why the graph cannot serve other layouts ([`GpuRank::rebind`]).
    bindings: Bindings,
    /// A rebind failed part-way: some launches read the new layouts, some the old; never
    /// replayed again.
    broken: bool,
}

/// A captured step's decode launches, each with the indices of its query and key layouts in
/// the ring's layouts; or why the step cannot be rebound.
type Bindings = std::result::Result<Vec<BoundSlot>, &'static str>;

/// One decode launch of a captured step: the indices of its query and key layouts in the
/// ring's layouts, and its bound arguments.
type BoundSlot = (usize, usize, Arc<BoundDecode>);

/// Where `bindings`' launches' layouts sit in `layouts` (found by address: the algorithms hand
/// the ops references into the ring's layouts), or why the step cannot be rebound.
fn bind_to_layouts(bindings: Option<DecodeBindings>, layouts: &RingLayouts) -> Bindings {
    let b = bindings.ok_or("no decode launches were recorded")?;
    if let Some(why) = b.unbindable {
        return Err(why);
    }
    let index = |all: &[cp_shard::Layout], addr: usize| all.iter().position(|l| std::ptr::eq(l, addr as *const _));
    b.slots
        .into_iter()
        .map(|slot| {
            let (q, kv) = slot.layout_addrs;
            match (index(&layouts.q, q), index(&layouts.kv, kv)) {
                (Some(qi), Some(ki)) => Ok((qi, ki, slot)),
                _ => Err("a decode launch was given layouts that are not the ring's own (built during the step)"),
            }
        })
        .collect()
}

/// cudarc's graph, which has no `Debug`.
struct GraphExec(cudarc::driver::CudaGraph);

impl std::fmt::Debug for GraphExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CudaGraph")
    }
}

impl CapturedStep {
    /// The buffers the graph reads: this rank's queries, keys and values.
    pub fn inputs(&self) -> &RankInputs {
        &self.inputs
    }

    /// The buffers the graph writes: this rank's merged output and LSE.
    pub fn output(&self) -> &Partial<GpuTensor> {
        &self.output
    }
}

impl GpuRank {
    /// Runs `algorithm` on this rank's `inputs` laid out by `layouts`, timing its phases, and
    /// waits for the result (transfers drained, stream synchronised).
    pub fn run_algorithm(
        &mut self,
        algorithm: Algorithm,
        layouts: &RingLayouts,
        inputs: &RankInputs,
    ) -> Result<RankOutput> {
        let events = std::mem::take(&mut self.probe_events);
        let mut probe = CudaProbe::with_events(self.ops.stream().clone(), events);
        let local = Local { q: &inputs.q, k: &inputs.k, v: &inputs.v };
        let partial = run(algorithm, &self.ops, &mut self.transport, layouts, local, &mut probe);
        // Whatever happened, nothing may stay in flight on a stream this rank reuses.
        let drained = self.transport.drain();
        let partial = partial?;
        drained?;
        self.ops.synchronize()?;
        let times = probe.times();
        self.probe_events = probe.into_events();
        Ok(RankOutput { partial, times })
    }
}

impl GpuRank {
    /// Captures one step of `algorithm` on `inputs` laid out by `layouts` as a CUDA graph, and
    /// returns its index for [`GpuRank::replay`]. Every rank of the ring must capture the same
    /// step together: its NCCL transfers are captured with it, and a replay completes only when
    /// every rank replays its graph.
    ///
    /// The step first runs once uncaptured, so that everything it uploads (layouts, decode
    /// arguments) is on the device and every buffer it allocates is in the buffer pools; the
    /// capture then records launches and transfers only. Needs one GPU per rank over NCCL, or a
    /// ring of one, with explicit-sync handles (the default [`RingOptions`]): peer copies hand
    /// buffers between the rank threads at run time, which a graph cannot replay, and tracked
    /// buffers record events that a graph cannot query.
    pub fn capture(&mut self, algorithm: Algorithm, layouts: &RingLayouts, inputs: &RankInputs) -> Result<usize> {
        let rank = self.rank;
        let refuse = |what: &'static str| GpuRingError::Misuse { rank, op: "GpuRank::capture", what };
        match &self.transport {
            RankTransport::Peer(p) if RingTransport::world_size(p) > 1 => {
                return Err(refuse(
                    "graph capture needs the NCCL transport (peer copies pass buffers between threads)",
                ));
            }
            RankTransport::Nccl(n) if n.wait_mode() != WaitMode::Device => {
                return Err(refuse("graph capture needs transfers waited for on the GPU (WaitMode::Device)"));
            }
            _ => {}
        }
        if self.ops.pool().is_none() {
            return Err(refuse("graph capture needs an explicit-sync handle (RingOptions::event_tracking off)"));
        }
        let pools: Vec<Arc<BufferPool>> = [
            self.ops.pool().cloned(),
            match &self.transport {
                RankTransport::Nccl(n) => n.pool().cloned(),
                RankTransport::Peer(_) => None,
            },
        ]
        .into_iter()
        .flatten()
        .collect();
        // Whatever happens below, the pools stop holding and the handle stops pinning.
        let captured = self.capture_held(algorithm, layouts, inputs, &pools);
        let held: Vec<_> = pools.iter().flat_map(|p| p.release_held()).collect();
        let pinned = self.ops.unpin_uploads();
        let bindings = bind_to_layouts(self.ops.take_decode_bindings(), layouts);
        let (graph, output) = captured?;
        let s = self.ops.stream().clone();
        let event =
            || s.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda(rank, "cuEventCreate"));
        self.captured.push(CapturedStep {
            graph: GraphExec(graph),
            inputs: inputs.clone(),
            output,
            start: event()?,
            end: event()?,
            _held: held,
            _pinned: pinned,
            shape: (layouts.q.iter().map(|l| l.len()).collect(), layouts.kv.iter().map(|l| l.len()).collect()),
            bindings,
            broken: false,
        });
        Ok(self.captured.len() - 1)
    }

    /// The warm-up run and the capture of [`GpuRank::capture`], with `pools` holding what is
    /// given back and uploads pinned (the caller ends both).
    fn capture_held(
        &mut self,
        algorithm: Algorithm,
        layouts: &RingLayouts,
        inputs: &RankInputs,
        pools: &[Arc<BufferPool>],
    ) -> Result<(cudarc::driver::CudaGraph, Partial<GpuTensor>)> {
        let rank = self.rank;
        let local = Local { q: &inputs.q, k: &inputs.k, v: &inputs.v };
        // The uncaptured run, with nothing reused: uploads and connections done, and one pooled
        // buffer per allocation the step makes (the capture must allocate nothing).
        for p in pools {
            p.hold();
        }
        // Pinned from the warm-up on: the caches evict nothing the capture will look up. Decode
        // launches get arguments of their own, recorded, so that the graph can be rebound.
        self.ops.pin_uploads();
        self.ops.record_decode_bindings();
        let warm = run(algorithm, &self.ops, &mut self.transport, layouts, local, &mut ());
        let drained = self.transport.drain();
        drop(warm?);
        drained?;
        self.ops.synchronize()?;
        for p in pools {
            p.keep(p.release_held());
            // Captured, what the step gives back stays with its graph.
            p.hold();
        }

        let s = self.ops.stream().clone();
        self.ops.reuse_decode_bindings();
        if let RankTransport::Nccl(n) = &mut self.transport {
            n.set_capturing(true)?;
        }
        // Relaxed: NCCL may set up resources for graph use on its first capture.
        let begun = s
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(cuda(rank, "cuStreamBeginCapture"));
        let result = begun.and_then(|_| Ok(run(algorithm, &self.ops, &mut self.transport, layouts, local, &mut ())?));
        // The capture ends whatever happened, so the stream is usable again.
        let graph = s.end_capture(CUgraphInstantiate_flags(0)).map_err(cuda(rank, "cuStreamEndCapture"));
        if let RankTransport::Nccl(n) = &mut self.transport {
            n.set_capturing(false)?;
        }
        if result.is_err() {
            // A shift the failed capture started is not left pending for the next step.
            let _ = self.transport.drain();
        }
        let output = result?;
        let graph = graph?.ok_or(GpuRingError::Misuse {
            rank,
            op: "GpuRank::capture",
            what: "the capture recorded no graph",
        })?;
        graph.upload().map_err(cuda(rank, "cuGraphUpload"))?;
        Ok((graph, output))
    }

    /// Points the step captured as `index` at `layouts`, for its next replay: the next token of
    /// a decode batch (the caches grown by a token, the placement moved, positions advanced).
    /// `layouts` must have the captured shape — every rank's query and key blocks of the same
    /// rows (key buffers with room, e.g. cp-model's regions, keep it while sequences grow) —,
    /// every partial attention of the step must have run the decode kernel, and no sequence may
    /// have outgrown the key split fixed at capture (about an eighth more keys per rank than
    /// the longest sequence then); otherwise this is an error and the step must be captured
    /// anew. Writes only the decode arguments that changed (a few elements a token), on this
    /// rank's stream, ordered before the next replay. Every rank rebinds its own step; the
    /// values of the new rows (Q, the new K/V rows) go into the captured inputs as before.
    pub fn rebind(&mut self, index: usize, layouts: &RingLayouts) -> Result<()> {
        let (step, slots) = self.bound_step(index, "GpuRank::rebind")?;
        if step.broken {
            return Err(GpuRingError::Misuse {
                rank: self.rank,
                op: "GpuRank::rebind",
                what: "an earlier rebind of this step failed part-way: capture anew",
            });
        }
        let misuse = |what: &'static str| GpuRingError::Misuse { rank: self.rank, op: "GpuRank::rebind", what };
        let same_shape = layouts.q.iter().map(|l| l.len()).eq(step.shape.0.iter().copied())
            && layouts.kv.iter().map(|l| l.len()).eq(step.shape.1.iter().copied());
        if !same_shape {
            return Err(misuse("the layouts' rows differ from the captured step's (a new shape needs a new capture)"));
        }
        let rebound =
            slots.iter().try_for_each(|(qi, ki, slot)| self.ops.rebind_decode(slot, &layouts.q[*qi], &layouts.kv[*ki]));
        if rebound.is_err() {
            self.captured[index].broken = true;
        }
        Ok(rebound?)
    }

    /// Whether every decode launch of the step captured as `index` reads exactly the arguments
    /// its last rebind computed (downloads them all: for checks, not for a decode loop).
    pub fn bindings_match(&self, index: usize) -> Result<bool> {
        let (_, slots) = self.bound_step(index, "GpuRank::bindings_match")?;
        for (_, _, slot) in slots {
            if !self.ops.bound_decode_matches(slot)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The step captured as `index` and its decode launches, or a misuse error for `op` saying
    /// that there is no such step or why it cannot be rebound.
    fn bound_step(&self, index: usize, op: &'static str) -> Result<(&CapturedStep, &[BoundSlot])> {
        let misuse = |what: &'static str| GpuRingError::Misuse { rank: self.rank, op, what };
        let step = self.captured.get(index).ok_or(misuse("no step was captured under that index"))?;
        let slots = step.bindings.as_ref().map_err(|&why| misuse(why))?;
        Ok((step, slots))
    }

    /// The step captured as `index`.
    pub fn captured(&self, index: usize) -> Option<&CapturedStep> {
        self.captured.get(index)
    }

    /// Drops every captured step (their buffers return to the pools).
    pub fn forget_captured(&mut self) {
        self.captured.clear();
    }

    /// Replays the step captured as `index` and waits for it (at most the transport's timeout;
    /// past it the communicator is aborted and the captured steps are dropped). Returns the
    /// replay's GPU time on this rank, in milliseconds.
    ///
    /// Known gap: that a peer which never replays ends this rank with an error rather than a
    /// hang is not shown yet — the one test of it hung with an earlier order of the failure
    /// path (graphs destroyed, then the abort) and has not run with the current one
    /// (`a_peer_that_never_replays_ends_the_replay_with_an_error`, ignored). Failures outside
    /// graphs are bounded as before (`scripts/nccl_failure.sh`).
    pub fn replay(&mut self, index: usize) -> Result<f64> {
        let rank = self.rank;
        let step = self.captured.get(index).ok_or(GpuRingError::Misuse {
            rank,
            op: "GpuRank::replay",
            what: "no step was captured under that index",
        })?;
        if step.broken {
            return Err(GpuRingError::Misuse {
                rank,
                op: "GpuRank::replay",
                what: "a rebind of this step failed part-way (its launches disagree on the layouts): capture anew",
            });
        }
        let s = self.ops.stream();
        step.start.record(s).map_err(cuda(rank, "cuEventRecord"))?;
        step.graph.0.launch().map_err(cuda(rank, "cuGraphLaunch"))?;
        step.end.record(s).map_err(cuda(rank, "cuEventRecord"))?;
        let waited = match &self.transport {
            RankTransport::Nccl(n) => n.wait_bounded(&step.end, "graph replay"),
            RankTransport::Peer(_) => step.end.synchronize().map_err(cuda(rank, "cuEventSynchronize")),
        };
        if let Err(e) = waited {
            // A peer never replayed (or failed): the abort stops the replay's transfers (its
            // kernels see NCCL's abort flag), then the graphs go. NCCL's final clean-up, which
            // waits until no graph holds the communicator's transfers, runs with the last
            // communicator of the process to go, after these graphs are destroyed.
            if let RankTransport::Nccl(n) = &mut self.transport {
                n.abort();
            }
            self.captured.clear();
            return Err(e);
        }
        Ok(f64::from(step.start.elapsed_ms(&step.end).map_err(cuda(rank, "cuEventElapsedTime"))?))
    }
}

/// Where a ring's ranks run, and how they talk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Rank `r` on GPU `devices[r]`, over NCCL.
    Gpus(Vec<usize>),
    /// Rank `r` on GPU `devices[r]`, direct peer copies (NVLink) within this process.
    Peer(Vec<usize>),
    /// `world_size` ranks sharing GPU `device` (one compute and one copy stream each).
    SameGpu {
        /// The GPU.
        device: usize,
        /// Ranks on it.
        world_size: usize,
    },
}

/// A ring of GPU ranks, built once: each rank a thread owning its device handle, its streams
/// and its end of the ring. Over NCCL every communicator is created together and connected to
/// every peer at construction (NCCL would otherwise connect a pair on its first transfer,
/// inside the first all-to-all), and transfers are waited for on the GPU ([`WaitMode::Device`]).
/// With [`Placement::Peer`] or [`Placement::SameGpu`] the ranks copy directly
/// ([`PeerTransport`]).
#[derive(Debug)]
pub struct GpuRing {
    pool: RankPool<GpuRank>,
    placement: Placement,
}

fn pool_error(e: PoolError<GpuRingError>) -> GpuRingError {
    match e {
        PoolError::Rank { source, .. } => source,
        PoolError::Panicked { rank, message } => GpuRingError::RankPanicked { rank, message },
        PoolError::Unusable { rank, reason } => GpuRingError::RankUnusable { rank, reason },
        PoolError::Empty => {
            GpuRingError::Count { rank: 0, op: "GpuRing::new", what: "ranks (at least)", expected: 1, actual: 0 }
        }
        // `PoolError` is non-exhaustive.
        _ => GpuRingError::RankUnusable { rank: 0, reason: "the rank pool failed" },
    }
}

/// A peer's report that another rank went away (not a root cause).
fn is_echo(e: &GpuRingError) -> bool {
    matches!(e, GpuRingError::Ring(RingError::Transport { .. }) | GpuRingError::Exchange(_))
}

/// How a [`GpuRing`]'s ranks drive their GPUs. The defaults are the fast choices; the other
/// settings exist to measure what they cost (and to rule out an ordering bug).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingOptions {
    /// cudarc's per-buffer event tracking (see `CudaAttention::new`). Off by default where a
    /// rank's buffers stay on its own streams, ordered by the transport (one rank per GPU over
    /// NCCL, or a ring of one): driver calls per launch drop from one per buffer touched to
    /// one. Ranks sharing a GPU or copying between GPUs keep it on whatever this says (their
    /// buffers cross streams the transports do not order).
    pub event_tracking: bool,
    /// How NCCL launches a group.
    pub group_launch: GroupLaunch,
    /// On a ring of 2+ GPUs over NCCL: multiprocessors left to NCCL's transfer kernels. NCCL
    /// is configured for at most this many thread blocks per kernel (`maxCTAs`) and the
    /// persistent prefill kernel leaves as many multiprocessors free
    /// ([`CudaAttention::reserve_sms`]), meant to let a ring step's transfer run beside its
    /// compute. Measured, it does not: on 4 × H100 with 8 the shifts pass-KV waits for grew
    /// from 1.6–1.8 to 3.2–4.3 ms a run (`docs/benchmarks.md`, session 8); on 2 GPUs nothing
    /// is exposed to begin with and it only costs compute. Kept off by default, for measuring
    /// other NCCL versions and settings; within one node the peer transport is what hides the
    /// shifts. `None`: NCCL's own choice and no reservation.
    pub transfer_sms: Option<u32>,
}

impl Default for RingOptions {
    fn default() -> RingOptions {
        RingOptions { event_tracking: false, group_launch: GroupLaunch::Inline, transfer_sms: None }
    }
}

impl GpuRing {
    /// Builds the ring with the default [`RingOptions`]. `timeout` bounds every wait on a peer
    /// (a rank that dies or never answers ends the others with an error within about that
    /// time).
    pub fn new(placement: Placement, timeout: Duration) -> Result<GpuRing> {
        GpuRing::with_options(placement, timeout, RingOptions::default())
    }

    /// [`GpuRing::new`] with `options`.
    pub fn with_options(placement: Placement, timeout: Duration, options: RingOptions) -> Result<GpuRing> {
        let open = move |device: usize| {
            if options.event_tracking { CudaAttention::new(device) } else { CudaAttention::new_explicit_sync(device) }
        };
        let pool = match &placement {
            Placement::Gpus(devices) => {
                let n = devices.len();
                let id = NcclTransport::unique_id()?;
                let devices = devices.clone();
                RankPool::new_filtered(
                    n,
                    move |rank| {
                        let mut ops = open(devices[rank])?;
                        ops.stream().context().bind_to_thread().map_err(cuda(rank, "cuCtxSetCurrent"))?;
                        // A ring of one transfers nothing: nothing to leave room for.
                        let max_ctas = options.transfer_sms.filter(|_| n > 1);
                        if let Some(sms) = max_ctas {
                            ops.reserve_sms(sms as usize)?;
                        }
                        let setup = NcclSetup { launch: options.group_launch, max_ctas };
                        let mut nccl =
                            NcclTransport::init_rank_with(ops.stream().clone(), rank, n, id, timeout, setup)?;
                        nccl.set_wait_mode(WaitMode::Device)?;
                        Ok(GpuRank {
                            rank,
                            ops,
                            transport: RankTransport::Nccl(nccl),
                            probe_events: Vec::new(),
                            captured: Vec::new(),
                        })
                    },
                    is_echo,
                )
            }
            Placement::SameGpu { .. } | Placement::Peer(_) => {
                // Every rank's device and compute stream first (the transports join them),
                // then each rank thread takes its own.
                let ops: Vec<CudaAttention> = match &placement {
                    &Placement::SameGpu { device, world_size } => {
                        // A ring of one has one stream and no transfers.
                        let base = if world_size == 1 { open(device)? } else { CudaAttention::new(device)? };
                        let ctx = base.stream().context().clone();
                        (0..world_size)
                            .map(|r| Ok(base.with_stream(ctx.new_stream().map_err(cuda(r, "cuStreamCreate"))?)))
                            .collect::<Result<_>>()?
                    }
                    Placement::Peer(devices) => {
                        let ops = devices
                            .iter()
                            .map(|&d| CudaAttention::new(d))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                        let contexts: Vec<_> = ops.iter().map(|o| o.stream().context().clone()).collect();
                        crate::enable_peer_access(&contexts)?;
                        ops
                    }
                    Placement::Gpus(_) => unreachable!("handled above"),
                };
                let world_size = ops.len();
                let ends = PeerTransport::ring(ops.iter().map(|o| o.stream().clone()).collect(), timeout)?;
                let parts: Vec<Option<(CudaAttention, PeerTransport)>> = ops.into_iter().zip(ends).map(Some).collect();
                let parts = Arc::new(Mutex::new(parts));
                RankPool::new_filtered(
                    world_size,
                    move |rank| {
                        let part = parts.lock().unwrap_or_else(|p| p.into_inner())[rank].take();
                        let (ops, end) = part.ok_or(GpuRingError::RankUnusable {
                            rank,
                            reason: "its device and transport were already taken",
                        })?;
                        ops.stream().context().bind_to_thread().map_err(cuda(rank, "cuCtxSetCurrent"))?;
                        Ok(GpuRank {
                            rank,
                            ops,
                            transport: RankTransport::Peer(end),
                            probe_events: Vec::new(),
                            captured: Vec::new(),
                        })
                    },
                    is_echo,
                )
            }
        }
        .map_err(pool_error)?;
        Ok(GpuRing { pool, placement })
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.pool.world_size()
    }

    /// Where the ranks run.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Runs `job` on every rank (concurrently, each on its own thread with its device bound)
    /// and returns the results in rank order, or the error that started a failure.
    pub fn run<R, F>(&self, job: F) -> Result<Vec<R>>
    where
        R: Send + 'static,
        F: Fn(&mut GpuRank) -> Result<R> + Send + Sync + 'static,
    {
        PoolError::all_ok(self.pool.run(move |_, rank: &mut GpuRank| job(rank)), is_echo).map_err(pool_error)
    }

    /// Captures one step of `algorithm` as a CUDA graph on every rank ([`GpuRank::capture`]),
    /// rank `r` on `inputs[r]`, and returns its index for [`GpuRank::replay`]. All or nothing:
    /// if any rank fails, every rank forgets the steps it captured (a rank replaying a graph
    /// its peers lack would wait for them in vain).
    pub fn capture(
        &self,
        algorithm: Algorithm,
        layouts: Arc<RingLayouts>,
        inputs: Arc<Vec<RankInputs>>,
    ) -> Result<usize> {
        self.check_per_rank("GpuRing::capture", &layouts, Some(&inputs))?;
        let captured = self.run(move |rank| rank.capture(algorithm, &layouts, &inputs[rank.rank]));
        match captured {
            Ok(indices) if indices.windows(2).all(|w| w[0] == w[1]) => Ok(indices[0]),
            other => {
                let forgot = self.forget_captured();
                other?;
                forgot?;
                Err(GpuRingError::RankUnusable { rank: 0, reason: "ranks captured different numbers of steps" })
            }
        }
    }

    /// Points every rank's step captured as `index` at `layouts` ([`GpuRank::rebind`]): the
    /// next token of a decode batch replays the same graphs. All or nothing: if any rank
    /// cannot rebind (another shape, a step that ran the prefill kernel), every rank forgets
    /// its captured steps — a graph left at the old layouts on one rank would give a wrong
    /// answer — and the error says why; capture anew.
    pub fn rebind(&self, index: usize, layouts: Arc<RingLayouts>) -> Result<()> {
        self.check_per_rank("GpuRing::rebind", &layouts, None)?;
        let rebound = self.run(move |rank| rank.rebind(index, &layouts));
        if let Err(e) = rebound {
            // The rebind's error says why; a failure to forget (a rank gone) would only echo it.
            let _ = self.forget_captured();
            return Err(e);
        }
        Ok(())
    }

    /// Drops every rank's captured steps ([`GpuRank::forget_captured`]).
    pub fn forget_captured(&self) -> Result<()> {
        self.run(|rank| {
            rank.forget_captured();
            Ok(())
        })
        .map(|_| ())
    }

    /// Checks that `layouts` and `inputs` (where given) are for this ring's ranks, one each.
    fn check_per_rank(&self, op: &'static str, layouts: &RingLayouts, inputs: Option<&[RankInputs]>) -> Result<()> {
        let n = self.world_size();
        let counts =
            [("inputs (one per rank)", inputs.map_or(n, <[_]>::len)), ("layouts' ranks", layouts.world_size())];
        for (what, actual) in counts {
            if actual != n {
                return Err(GpuRingError::Count { rank: 0, op, what, expected: n, actual });
            }
        }
        Ok(())
    }

    /// Runs `algorithm` on every rank, rank `r` on `inputs[r]` (tensors on its device).
    pub fn run_algorithm(
        &self,
        algorithm: Algorithm,
        layouts: Arc<RingLayouts>,
        inputs: Arc<Vec<RankInputs>>,
    ) -> Result<Vec<RankOutput>> {
        self.check_per_rank("GpuRing::run_algorithm", &layouts, Some(&inputs))?;
        self.run(move |rank| rank.run_algorithm(algorithm, &layouts, &inputs[rank.rank]))
    }
}
